//! What the sandbox adds to every step: starting and stopping a session, and one `exec` of
//! `/bin/true` in a running session. Prints one JSON object (milliseconds) on stdout.
//!
//! `cargo bench -p kiln-sandbox --bench step_overhead` (needs root). `KILN_BENCH_ITERS`
//! overrides the number of iterations (default 50 sessions, 300 execs).

use std::time::Instant;

use kiln_host::{ExecRequest, Host};
use kiln_sandbox::{RootSpec, Sandbox, SandboxConfig, testroot};

fn stats(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    serde_json::json!({
        "n": ms.len(),
        "median_ms": (at(0.5) * 1000.0).round() / 1000.0,
        "p95_ms": (at(0.95) * 1000.0).round() / 1000.0,
        "min_ms": (ms[0] * 1000.0).round() / 1000.0,
        "max_ms": (ms[ms.len() - 1] * 1000.0).round() / 1000.0,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let scale: usize = std::env::var("KILN_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().expect("tempdir");
    testroot::build(dir.path()).expect("test root");
    let mut config = SandboxConfig::new(RootSpec::Dir(dir.path().into()));
    config.helper = env!("CARGO_BIN_EXE_kiln-sandbox-init").into();

    let mut session_ms = Vec::new();
    for i in 0..(50 * scale + 3) {
        let t = Instant::now();
        let s = Sandbox::start(config.clone()).expect("start");
        s.shutdown().expect("shutdown");
        if i >= 3 {
            session_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }

    let s = Sandbox::start(config.clone()).expect("start");
    let req = ExecRequest { argv: vec!["/bin/true".into()], ..Default::default() };
    let mut exec_ms = Vec::new();
    for i in 0..(300 * scale + 10) {
        let t = Instant::now();
        let out = s.exec(&req).expect("exec");
        assert!(out.status.success());
        if i >= 10 {
            exec_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    s.shutdown().expect("shutdown");

    let report = serde_json::json!({
        "benchmark": "kiln-sandbox step_overhead",
        "session_start_stop": stats(session_ms),
        "exec_true": stats(exec_ms),
    });
    println!("{report}");
}
