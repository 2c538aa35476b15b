//! OpenSCAP: SCAP Security Guide profiles (Debian's `ssg-debian` package) evaluated offline
//! against the image's tree with `oscap-chroot`, and their XCCDF results read into kiln's
//! result model.
//!
//! `oscap-chroot ROOT ...` only sets `OSCAP_PROBE_ROOT` (and `OSCAP_EVALUATION_TARGET`) and
//! runs `oscap`: its probes then prefix paths with ROOT, so an absolute symlink planted in the
//! image (`/etc/ssh/sshd_config -> /root/.ssh/...`) would be followed on the host. kiln
//! therefore runs it in a mount namespace of its own whose root is a fresh tmpfs holding only
//! the host's /usr (read-only, for oscap, its libraries and the content), the image at
//! `/image` (read-only) and an output folder: whatever a link in the image names, it resolves
//! in that skeleton, never in the host's /etc, /root or /home. That needs root, as builds do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use quick_xml::events::Event;
use quick_xml::reader::Reader;

use crate::ComplianceError;
use crate::profile::{References, Severity};
use crate::report::{ProfileInfo, RuleResult, Source, Status};

/// Where Debian's ssg-debian package puts its data streams.
pub const CONTENT_DIR: &str = "/usr/share/xml/scap/ssg/content";
pub const PROFILE_PREFIX: &str = "xccdf_org.ssgproject.content_profile_";
pub const RULE_PREFIX: &str = "xccdf_org.ssgproject.content_rule_";
/// What installs the content and the scanner.
pub const INSTALL: &str = "apt-get install -y ssg-debian openscap-scanner openscap-utils";

/// A SCAP Security Guide profile, resolved against the installed content.
#[derive(Debug, Clone)]
pub struct ScapProfile {
    /// The full XCCDF id (`xccdf_org.ssgproject.content_profile_standard`).
    pub id: String,
    pub title: String,
    /// The content directory it was found in.
    pub content_dir: PathBuf,
    /// Every rule id of the data streams that have the profile (for checking exceptions).
    pub rules: BTreeSet<String>,
}

/// `xccdf_org.ssgproject.content_rule_X` for `X`; full ids are kept.
pub fn full_rule_id(id: &str) -> String {
    if id.starts_with("xccdf_") { id.to_string() } else { format!("{RULE_PREFIX}{id}") }
}

/// The Debian data streams in `dir`: `(major release, path)`, sorted.
pub fn datastreams(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("ssg-debian")?.strip_suffix("-ds.xml")?;
            release.chars().all(|c| c.is_ascii_digit()).then(|| (release.to_string(), e.path()))
        })
        .collect();
    out.sort_by_key(|(r, _)| r.parse::<u32>().unwrap_or(0));
    out
}

/// What a data stream offers.
#[derive(Debug, Clone, Default)]
pub struct DatastreamInfo {
    /// `(id, title)` of each profile.
    pub profiles: Vec<(String, String)>,
    pub rules: BTreeSet<String>,
}

/// Reads the profiles and rule ids of a data stream (a few MB; streamed).
pub fn read_datastream(path: &Path) -> Result<DatastreamInfo, String> {
    let mut reader = Reader::from_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    let mut info = DatastreamInfo::default();
    // The profile whose title is being read.
    let mut in_profile: Option<String> = None;
    let mut in_title = false;
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(|e| format!("{}: not XML: {e}", path.display()))?;
        match ev {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.local_name();
                let id = || {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == b"id")
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                match name.as_ref() {
                    b"Profile" => in_profile = id(),
                    b"Rule" => info.rules.extend(id()),
                    b"title" if in_profile.is_some() => in_title = true,
                    _ => {}
                }
            }
            Event::Text(t) if in_title => {
                if let Some(pid) = in_profile.take() {
                    let title = String::from_utf8_lossy(&t).trim().to_string();
                    info.profiles.push((pid, title));
                }
                in_title = false;
            }
            Event::End(e) if e.local_name().as_ref() == b"Profile" => {
                if let Some(pid) = in_profile.take() {
                    info.profiles.push((pid, String::new()));
                }
                in_title = false;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(info)
}

/// Short profile ids (`standard`, `anssi_np_nt28_average`) of every installed data stream.
pub fn profile_ids(dir: &Path) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for (_, ds) in datastreams(dir) {
        if let Ok(info) = read_datastream(&ds) {
            ids.extend(
                info.profiles.into_iter().map(|(id, _)| id.trim_start_matches(PROFILE_PREFIX).to_string()),
            );
        }
    }
    ids.into_iter().collect()
}

