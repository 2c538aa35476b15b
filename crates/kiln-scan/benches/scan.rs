//! Benchmark: import of a full-size Debian Security Tracker feed and a 500-package scan.
//!
//! The real feed cannot be downloaded here, so one of realistic size and shape is generated
//! (shared/vuln/README.md's estimate): 5,000 source packages, 35,000 CVEs in ~50,000
//! (package, CVE) pairs with a heavy tail (`linux` ~10,000, `chromium` ~3,000), 3–5 releases
//! each; per release entry ~78% resolved (15% of those `fixed_version "0"`), 21% open, 1%
//! undetermined; urgency about half `not yet assigned`, a fifth `unimportant`, the rest
//! low/medium/high with and without `**`, and some `end-of-life`. Prints one JSON object.
//! Targets: import < 30 s, scan < 1 s, peak memory < 500 MiB.

use std::fmt::Write as _;
use std::time::Instant;

use kiln_scan::{Database, Inventory, ScanOptions, scan};

/// xorshift64*: deterministic, dependency-free; the bench must generate the same feed each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

const SOURCES: usize = 5_000;
const CVES: usize = 35_000;
const PAIRS: usize = 50_000;
const RELEASES: [&str; 5] = ["bullseye", "bookworm", "trixie", "forky", "sid"];

fn source_name(i: usize) -> String {
    match i {
        0 => "linux".into(),
        1 => "chromium".into(),
        _ => format!("src{i:04}"),
    }
}

fn base_version(i: usize) -> String {
    format!("{}.{}.{}-{}", 1 + i % 7, i % 13, i % 5, 1 + i % 4)
}

/// Pairs per source: linux and chromium fixed, the rest Zipf-like (weight 1/rank).
fn pair_counts() -> Vec<usize> {
    let mut counts = vec![0usize; SOURCES];
    counts[0] = 10_000;
    counts[1] = 3_000;
    let rest = PAIRS - counts[0] - counts[1];
    let h: f64 = (2..SOURCES).map(|r| 1.0 / (r as f64)).sum();
    for (r, c) in counts.iter_mut().enumerate().skip(2) {
        *c = ((rest as f64) / h / (r as f64)).round().max(1.0) as usize;
    }
    counts
}

fn generate() -> (String, usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(64 << 20);
    let mut pairs = 0usize;
    out.push('{');
    for (i, &count) in pair_counts().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write!(out, "\"{}\":{{", source_name(i)).unwrap();
        let base = base_version(i);
        for k in 0..count {
            pairs += 1;
            if k > 0 {
                out.push(',');
            }
            let cve = rng.below(CVES as u64);
            write!(
                out,
                "\"CVE-{}-{:05}-{k}\":{{\"description\":\"A flaw was found in component {i} that allows a remote \
                 attacker to cause a denial of service or possibly execute code via crafted input ({cve}).\",\
                 \"scope\":\"remote\",\"releases\":{{",
                2000 + cve % 25,
                cve
            )
            .unwrap();
            let n_rel = 3 + rng.below(3) as usize;
            for (r, rel) in RELEASES.iter().rev().take(n_rel).enumerate() {
                if r > 0 {
                    out.push(',');
                }
                let u = rng.below(1000);
                let urgency = match u {
                    0..=489 => "not yet assigned",
                    490..=689 => "unimportant",
                    690..=759 => "low",
                    760..=819 => "low**",
                    820..=879 => "medium",
                    880..=929 => "medium**",
                    930..=959 => "high",
                    960..=989 => "high**",
                    _ => "end-of-life",
                };
                let s = rng.below(1000);
                if urgency == "end-of-life" || (780..990).contains(&s) {
                    write!(out, "\"{rel}\":{{\"status\":\"open\",\"repositories\":{{\"{rel}\":\"{base}\"}},\"urgency\":\"{urgency}\"}}").unwrap();
                } else if s >= 990 {
                    write!(out, "\"{rel}\":{{\"status\":\"undetermined\",\"urgency\":\"{urgency}\"}}")
                        .unwrap();
                } else {
                    let fixed = if rng.chance(150) {
                        "0".to_string()
                    } else if rng.chance(500) {
                        format!("{base}+deb12u{}", 1 + rng.below(3))
                    } else {
                        base.replace('-', "~") + "-0"
                    };
                    write!(out, "\"{rel}\":{{\"status\":\"resolved\",\"repositories\":{{\"{rel}\":\"{fixed}\"}},\"fixed_version\":\"{fixed}\",\"urgency\":\"{urgency}\"}}").unwrap();
                }
            }
            out.push_str("}}");
        }
        out.push('}');
    }
    out.push('}');
    (out, pairs)
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; with harness = false there is nothing to filter.
    let tmp = tempfile::tempdir().expect("temporary directory");

    let t = Instant::now();
    let (feed, pairs) = generate();
    let feed_path = tmp.path().join("tracker.json");
    std::fs::write(&feed_path, &feed).expect("write feed");
    let feed_bytes = feed.len();
    drop(feed);
    let generate_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut db = Database::new();
    let info = db.load_path(&feed_path).expect("import").clone();
    let import_s = t.elapsed().as_secs_f64();

    // 500 installed packages: the heavy sources plus a spread of others, several binaries per
    // source for some, at the base version (so resolved-with-fix entries match).
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n")
        .unwrap();
    let mut status = String::new();
    for n in 0..500usize {
        let src = if n < 4 { n % 2 } else { (n * 9) % SOURCES };
        let ver = base_version(src);
        writeln!(
            status,
            "Package: bin{n}\nStatus: install ok installed\nArchitecture: amd64\nSource: {} ({ver})\nVersion: {ver}\n",
            source_name(src)
        )
        .unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    let inv = Inventory::from_root(&root).expect("inventory");

    let t = Instant::now();
    let report = scan(&inv, &db, &ScanOptions::default()).expect("scan");
    let scan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let json =
        serde_json::to_vec(&report.findings.iter().map(|f| f.to_image_scan_finding()).collect::<Vec<_>>())
            .unwrap();
    let serialize_s = t.elapsed().as_secs_f64();

    let peak = peak_rss_mib();
    let result = serde_json::json!({
        "benchmark": "kiln-scan tracker import + 500-package scan",
        "feed": {
            "bytes": feed_bytes,
            "sources": SOURCES,
            "cve_ids": CVES,
            "package_cve_pairs": pairs,
            "indexed_release_entries": info.entries,
            "not_affected_entries": info.not_affected,
            "skipped": info.skipped,
        },
        "generate_s": generate_s,
        "import_s": import_s,
        "inventory_packages": inv.packages.len(),
        "scan_s": scan_s,
        "findings": report.findings.len(),
        "findings_json_bytes": json.len(),
        "serialize_s": serialize_s,
        "peak_rss_mib": peak,
        "targets": {"import_s": 30, "scan_s": 1, "peak_rss_mib": 500},
        "met": import_s < 30.0 && scan_s < 1.0 && peak.is_some_and(|p| p < 500.0),
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}
