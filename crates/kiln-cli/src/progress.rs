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
