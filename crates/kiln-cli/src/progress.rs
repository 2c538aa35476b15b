//! Progress lines for the step engine's events: on stderr, one line per finished step, so the
//! output reads the same on a terminal and in a CI log.

use std::io::Write;

use kiln_component::engine::{Event, Observer};

#[derive(Debug, Default)]
pub struct Lines;

impl Observer for Lines {
    fn event(&self, event: &Event<'_>) {
        let mut err = std::io::stderr().lock();
        let _ = match event {
            Event::DocumentStarted { document } => writeln!(err, "==> {document}"),
            Event::PhaseStarted { phase, .. } => writeln!(err, "  -> phase {phase}"),
            Event::StepStarted { step, attempt, .. } if *attempt > 1 => {
                writeln!(err, "     retrying {step} (attempt {attempt})")
            }
            Event::StepStarted { .. } => Ok(()),
            Event::StepFinished { step, status, duration_ms, .. } => {
                writeln!(err, "     {:<8} {step} ({duration_ms} ms)", status.as_str())
            }
            Event::Rebooting { step, .. } => writeln!(err, "     rebooting the target after {step}"),
        };
    }
}

/// Build progress: stage lines on stderr (with a live spinner on a terminal), or JSON events
/// on stdout with `--json`.
#[derive(Debug)]
pub struct BuildLines {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    stage: std::sync::Mutex<String>,
}

impl BuildLines {
    pub fn new(json: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        BuildLines { json, bar, stage: std::sync::Mutex::new(String::new()) }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn emit(&self, value: serde_json::Value) {
        println!("{value}");
    }
}

impl Observer for BuildLines {
    fn event(&self, event: &Event<'_>) {
        let stage = self.stage.lock().map(|s| s.clone()).unwrap_or_default();
        match event {
            Event::StepStarted { step, attempt, .. } => {
                if self.json {
                    self.emit(serde_json::json!({ "event": "stepStarted", "stage": stage, "step": step, "attempt": attempt }));
                } else if let Some(bar) = &self.bar {
                    bar.set_message(format!("{stage}: {step}"));
                }
            }
            Event::StepFinished { step, status, duration_ms, .. } => {
                if self.json {
                    self.emit(serde_json::json!({ "event": "stepFinished", "stage": stage, "step": step, "status": status.as_str(), "durationMs": duration_ms }));
                } else {
                    self.line(format!("     {:<8} {step} ({duration_ms} ms)", status.as_str()));
                }
            }
            _ => {}
        }
    }
}

impl kiln_build::BuildProgress for BuildLines {
    fn build_event(&self, event: &kiln_build::BuildEvent<'_>) {
        use kiln_build::BuildEvent as E;
        if let E::Stage { name } = event
            && let Ok(mut s) = self.stage.lock()
        {
            *s = name.to_string();
        }
        if self.json {
            let v = match event {
                E::Started { arn } => serde_json::json!({ "event": "started", "arn": arn }),
                E::Stage { name } => serde_json::json!({ "event": "stage", "stage": name }),
                E::StageDone { name, millis } => {
                    serde_json::json!({ "event": "stageDone", "stage": name, "millis": millis })
                }
                E::LayerReused { component, key } => {
                    serde_json::json!({ "event": "layerReused", "component": component, "key": key })
                }
                E::Failed { reason } => serde_json::json!({ "event": "failed", "reason": reason }),
                E::Finished { arn, state } => {
                    serde_json::json!({ "event": "finished", "arn": arn, "state": state })
                }
            };
            self.emit(v);
            return;
        }
        match event {
            E::Started { arn } => self.line(format!("==> building {arn}")),
            E::Stage { name } => {
                if let Some(bar) = &self.bar {
                    bar.set_message(name.to_string());
                }
                self.line(format!("  -> {name}"));
            }
            E::StageDone { name, millis } => {
                self.line(format!("     done {name} in {:.1}s", *millis as f64 / 1000.0))
            }
            E::LayerReused { component, key } => {
                self.line(format!("  -> build {component}: cached layer {}", &key[..12.min(key.len())]))
            }
            E::Failed { reason } => self.line(format!("  !! {reason}")),
            E::Finished { .. } => {}
        }
    }
}
