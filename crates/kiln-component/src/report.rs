//! The run report, shaped like AWSTOE's `detailedoutput.json`: per document, phase and step,
//! with status, attempts, times, exit code, outputs and (capped) standard output and error.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Status of a run, document, phase or step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failed,
    /// The step failed and its `onFailure: Ignore` made the failure not count.
    Ignored,
    /// Not run: its `if` condition was false, or an earlier step aborted the phase.
    Skipped,
    /// The run was cancelled while this step, phase, document or run was in progress; what
    /// it did is incomplete. (A kiln addition to AWSTOE's statuses.)
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Ignored => "ignored",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Timestamps are RFC 3339 in UTC, durations in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    #[serde(with = "time::serde::rfc3339")]
    pub start_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end_time: OffsetDateTime,
    pub duration_ms: u64,
}

impl Timing {
    pub fn since(start: OffsetDateTime) -> Self {
        let end = OffsetDateTime::now_utc();
        let duration_ms = u64::try_from((end - start).whole_milliseconds()).unwrap_or(0);
        Timing { start_time: start, end_time: end, duration_ms }
    }
}

/// Captured process output, capped for the report; the full text is in `log_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Captured {
    pub text: String,
    pub truncated: bool,
    /// Size of the full output in bytes.
    pub bytes: u64,
}

impl Captured {
    /// Keep the *end* of the output: when a step fails, its last lines say why.
    pub fn capped(data: &[u8], cap: usize) -> Self {
        let bytes = data.len() as u64;
        if data.len() <= cap {
            return Captured { text: String::from_utf8_lossy(data).into_owned(), truncated: false, bytes };
        }
        let tail = &data[data.len() - cap..];
        Captured { text: String::from_utf8_lossy(tail).into_owned(), truncated: true, bytes }
    }
}

/// One try of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptReport {
    pub attempt: u32,
    pub status: Status,
    #[serde(flatten)]
    pub timing: Timing,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    pub timed_out: bool,
}

/// The loop iteration a step report belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterationInfo {
    pub index: i64,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub name: String,
    pub action: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iteration: Option<IterationInfo>,
    pub on_failure: String,
    pub max_attempts: u32,
    pub attempts: Vec<AttemptReport>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Inputs after rendering expressions.
    pub inputs: serde_json::Value,
    pub outputs: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub stdout: Captured,
    pub stderr: Captured,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    /// Why the step did not run, when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Reboots this step asked for (Reboot action or exit code 194).
    pub reboots: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub name: String,
    pub status: Status,
    #[serde(flatten)]
    pub timing: Timing,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReport {
    pub name: String,
    pub file: String,
    pub status: Status,
    #[serde(flatten)]
    pub timing: Timing,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    pub phases: Vec<PhaseReport>,
}

/// The report of one `kiln component run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub execution_id: String,
    pub status: Status,
    #[serde(flatten)]
    pub timing: Timing,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    pub target: String,
    pub documents: Vec<DocumentReport>,
}

impl RunReport {
    pub fn success(&self) -> bool {
        self.status == Status::Success
    }

    /// A readable console view: one line per step, then the failure, if any.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for doc in &self.documents {
            let _ = writeln!(out, "document {} ({}): {}", doc.name, doc.file, doc.status.as_str());
            for phase in &doc.phases {
                let _ = writeln!(
                    out,
                    "  phase {}: {} in {}",
                    phase.name,
                    phase.status.as_str(),
                    ms(phase.timing.duration_ms)
                );
                for step in &phase.steps {
                    let iteration = step
                        .iteration
                        .as_ref()
                        .map(|i| format!(" [{}={}]", i.index, i.value))
                        .unwrap_or_default();
                    let took = step.timing.as_ref().map(|t| ms(t.duration_ms)).unwrap_or_default();
                    let attempts = if step.attempts.len() > 1 {
                        format!(", {} attempts", step.attempts.len())
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "    {:<8} {}{} ({}) {}{}",
                        step.status.as_str(),
                        step.name,
                        iteration,
                        step.action,
                        took,
                        attempts
                    );
                    if let Some(reason) = &step.skip_reason {
                        let _ = writeln!(out, "             {reason}");
                    }
                    if let Some(msg) = &step.failure_message {
                        let _ = writeln!(out, "             error: {msg}");
                        let tail: Vec<&str> = step.stderr.text.lines().rev().take(5).collect();
                        for line in tail.iter().rev() {
                            let _ = writeln!(out, "             | {line}");
                        }
                    }
                }
            }
        }
        let _ = writeln!(out, "{} in {}", self.status.as_str(), ms(self.timing.duration_ms));
        if let Some(msg) = &self.failure_message {
            let _ = writeln!(out, "failure: {msg}");
        }
        out
    }
}

fn ms(v: u64) -> String {
    if v >= 1000 { format!("{:.1}s", v as f64 / 1000.0) } else { format!("{v}ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capping_keeps_the_tail_and_counts_bytes() {
        let c = Captured::capped(b"0123456789", 4);
        assert_eq!(c.text, "6789");
        assert!(c.truncated);
        assert_eq!(c.bytes, 10);
        let c = Captured::capped(b"abc", 4);
        assert_eq!(c.text, "abc");
        assert!(!c.truncated);
    }
}