/// `(release, profile id, title)` of every installed profile, for `--list-profiles`.
pub fn list_profiles(dir: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (release, ds) in datastreams(dir) {
        if let Ok(info) = read_datastream(&ds) {
            for (id, title) in info.profiles {
                out.push((release.clone(), id.trim_start_matches(PROFILE_PREFIX).to_string(), title));
            }
        }
    }
    out
}

/// The SSG profile `name` (short or full id), `Ok(None)` when no installed data stream has
/// it; an error when it is plainly an SSG id but the content is not installed.
pub fn resolve(name: &str, dir: &Path) -> Result<Option<ScapProfile>, String> {
    let full =
        if name.starts_with(PROFILE_PREFIX) { name.to_string() } else { format!("{PROFILE_PREFIX}{name}") };
    let streams = datastreams(dir);
    if streams.is_empty() {
        if name.starts_with(PROFILE_PREFIX) {
            return Err(format!(
                "`{name}` is a SCAP Security Guide profile, but no Debian data stream is installed in {}: {INSTALL}",
                dir.display()
            ));
        }
        return Ok(None);
    }
    let mut found: Option<ScapProfile> = None;
    for (_, ds) in streams {
        let info = read_datastream(&ds)?;
        if let Some((_, title)) = info.profiles.iter().find(|(id, _)| *id == full) {
            let p = found.get_or_insert_with(|| ScapProfile {
                id: full.clone(),
                title: title.clone(),
                content_dir: dir.to_path_buf(),
                rules: BTreeSet::new(),
            });
            p.rules.extend(info.rules);
        }
    }
    Ok(found)
}

/// One OpenSCAP evaluation.
#[derive(Debug)]
pub struct ScapRun {
    pub results: Vec<RuleResult>,
    pub info: ProfileInfo,
    pub notes: Vec<String>,
}

/// The data stream for the target's release, from its os-release.
pub fn datastream_for(fs: &kiln_scan::rootfs::RootFs, dir: &Path) -> Result<PathBuf, String> {
    let inv = kiln_scan::Inventory::from_rootfs(fs);
    let os = inv.os.ok_or(
        "the target has no os-release (etc/os-release or usr/lib/os-release), so its release is unknown",
    )?;
    if os.id != "debian" {
        return Err(format!(
            "SCAP Security Guide content is used for Debian only (ssg-debian); the target is `{}`",
            os.id
        ));
    }
    let major = os.version_id.as_deref().and_then(|v| v.split('.').next()).map(str::to_string).ok_or(
        "the target's os-release has no VERSION_ID (testing or unstable), so no SSG release content fits it",
    )?;
    let path = dir.join(format!("ssg-debian{major}-ds.xml"));
    if path.is_file() {
        return Ok(path);
    }
    let have: Vec<String> = datastreams(dir).into_iter().map(|(r, _)| format!("Debian {r}")).collect();
    Err(format!(
        "no SCAP Security Guide content for Debian {major} ({}) in {}: the installed ssg-debian has {}; \
         install a version with it ({INSTALL}) or use kiln's own profiles",
        os.codename.unwrap_or_default(),
        dir.display(),
        if have.is_empty() { "none".into() } else { have.join(", ") }
    ))
}

/// The shell script that runs oscap-chroot in its own mount namespace (see the module docs).
/// Arguments: new root, image root, output folder, data stream, profile id.
const SANDBOX: &str = r#"set -eu
new=$1; image=$2; out=$3; ds=$4; profile=$5
mount -t tmpfs -o mode=0755,nosuid,nodev kiln-oscap "$new"
mkdir -p "$new/usr" "$new/image" "$new/out" "$new/tmp" "$new/etc" "$new/dev"
ro_bind() { mount --bind "$1" "$2"; mount -o remount,bind,ro,nosuid,nodev "$2"; }
ro_bind /usr "$new/usr"
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$new/$d"
  elif [ -d "/$d" ]; then mkdir "$new/$d"; ro_bind "/$d" "$new/$d"; fi
done
if [ -f /etc/ld.so.cache ]; then touch "$new/etc/ld.so.cache"; ro_bind /etc/ld.so.cache "$new/etc/ld.so.cache"; fi
touch "$new/dev/null" "$new/content.xml"
mount --bind /dev/null "$new/dev/null"
ro_bind "$ds" "$new/content.xml"
ro_bind "$image" "$new/image"
mount --bind "$out" "$new/out"
exec chroot "$new" /usr/bin/env -i PATH=/usr/bin:/bin TMPDIR=/tmp \
  oscap-chroot /image xccdf eval --profile "$profile" --results /out/results.xml /content.xml
