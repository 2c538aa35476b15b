//! Test results: JSON (kiln's shape) and JUnit XML (for CI systems).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestStatus {
    Passed,
    Failed,
    /// Not applicable to this image (no sshd, no firewall), or not run because an earlier
    /// test left no instance to run it on; the reason says which.
    Skipped,
}

/// One named test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestCase {
    pub name: String,
    pub status: TestStatus,
    pub duration_ms: u64,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the test saw (command output, console lines).
    #[serde(default)]
    pub output: String,
}

impl TestCase {
    pub fn passed(name: &str, took: Duration, output: String) -> TestCase {
        TestCase {
            name: name.into(),
            status: TestStatus::Passed,
            duration_ms: ms(took),
            reason: None,
            output,
        }
    }

    pub fn failed(name: &str, took: Duration, reason: impl Into<String>, output: String) -> TestCase {
        TestCase {
            name: name.into(),
            status: TestStatus::Failed,
            duration_ms: ms(took),
            reason: Some(reason.into()),
            output,
        }
    }

    pub fn skipped(name: &str, reason: impl Into<String>) -> TestCase {
        TestCase {
            name: name.into(),
            status: TestStatus::Skipped,
            duration_ms: 0,
            reason: Some(reason.into()),
            output: String::new(),
        }
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The results of testing one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// The image (ARN, or the disk file's path).
    pub target: String,
    /// `kvm` or `tcg`, as detected at run time.
    pub accelerator: String,
    /// QEMU start to the agent's first answer.
    pub agent_ready_ms: Option<u64>,
    /// QEMU start to the end of systemd's start-up.
    pub system_ready_ms: Option<u64>,
    /// The whole test stage.
    pub total_ms: u64,
    pub tests: Vec<TestCase>,
}

impl TestReport {
    /// Whether every test passed or was skipped.
    pub fn passed(&self) -> bool {
        self.tests.iter().all(|t| t.status != TestStatus::Failed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &TestCase> {
        self.tests.iter().filter(|t| t.status == TestStatus::Failed)
    }

    /// One line naming the failed tests and why, for an image's FAILED reason.
    pub fn failure_summary(&self) -> Option<String> {
        let parts: Vec<String> = self
            .failures()
            .map(|t| format!("{}: {}", t.name, t.reason.as_deref().unwrap_or("failed")))
            .collect();
        (!parts.is_empty()).then(|| format!("test failed: {}", parts.join("; ")))
    }

    /// JUnit XML: one test suite named after the target, one test case per test.
    pub fn to_junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase as JCase, TestCaseStatus, TestSuite};
        let mut report = Report::new("kiln test");
        let mut suite = TestSuite::new(self.target.as_str());
        for t in &self.tests {
            let status = match t.status {
                TestStatus::Passed => TestCaseStatus::success(),
                TestStatus::Failed => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    if let Some(r) = &t.reason {
                        s.set_message(r.as_str());
                    }
                    s
                }
                TestStatus::Skipped => {
                    let mut s = TestCaseStatus::skipped();
                    if let Some(r) = &t.reason {
                        s.set_message(r.as_str());
                    }
                    s
                }
            };
            let mut case = JCase::new(t.name.as_str(), status);
            case.set_classname("kiln");
            case.set_time(Duration::from_millis(t.duration_ms));
            if !t.output.is_empty() {
                case.set_system_out(t.output.as_str());
            }
            suite.add_test_case(case);
        }
        suite.set_time(Duration::from_millis(self.total_ms));
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }

    /// Writes `tests.json` and `junit.xml` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir)?;
        let json = dir.join("tests.json");
        fs::write(&json, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        let junit = dir.join("junit.xml");
        fs::write(&junit, self.to_junit())?;
        Ok((json, junit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> TestReport {
        TestReport {
            target: "arn:aws:imagebuilder:local:000000000000:image/x/1.0.0/1".into(),
            accelerator: "tcg".into(),
            agent_ready_ms: Some(20_000),
            system_ready_ms: Some(25_000),
            total_ms: 60_000,
            tests: vec![
                TestCase::passed("boots-to-multi-user", Duration::from_secs(25), "running".into()),
                TestCase::failed(
                    "no-failed-units",
                    Duration::from_millis(80),
                    "1 failed unit: broken.service",
                    "x < & y".into(),
                ),
                TestCase::skipped("ssh-host-keys-unique", "openssh-server is not installed"),
            ],
        }
    }

    #[test]
    fn summary_names_the_failed_test() {
        let r = report();
        assert!(!r.passed());
        assert_eq!(
            r.failure_summary().unwrap(),
            "test failed: no-failed-units: 1 failed unit: broken.service"
        );
    }

    #[test]
    fn junit_has_one_case_per_test_with_failures_and_skips() {
        let xml = report().to_junit();
        assert!(xml.contains("tests=\"3\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("<skipped message=\"openssh-server is not installed\""), "{xml}");
        assert!(xml.contains("name=\"no-failed-units\""));
        assert!(xml.contains("x &lt; &amp; y"), "output is escaped: {xml}");
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let back: TestReport = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.tests, r.tests);
    }
}
