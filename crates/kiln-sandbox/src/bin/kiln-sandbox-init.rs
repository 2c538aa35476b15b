//! The sandbox helper on its own: what `kiln_sandbox::SandboxConfig::helper` points at when the
//! running executable cannot serve (this crate's tests and benchmarks). `kiln` itself calls the
//! same function first thing in its `main`.

fn main() {
    kiln_sandbox::init_main_if_requested();
    eprintln!(
        "kiln-sandbox-init is started by kiln_sandbox::Sandbox::start as `{} <fd>`, not by hand",
        kiln_sandbox::INIT_ARG
    );
    std::process::exit(2);
}