"#;

/// Runs `profile` against the tree at `root` and reads its results.
pub fn run(
    root: &Path,
    fs: &kiln_scan::rootfs::RootFs,
    profile: &ScapProfile,
) -> Result<ScapRun, ComplianceError> {
    let ds = datastream_for(fs, &profile.content_dir).map_err(ComplianceError::Scap)?;
    if which("oscap-chroot").is_none() {
        return Err(ComplianceError::Scap(format!("oscap-chroot is not installed: {INSTALL}")));
    }
    let work = tempfile::Builder::new()
        .prefix("kiln-oscap-")
        .tempdir()
        .map_err(|e| ComplianceError::Scap(format!("cannot make a temporary folder: {e}")))?;
    let (new_root, out) = (work.path().join("root"), work.path().join("out"));
    for d in [&new_root, &out] {
        std::fs::create_dir(d)
            .map_err(|e| ComplianceError::Scap(format!("cannot create {}: {e}", d.display())))?;
    }
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sh"])
        .arg(&new_root)
        .arg(root)
        .arg(&out)
        .arg(&ds)
        .arg(&profile.id)
        .output()
        .map_err(|e| ComplianceError::Scap(format!("cannot run unshare (util-linux): {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let results = std::fs::read_to_string(out.join("results.xml")).ok();
    let hint = if stderr.contains("Operation not permitted") || stderr.contains("unshare failed") {
        " (OpenSCAP runs in a private mount namespace, which needs root)"
    } else {
        ""
    };
    let what = format!("oscap-chroot {}{hint}", root.display());
    read_run(&what, output.status.code(), results.as_deref(), &stderr, profile, &ds.display().to_string())
}

/// Reads what one oscap evaluation left: its exit code, its results document (if written)
/// and its standard error. `what` names the run in errors, `datastream` in the report.
pub fn read_run(
    what: &str,
    code: Option<i32>,
    results: Option<&str>,
    stderr: &str,
    profile: &ScapProfile,
    datastream: &str,
) -> Result<ScapRun, ComplianceError> {
    // oscap exits 0 when every rule passed, 2 when some failed, 1 on an error.
    let xml = match (code, results) {
        (Some(0 | 2), Some(xml)) => xml,
        _ => {
            let code = code.map(|c| format!("exit status {c}")).unwrap_or_else(|| "killed".into());
            let tail: Vec<&str> = stderr.trim().lines().rev().take(5).collect();
            return Err(ComplianceError::Scap(format!(
                "{what} with profile {} failed ({code}): {}",
                profile.id,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
    };
    let results = parse_results(xml, &profile.id).map_err(ComplianceError::Scap)?;
    let mut notes: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
        .map(|l| format!("OpenSCAP: {}", l.trim_start_matches(['W', 'E', ':', ' '])))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    notes.truncate(20);
    let info = ProfileInfo {
        id: profile.id.clone(),
        title: profile.title.clone(),
        source: Source::Openscap,
        datastream: Some(datastream.to_string()),
        rules: results.len(),
    };
    Ok(ScapRun { results, info, notes })
}

/// What OpenSCAP needs to run inside a booted guest instead of on the tree (the sysctl,
/// dpkg and service probes read the running system there): the host's scanner, the folder
/// of its schemas and stylesheets, and the data stream for the target's release. The caller
/// puts them on a disk the guest mounts (the guest needs no OpenSCAP of its own) and runs
/// [`guest_command`]; its writes go to the instance's throwaway overlay, never the image.
#[derive(Debug, Clone)]
pub struct GuestTools {
    pub oscap: PathBuf,
    /// `/usr/share/openscap` (schemas, xsl, cpe): on the disk at `share/openscap`.
    pub share: PathBuf,
    /// On the disk at [`GUEST_DATASTREAM`].
    pub datastream: PathBuf,
}

/// Where the data stream sits on the guest's tools disk.
pub const GUEST_DATASTREAM: &str = "content/ds.xml";

/// The host's OpenSCAP for a guest whose tree is `fs`.
pub fn guest_tools(
    fs: &kiln_scan::rootfs::RootFs,
    profile: &ScapProfile,
) -> Result<GuestTools, ComplianceError> {
    let datastream = datastream_for(fs, &profile.content_dir).map_err(ComplianceError::Scap)?;
    let oscap =
        which("oscap").ok_or_else(|| ComplianceError::Scap(format!("oscap is not installed: {INSTALL}")))?;
    let share = PathBuf::from("/usr/share/openscap");
    if !share.join("schemas").is_dir() {
        return Err(ComplianceError::Scap(format!(
            "OpenSCAP's schemas are missing from {}: {INSTALL}",
            share.display()
        )));
    }
    Ok(GuestTools { oscap, share, datastream })
}

/// The command that evaluates `profile` in a guest with the tools disk mounted at `mount`,
/// writing the results document to `results` (in the guest). Its exit code and standard error
/// go to [`read_run`] with the results read back.
pub fn guest_command(mount: &str, profile: &ScapProfile, results: &str) -> Vec<String> {
    let script = format!(
        "OSCAP_SCHEMA_PATH=\"$1/share/openscap/schemas\" OSCAP_XSLT_PATH=\"$1/share/openscap/xsl\" \
         OSCAP_CPE_PATH=\"$1/share/openscap/cpe\" exec \"$1/oscap\" xccdf eval --profile \"$2\" \
         --results \"$3\" \"$1/{GUEST_DATASTREAM}\""
    );
    ["/bin/sh", "-c", &script, "sh", mount, &profile.id, results].map(String::from).to_vec()
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// A Rule's description as the benchmark has it.
#[derive(Debug, Default, Clone)]
struct RuleText {
    title: String,
    severity: Option<String>,
    description: String,
    rationale: String,
    references: References,
}

/// Reads an XCCDF 1.2 results document (`oscap xccdf eval --results`) into rule results:
/// pass, fail; notapplicable and notchecked as not applicable; error and unknown as error;
/// notselected rules left out. Titles, severities, rationales, descriptions (as remediation)
/// and CIS and ANSSI references come from the benchmark's Rule elements.
pub fn parse_results(xml: &str, profile: &str) -> Result<Vec<RuleResult>, String> {
    let mut reader = Reader::from_str(xml);
    let mut rules: std::collections::HashMap<String, RuleText> = std::collections::HashMap::new();
    // (rule id, severity attribute, result, messages)
    let mut results: Vec<(String, Option<String>, String, Vec<String>)> = Vec::new();
    let mut rule: Option<(String, RuleText)> = None;
    let mut result: Option<(String, Option<String>, String, Vec<String>)> = None;
    // Which text is being collected, its depth, the reference href, and the text.
    let mut field: Option<(&'static str, usize, String)> = None;
    let mut text = String::new();
    let mut depth = 0usize;
    let attr = |e: &quick_xml::events::BytesStart<'_>, name: &[u8]| {
        e.attributes()
            .flatten()
            .find(|a| a.key.local_name().as_ref() == name)
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
    };
    loop {
        let ev = reader.read_event().map_err(|e| format!("the results are not XML: {e}"))?;
        match ev {
            Event::Start(e) => {
                depth += 1;
                let name = e.local_name();
                match (name.as_ref(), &rule, &result, &field) {
                    (b"Rule", _, _, _) => {
                        let id = attr(&e, b"id").unwrap_or_default();
                        rule = Some((id, RuleText { severity: attr(&e, b"severity"), ..Default::default() }));
                    }
                    (b"rule-result", _, _, _) => {
                        result = Some((
                            attr(&e, b"idref").unwrap_or_default(),
                            attr(&e, b"severity"),
                            String::new(),
                            Vec::new(),
                        ));
                    }
                    (b"title", Some(_), _, None) => field = Some(("title", depth, String::new())),
                    (b"description", Some(_), _, None) => field = Some(("description", depth, String::new())),
                    (b"rationale", Some(_), _, None) => field = Some(("rationale", depth, String::new())),
                    (b"reference", Some(_), _, None) => {
                        field = Some(("reference", depth, attr(&e, b"href").unwrap_or_default()))
                    }
                    (b"result", _, Some(_), None) => field = Some(("result", depth, String::new())),
                    (b"message", _, Some(_), None) => field = Some(("message", depth, String::new())),
                    _ => {}
                }
                if field.as_ref().is_some_and(|(_, d, _)| *d == depth) {
                    text.clear();
                }
            }
            Event::Text(t) if field.is_some() => {
                // quick-xml reports entity references apart, so the text has none left.
                text.push_str(&t.decode().map_err(|e| format!("the results are not UTF-8: {e}"))?);
            }
            Event::GeneralRef(r) if field.is_some() => {
                // Entity references (&lt; and friends) in mixed content.
                let name = r.decode().unwrap_or_default();
                let ch = match name.as_ref() {
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "amp" => Some('&'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    n => n
                        .strip_prefix("#x")
                        .map(|h| u32::from_str_radix(h, 16))
                        .or_else(|| n.strip_prefix('#').map(str::parse::<u32>))
                        .and_then(Result::ok)
                        .and_then(char::from_u32),
                };
                text.extend(ch);
            }
            Event::End(e) => {
                let name = e.local_name();
                if let Some((what, d, href)) = &field
                    && *d == depth
                {
                    let value = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    if let Some((_, r)) = rule.as_mut() {
                        match *what {
                            "title" if r.title.is_empty() => r.title = value.clone(),
                            "description" if r.description.is_empty() => r.description = value.clone(),
                            "rationale" if r.rationale.is_empty() => r.rationale = value.clone(),
                            "reference" => {
                                if href.contains("ssi.gouv.fr") || href.contains("cyber.gouv.fr") {
                                    r.references.anssi.push(value.clone());
                                } else if href.contains("cisecurity.org/benchmark") {
                                    r.references.cis.push(value.clone());
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(res) = result.as_mut() {
                        match *what {
                            "result" => res.2 = value,
                            "message" if !value.is_empty() => res.3.push(value),
                            _ => {}
                        }
                    }
                    field = None;
                }
                match name.as_ref() {
                    b"Rule" => {
                        if let Some((id, r)) = rule.take() {
                            rules.insert(id, r);
                        }
                    }
                    b"rule-result" => results.extend(result.take()),
                    _ => {}
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if results.is_empty() && !xml.contains("TestResult") {
        return Err(
            "the results hold no TestResult: was this written by `oscap xccdf eval --results`?".into()
        );
    }
    let mut out = Vec::new();
    for (id, sev_attr, outcome, messages) in results {
        let status = match outcome.as_str() {
            "pass" | "fixed" => Status::Pass,
            "fail" => Status::Fail,
            "notapplicable" | "notchecked" | "informational" => Status::NotApplicable,
            "notselected" => continue,
            _ => Status::Error,
        };
        let text = rules.get(&id).cloned().unwrap_or_default();
        let severity = match sev_attr.or(text.severity).as_deref() {
            Some("high") => Severity::High,
            Some("medium") => Severity::Medium,
            // SSG's `low`, `unknown` and `info` are all below medium.
            _ => Severity::Low,
        };
        let mut evidence = vec![format!("OpenSCAP result: {outcome}")];
        evidence.extend(messages);
        out.push(RuleResult {
            title: if text.title.is_empty() { id.clone() } else { text.title },
            id,
            severity,
            status,
            evaluated: None,
            evidence,
            rationale: text.rationale,
            remediation: text.description,
            references: text.references,
            justification: None,
            profile: profile.to_string(),
            source: Source::Openscap,
            kind: "xccdf".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/ssg-debian11-standard-results.xml");

    #[test]
    fn results_of_a_real_run_are_read() {
        let rs = parse_results(FIXTURE, "xccdf_org.ssgproject.content_profile_standard").unwrap();
        let get = |short: &str| {
            rs.iter().find(|r| r.id == full_rule_id(short)).unwrap_or_else(|| panic!("{short}"))
        };
        let root = get("sshd_disable_root_login");
        assert_eq!(root.status, Status::Fail);
        assert_eq!(root.title, "Disable SSH Root Login");
        assert_eq!(root.severity, Severity::Medium);
        assert!(root.references.anssi.contains(&"BP28(R19)".to_string()), "{:?}", root.references);
        assert!(root.remediation.contains("PermitRootLogin no"), "{}", root.remediation);
        assert!(!root.rationale.is_empty());
        assert_eq!(root.source, Source::Openscap);
        assert_eq!(get("file_permissions_etc_shadow").status, Status::Pass);
        assert_eq!(get("service_auditd_enabled").status, Status::NotApplicable);
        assert!(!rs.iter().any(|r| r.id.ends_with("prefer_64bit_os")), "notselected rules are left out");
    }

    #[test]
    fn results_that_are_not_results_are_refused() {
        assert!(parse_results("<a>", "p").is_err());
        assert!(parse_results("<Benchmark/>", "p").unwrap_err().contains("no TestResult"));
    }

    #[test]
    fn profile_ids_without_content() {
        let none = Path::new("/nonexistent/ssg");
        assert_eq!(resolve("standard", none).unwrap().map(|p| p.id), None);
        let e = resolve("xccdf_org.ssgproject.content_profile_standard", none).unwrap_err();
        assert!(e.contains("apt-get install -y ssg-debian"), "{e}");
        assert_eq!(
            full_rule_id("sshd_disable_root_login"),
            "xccdf_org.ssgproject.content_rule_sshd_disable_root_login"
        );
    }
}
