//! The heavy test: a real Debian bookworm tree (bootstrapped once and cached), assembled into
//! a qcow2 disk and booted under OVMF from the disk alone (no -kernel), KVM if it works else
//! TCG, with no network, until `login:` shows on the serial console.

mod common;

use std::time::{Duration, Instant};

use kiln_image::qemu::{Vm, VmConfig, find_firmware};
use kiln_image::{AssembleOptions, DiskLayout, OutputFormat, SizeSpec, assemble};

#[test]
fn bookworm_disk_boots_to_a_login_prompt() {
    assert!(
        common::have("qemu-system-x86_64"),
        "qemu-system-x86_64 is not installed (qemu-system-x86): run scripts/install-deps.sh"
    );
    let firmware = find_firmware().expect("OVMF firmware (package ovmf): run scripts/install-deps.sh");
    let tree = common::bookworm_tree();
    let out = tempfile::tempdir().unwrap();
    let layout =
        DiskLayout::default().with_partition("/var/log", SizeSpec::Auto, &["nodev", "nosuid", "noexec"]);
    let mut opts = AssembleOptions::new(out.path());
    opts.formats = vec![OutputFormat::Qcow2 { compressed: false }];
    opts.source_date_epoch = Some(1_700_000_000);
    let start = Instant::now();
    let disk = assemble(&tree, &layout, &opts).unwrap();
    let assembly = start.elapsed();
    assert_eq!(disk.boot.boot_loader, kiln_image::BootLoaderOrigin::Image);
    let qcow2 = disk.artifact(OutputFormat::Qcow2 { compressed: false }).unwrap();

    let cfg = VmConfig::new(&qcow2.path, "qcow2", firmware, out.path().join("vm"));
    let mut vm = Vm::spawn(&cfg).unwrap();
    let booted = vm.wait_for("login:", Duration::from_secs(150)).unwrap();
    let console = vm.serial_output();
    vm.kill();
    for line in
        console.lines().filter(|l| l.contains("FAILED") || l.contains("Mounted") || l.contains("emergency"))
    {
        eprintln!("console: {line}");
    }
    // The separate /var/log and the ESP were mounted from fstab, and nothing failed.
    assert!(console.contains("Mounted") && console.contains("/var/log"), "no /var/log mount on the console");
    assert!(!console.contains("emergency mode"), "booted into emergency mode");
    eprintln!(
        "assembly {:.1} s ({:?}), boot to login {:.1} s under {}, disk {} MiB, qcow2 {} MiB",
        assembly.as_secs_f64(),
        disk.timings,
        booted.as_secs_f64(),
        vm.accel(),
        disk.disk_size >> 20,
        qcow2.size >> 20
    );
}
