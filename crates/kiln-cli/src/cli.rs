//! Command-line definitions. Each command's `--help` explains what it does; the code that
//! carries a command out lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kiln builds secure, bootable virtual-machine images from declarative recipes, tests them,
/// scans them and keeps them up to date: a self-hosted counterpart of EC2 Image Builder.
///
/// Exit codes: 0 success; 1 the work failed (an invalid document, a failed step); 2 the
/// command line was wrong; 3 kiln itself could not do the work (not root, sandbox failure).
#[derive(Debug, Parser)]
#[command(name = "kiln", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Format of log lines on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Where kiln keeps its state (SQLite catalogue), caches (layers, packages) and image
    /// folders. Default: $XDG_DATA_HOME/kiln, else ~/.local/share/kiln.
    #[arg(long, env = "KILN_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a resource file: parent, components layer by layer (cached),
    /// validate, golden-image cleanup, SBOMs, a vulnerability scan, disk assembly, a boot
    /// test, the catalogue.
    ///
    /// The resource file holds `components`, an `imageRecipe`, an
    /// `infrastructureConfiguration` and a `distributionConfiguration`, with Image Builder's
    /// names (see examples/). The output folder gets the disk in each format, manifest.json,
    /// SHA256SUMS, sbom.cdx.json, sbom.spdx.json, scan.json (the vulnerability scan under the
    /// file's imageScanningConfiguration, against the feeds in KILN_HOME/feeds),
    /// compliance.json and compliance.html (when the file has a `compliance` policy) and
    /// build-log.jsonl. Needs root.
    ///
    /// Ctrl-C (SIGINT) or SIGTERM cancels the build: the running step, bootstrap or test
    /// instance is killed, nothing half-made is cached, the image becomes CANCELLED, and kiln
    /// exits with 130. A second signal exits at once without cleaning up.
    Build(BuildArgs),

    /// Work with AWSTOE-compatible component documents: validate them, run them into a root.
    #[command(subcommand)]
    Component(ComponentCommand),

    /// Catalogued images: list them, show one.
    #[command(subcommand)]
    Image(ImageCommand),

    /// The layer cache.
    #[command(subcommand)]
    Cache(CacheCommand),

    /// Scan an image, disk file or root directory for known vulnerabilities, or rescan the
    /// whole catalogue against the newest feeds.
    ///
    /// The inventory comes from the target's dpkg database and /etc/os-release; it is matched
    /// with exact Debian version semantics against the vulnerability feeds in KILN_HOME/feeds.
    /// `--feed` imports a feed into that store first (atomically: a truncated or wrong-format
    /// feed is rejected and the previously imported data keeps answering); without `--feed` the
    /// stored feeds are used; with it, only the feeds given.
    ///
    /// `--catalogue` rescans every AVAILABLE image from the inventory kept at build time (an
    /// image built before kiln kept inventories has its disk read once; needs root) against
    /// every stored feed, after importing any `--feed`. Each scan is recorded with the
    /// findings that are new since the image's previous scan, and an image with findings that
    /// have a fix available is marked as needing a rebuild (`kiln image show` says why); the
    /// mark is cleared when a rescan finds none.
    ///
    /// Exit codes: 0 the scan ran (and passed `--fail-on`, if given); 1 a finding at or above
    /// the `--fail-on` severity remains (in any image, with --catalogue); 2 the command line was
    /// wrong; 3 the scan could not run (no feeds, a bad feed, an unreadable target or image).
    ///
    /// Examples:
    ///
    ///   kiln scan ./rootfs --feed debian-tracker.json
    ///
    ///   kiln scan my-image/1.0.0 --feed https://security-tracker.debian.org/tracker/data/json
    ///
    ///   kiln scan disk.qcow2 --format sarif --fail-on HIGH --only-fixable
    ///
    ///   kiln scan --catalogue --feed https://security-tracker.debian.org/tracker/data/json --format json
    #[command(verbatim_doc_comment)]
    Scan(ScanArgs),

    /// Evaluate compliance profiles against an image, disk file or root directory.
    ///
    /// kiln's own profiles (cis-level1, cis-level2, anssi-minimal, anssi-intermediary,
    /// anssi-enhanced; `--list-profiles` shows them) are declarative rules checked on the
    /// image's files without running anything in it: file content, permissions and owners,
    /// packages, systemd units, sysctl settings, mount options, the effective sshd
    /// configuration and disabled kernel modules. A profile may also be a profile file (a path),
    /// or a SCAP Security Guide profile (`standard`, `anssi_np_nt28_average`, or its full XCCDF
    /// id), which OpenSCAP evaluates offline on the tree (needs the ssg-debian, openscap-scanner
    /// and openscap-utils packages, content for the target's Debian release, and root). Every
    /// result is pass, fail, notapplicable, error, or exception (accepted with a
    /// justification), with the evidence found. The score is passed / (passed + failed).
    ///
    /// Exit codes: 0 the evaluation ran and passed the gate (--min-score, --fail-on); 1 the gate
    /// failed; 2 the command line was wrong (an unknown profile, an exception without a
    /// justification or for an unknown rule); 3 the evaluation could not run (an unreadable
    /// target, OpenSCAP missing or failing).
    ///
    /// Examples:
    ///   kiln compliance ./rootfs --profile cis-level1
    ///   kiln compliance my-image/1.0.0 --profile anssi-intermediary --profile anssi_np_nt28_average --format html --output report.html
    ///   kiln compliance disk.qcow2 --profile cis-level2 --min-score 90 --fail-on high \
    ///       --exception 'cis-1.1.3.1-var-separate:single-partition appliance'
    ///   kiln compliance --list-profiles
    #[command(verbatim_doc_comment)]
    Compliance(ComplianceArgs),

    /// Boot an image as a test instance and test it from inside.
    ///
    /// The image's disk is booted on a copy-on-write overlay (the image is only read) in QEMU
    /// with UEFI firmware, KVM when it works and TCG otherwise, no network device, and kiln's
    /// guest agent on a virtio-serial port. Readiness comes from systemd
    /// (`systemctl is-system-running --wait`). Built-in tests: boots-to-multi-user,
    /// no-failed-units, sysctl-settings-in-force, firewall-rules-loaded, auditd-running,
    /// survives-reboot, machine-id-unique and ssh-host-keys-unique (the last two boot a second
    /// instance); for a catalogued image, every component's test phase runs in the guest too.
    /// tests.json and junit.xml go into the report folder. Needs root.
    ///
    /// Exit codes: 0 every test passed (or was skipped as not applicable); 1 a test failed;
    /// 2 the command line was wrong; 3 the test could not run.
    ///
    /// Examples:
    ///   kiln test minimal/1.0.0 --report out/tests
    ///   kiln test out/minimal/minimal.qcow2 --keep
    #[command(verbatim_doc_comment)]
    Test(TestArgs),

    /// Boot an image to try it by hand, on a throwaway copy-on-write overlay.
    ///
    /// By default the serial console is attached to this terminal (quit QEMU with Ctrl-A X;
    /// Ctrl-A C opens its monitor) and the overlay is removed afterwards. With --detach the
    /// instance runs in the background, its console in a log file, and kiln prints how to reach
    /// and stop it. --ssh-port gives the guest a user-mode network with 127.0.0.1:PORT
    /// forwarded to its port 22; without it the guest has no network device. --user-data and
    /// --meta-data attach a cloud-init NoCloud seed (a FAT disk labelled CIDATA) for images
    /// with cloud-init. A launch of a catalogued image is recorded as usage of that image.
    ///
    /// Examples:
    ///   kiln launch minimal/1.0.0
    ///   kiln launch minimal/1.0.0 --detach --ssh-port 2222 --user-data user-data.yml
    #[command(verbatim_doc_comment)]
    Launch(LaunchArgs),

    /// kiln's keyring: encryption keys for distribution targets and the signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Lifecycle policies: deprecate, disable and delete images by age or count.
    #[command(subcommand)]
    Lifecycle(LifecycleCommand),

    /// Serve the Image Builder API (restJson1, SigV4) on KILN_HOME's state, with a worker pool
    /// that builds pipeline executions. Prints `listening on http://ADDR` once ready; stops on
    /// SIGTERM or ctrl-c (running builds are asked to stop, and failed if they do not within
    /// 30 seconds). Users and their access keys come from `kiln admin create-user`. Needs
    /// root to build.
    ///
    /// Example: kiln serve --listen 127.0.0.1:8080 --workers 2
    ///          aws imagebuilder list-images --endpoint-url http://127.0.0.1:8080 --region local
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),

    /// Build pipeline executions queued by `kiln serve`, without serving HTTP: more build
    /// capacity on the same state (several workers, on one machine or, with a shared database
    /// and store, several). Each execution is claimed by one worker; a worker that dies loses
    /// its claims when their leases run out, and the executions fail with a reason. Stops on
    /// SIGTERM or ctrl-c like `kiln serve`. Needs root to build.
    ///
    /// Example: kiln serve --listen 127.0.0.1:8080 --workers 0 &
    ///          kiln worker --workers 2
    #[command(verbatim_doc_comment)]
    Worker(WorkerArgs),

    /// Users of the API: access keys and IAM-style policies.
    #[command(subcommand)]
    Admin(AdminCommand),

    /// The API server's audit log: who called what, on which resource, with which result.
    ///
    /// Example: kiln audit --result failure --since 1h
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),

    /// Findings of the API server's threat detection (repeated failures, new source addresses,
    /// unshared or retired image use), most serious first.
    Threats(ThreatsArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// How many pipeline executions build at once in the server (0: none; `kiln worker`
    /// processes build them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub workers: u16,
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Send signed notifications (image state changes, threat findings) to this URL; repeat for
    /// several. Needs a secret: --webhook-secret-file or KILN_WEBHOOK_SECRET.
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// The file holding the webhooks' HMAC secret (trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Do not fire pipelines' schedules (executions start only through the API).
    #[arg(long)]
    pub no_scheduler: bool,
}

/// `kiln worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// How many pipeline executions build at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// How long builds are held and waited for; shared by `kiln serve` and `kiln worker`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Seconds a claimed execution is held without a heartbeat (renewed three times per
    /// lease). When a worker dies, its builds are failed this long after its last heartbeat;
    /// a cancellation reaches a build in another process within a third of it.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_seconds: u64,
    /// Seconds shutdown waits for running builds to stop before failing them.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_grace_seconds: u64,
}

/// `kiln audit`: the API server's audit log.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Calls of this user: an access key id or a principal ARN.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Calls of this operation (GetImage, ...).
    #[arg(long, value_name = "OP")]
    pub operation: Option<String>,
    /// Calls authorised on this resource ARN.
    #[arg(long, value_name = "ARN")]
    pub resource: Option<String>,
    /// `success`, `failure`, or an error code (AccessDeniedException, ...).
    #[arg(long, value_name = "RESULT")]
    pub result: Option<String>,
    /// Calls at or after this time: RFC 3339 (2024-03-31T00:00:00Z) or a duration ago (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many records, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub limit: u32,
    /// Print a JSON list.
    #[arg(long)]
    pub json: bool,
}

/// `kiln threats`: findings of the API server's threat detection.
#[derive(Debug, Args)]
pub struct ThreatsArgs {
    /// Also list archived findings.
    #[arg(long)]
    pub all: bool,
    /// Print a JSON list.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user with an identity policy (an IAM JSON document) and an access key. The
    /// secret access key is printed once and stored encrypted (KILN_HOME/state/api-secrets.key).
    ///
    /// Example: kiln admin create-user ana --policy examples/policies/pipeline-operator.json --json
    #[command(name = "create-user", verbatim_doc_comment)]
    CreateUser {
        name: String,
        /// The policy document (JSON); checked before anything is stored.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The user's account: its resources' ARNs carry it.
        #[arg(long, default_value = kiln_model::LOCAL_ACCOUNT, value_name = "ID")]
        account: String,
        /// Print `{"userName", "userArn", "accountId", "accessKeyId", "secretAccessKey"}`.
        #[arg(long)]
        json: bool,
    },
    /// List users, their accounts, policies and access key ids (never secrets).
    #[command(name = "list-users")]
    ListUsers {
        #[arg(long)]
        json: bool,
    },
    /// Delete a user and its access keys; requests signed with them are refused at once.
    #[command(name = "delete-user")]
    DeleteUser { name: String },
}

#[derive(Debug, Subcommand)]
pub enum LifecycleCommand {
    /// Apply a lifecycle policy file (YAML or JSON, the shape of Image Builder's
    /// CreateLifecyclePolicy): print every change (image, current state, new state, the rule and
    /// why) and make it, or with --dry-run only print it. DELETE removes the image from every
    /// region and its files from the output folder; its record stays (`kiln image list --all`).
    /// Applying the same policy again changes nothing. Exit 1 if a change could not be made.
    ///
    /// Example: kiln lifecycle apply examples/lifecycle/web-retention.yml --dry-run
    Apply {
        file: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the plan (and outcomes) as JSON.
        #[arg(long)]
        json: bool,
        /// Plan as if it were this time (RFC 3339), to see what a policy will do later.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        as_of: Option<time::OffsetDateTime>,
    },
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// A raw or qcow2 disk file, or a catalogued image NAME/VERSION[/BUILD] or its ARN.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Run in the background; the console goes to a log file.
    #[arg(long)]
    pub detach: bool,

    /// Forward 127.0.0.1:PORT to the guest's SSH port (gives it a user-mode network).
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,

    /// cloud-init NoCloud user-data file.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,

    /// cloud-init NoCloud meta-data file (default: a made-up instance id).
    #[arg(long, value_name = "FILE")]
    pub meta_data: Option<PathBuf>,

    /// CPUs (default: the image's infrastructure configuration, else 2).
    #[arg(long)]
    pub cpus: Option<u32>,

    /// Memory in MiB (default: the image's infrastructure configuration, else 1024).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u32>,

    /// The account launching a catalogued image (default: KILN_ACCOUNT, else the image's
    /// owner). Refused unless it owns the image or was given launch permission.
    #[arg(long, env = "KILN_ACCOUNT", value_name = "ID")]
    pub account: Option<String>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// A raw or qcow2 disk file (detected from its content), or a catalogued image
    /// NAME/VERSION[/BUILD] or its ARN.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Where tests.json, junit.xml and console.log go. Default: the image's folder
    /// (test-report/), or DISK.test-report beside a disk file.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,

    /// Leave a failed test instance running and print how to reach it.
    #[arg(long)]
    pub keep: bool,

    /// Boot one instance only (skips machine-id-unique and ssh-host-keys-unique).
    #[arg(long)]
    pub single_instance: bool,

    /// CPUs of the instance (default: the image's infrastructure configuration, else 2).
    #[arg(long)]
    pub cpus: Option<u32>,

    /// Memory of the instance in MiB (default: the image's infrastructure configuration, else 1024).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u32>,

    /// Seconds the instance may take to become ready (default: the image's
    /// testTimeoutSeconds, else 300).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["target", "catalogue"])))]
pub struct ScanArgs {
    /// What to scan: a root directory (an unpacked image), a raw or qcow2 disk file (imported
    /// into a temporary directory; needs root), or a catalogued image NAME/VERSION[/BUILD] or
    /// its ARN (its disk from the output folder). Give TARGET or --catalogue.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,

    /// Rescan every AVAILABLE image in the catalogue instead of one TARGET, record the scans
    /// and set or clear each image's needs-rebuild mark.
    #[arg(long)]
    pub catalogue: bool,

    /// Import a feed into KILN_HOME/feeds before scanning: the Debian Security Tracker JSON, an
    /// OSV JSON record, a directory or zip of OSV records, or an http(s) URL of one (fetched
    /// with If-None-Match/If-Modified-Since). The format is detected from the content. Repeat
    /// for several. A TARGET is then scanned with only the feeds given; without --feed, and
    /// always with --catalogue, every feed in the store answers.
    #[arg(long = "feed", value_name = "PATH|URL")]
    pub feeds: Vec<String>,

    /// Output: `table` (readable), `json` (one object: target, inventory, feeds, findings in
    /// Image Builder's ImageScanFinding shape, summary; with --catalogue: `images` and
    /// `feeds`) or `sarif` (SARIF 2.1.0; one TARGET only).
    #[arg(long, value_enum, default_value_t = ScanFormat::Table)]
    pub format: ScanFormat,

    /// Exit 1 when a finding at or above this severity remains (after --only-fixable and
    /// --ignore): UNTRIAGED, INFORMATIONAL, LOW, MEDIUM, HIGH or CRITICAL.
    #[arg(long, value_name = "SEVERITY")]
    pub fail_on: Option<String>,

    /// Report only findings that have a fixed version available.
    #[arg(long)]
    pub only_fixable: bool,

    /// Ignore a vulnerability: ID:REASON or ID:REASON:YYYY-MM-DD (in force until that date,
    /// inclusive). ID may be PACKAGE/ID to ignore it for one binary package only. Repeatable.
    /// With --catalogue, each image's recipe's ignore rules apply as well.
    #[arg(long = "ignore", value_name = "ID:REASON[:DATE]")]
    pub ignore: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScanFormat {
    Table,
    Json,
    Sarif,
}

#[derive(Debug, Args)]
pub struct ComplianceArgs {
    /// What to evaluate: a root directory (an unpacked image), a raw or qcow2 disk file
    /// (imported into a temporary directory; needs root), or a catalogued image
    /// NAME/VERSION[/BUILD] or its ARN.
    #[arg(value_name = "TARGET", required_unless_present = "list_profiles")]
    pub target: Option<String>,

    /// A profile to evaluate: one of kiln's, a profile file (a path), or a SCAP Security Guide
    /// profile id. Repeat for several; rules in more than one are reported once.
    #[arg(long = "profile", value_name = "NAME", required_unless_present = "list_profiles")]
    pub profiles: Vec<String>,

    /// Accept a rule's result: RULE:JUSTIFICATION. The rule is reported as `exception` with the
    /// justification and what it found, and does not count against the score or the gate.
    #[arg(long = "exception", value_name = "RULE:JUSTIFICATION")]
    pub exceptions: Vec<String>,

    /// Output: `table` (readable), `json` (the report: target, profiles, score, counts, the
    /// gate, every rule with its evidence, rationale, remediation and references) or `html` (a
    /// self-contained page).
    #[arg(long, value_enum, default_value_t = ComplianceFormat::Table)]
    pub format: ComplianceFormat,

    /// Write the report to FILE instead of standard output (a summary line is printed).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Exit 1 when the score (percent) is below N.
    #[arg(long, value_name = "N")]
    pub min_score: Option<f64>,

    /// Exit 1 when a rule of this severity or above failed or could not be evaluated: low,
    /// medium, high or critical.
    #[arg(long, value_name = "SEVERITY")]
    pub fail_on: Option<String>,

    /// Run SCAP Security Guide profiles with OpenSCAP inside a booted test instance of the
    /// image (its copy-on-write overlay; the image is not changed) instead of on its files: the
    /// probes for sysctl values in force, installed packages and services need a running
    /// system. TARGET must be a disk file or a catalogued image. kiln's own profiles still
    /// read the files.
    #[arg(long)]
    pub in_guest: bool,

    /// List kiln's profiles and the installed SCAP Security Guide profiles, and exit.
    #[arg(long, conflicts_with_all = ["target", "profiles"])]
    pub list_profiles: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComplianceFormat {
    Table,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The resource file (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,

    /// The output folder (default: KILN_HOME/images/NAME/VERSION/BUILD).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Rebuild every layer instead of reusing cached ones.
    #[arg(long)]
    pub no_cache: bool,

    /// Skip the test stage (booting the image in QEMU).
    #[arg(long)]
    pub no_test: bool,

    /// When a step fails: `abort` (default) removes the failed layer, `keep` keeps it for
    /// inspection, `shell` keeps it and opens a shell in the sandbox over it. With `keep` or
    /// `shell`, a failed test stage also leaves its test instance running (kiln says how to
    /// reach and stop it).
    #[arg(long, value_enum, default_value_t = OnErrorArg::Abort)]
    pub on_error: OnErrorArg,

    /// Print JSON events on stdout (one per line) and the outcome as the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnErrorArg {
    Abort,
    Keep,
    Shell,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List catalogued image build versions.
    List {
        /// Only images with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only images with this tag: KEY=VALUE, or KEY for any value. Repeat: all must match.
        #[arg(long = "tag", value_name = "KEY[=VALUE]", value_parser = parse_tag_filter)]
        tags: Vec<(String, Option<String>)>,
        /// Also list DELETED images (the records lifecycle policies and deletions leave).
        #[arg(long)]
        all: bool,
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// Add or change tags of an image.
    Tag {
        image: String,
        /// KEY=VALUE; repeat for several.
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = parse_param)]
        tags: Vec<(String, String)>,
    },
    /// Remove tags from an image (keys it does not have are ignored).
    Untag {
        image: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Give accounts launch permission on an image: they may then `kiln launch` and `kiln image
    /// pull` it. Only the owner may share (KILN_ACCOUNT, when set, must be the owner).
    #[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["accounts", "all"])))]
    Share {
        image: String,
        /// A 12-digit account id; repeat for several.
        #[arg(long = "account", value_name = "ID")]
        accounts: Vec<String>,
        /// Every account (the image becomes public).
        #[arg(long)]
        all: bool,
    },
    /// Withdraw launch permission given with `share`.
    #[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["accounts", "all"])))]
    Unshare {
        image: String,
        /// A 12-digit account id; repeat for several.
        #[arg(long = "account", value_name = "ID")]
        accounts: Vec<String>,
        /// The public permission (accounts named with `share` keep theirs).
        #[arg(long)]
        all: bool,
    },
    /// Launches per image and account: how many and the last one. Every image without IMAGE.
    Usage {
        image: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one image: NAME/VERSION[/BUILD] (latest build when omitted) or its ARN.
    Show {
        image: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy an image to the regions of its distribution configuration that name a store
    /// (`storeUrl`), completing a distribution that failed: chunks already there are not
    /// uploaded again. Exit 1 if a region still fails.
    Distribute {
        image: String,
        /// Also regions where the image is already complete.
        #[arg(long)]
        again: bool,
    },
    /// Check an image in its regions: the release's ed25519 signature (by this kiln's key) and
    /// the digest of every chunk, artifact, index and manifest. Exit 1 on anything altered or
    /// missing, naming it.
    Verify {
        image: String,
        /// One region (default: every region with a store).
        #[arg(long)]
        region: Option<String>,
    },
    /// Download an image from a region into DIR, checking everything `verify` checks; files
    /// appear only once complete and checked.
    ///
    /// Refused for a DISABLED image and for an account that is neither the owner nor given
    /// launch permission; a DEPRECATED image is pulled with a warning.
    Pull {
        image: String,
        #[arg(long)]
        region: String,
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// The account pulling (default: KILN_ACCOUNT, else the image's owner).
        #[arg(long, env = "KILN_ACCOUNT", value_name = "ID")]
        account: Option<String>,
    },
    /// Print a build's log (its `build-log.jsonl`): stages, steps, tests, the outcome.
    Logs {
        image: String,
        /// Keep printing new lines until the build finishes.
        #[arg(long, short)]
        follow: bool,
        /// Print the JSON lines as they are.
        #[arg(long)]
        json: bool,
    },
}

/// kiln's keyring (KILN_HOME/keys): key-encryption keys named by distribution targets'
/// `kmsKeyId`, and the manifest signing key.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key (version 1).
    Create { name: String },
    /// Add a new version of a key: new data keys are wrapped with it; data wrapped with older
    /// versions stays readable.
    Rotate { name: String },
    /// List keys and their versions, and the signing key's public half.
    List,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Free space: remove cached layers. By default keeps the layers of AVAILABLE images.
    Prune {
        /// Remove every layer, including those of AVAILABLE images.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ComponentCommand {
    /// Check component documents and print every problem as FILE:LINE:COLUMN: message.
    ///
    /// Exits 0 only if every document is valid.
    Validate(ValidateArgs),

    /// Run component documents against a root file system, as if it were the running system.
    ///
    /// Each step runs in fresh mount, PID, UTS, IPC and network namespaces, pivoted into
    /// ROOT, with a minimal /dev, a fresh /proc, a read-only /sys, a private /tmp, no network
    /// unless `--network host`, and the capabilities a build never needs dropped. File actions
    /// never follow a symlink out of ROOT. Needs root.
    Run(RunArgs),

    /// List the components shipped with kiln, or print one's document.
    ///
    /// Built-in components are named `kiln-...` (a prefix resource files may not use) and
    /// registered in the catalogue by every build, so a recipe names them like any catalogued
    /// component: `componentArn: kiln-hardening-cis/1.x.x`. The list shows each one's version,
    /// description and parameters with their defaults; `kiln component builtin NAME > FILE`
    /// gives a document to read or to run with `kiln component run`.
    Builtin(BuiltinArgs),
}

#[derive(Debug, Args)]
pub struct BuiltinArgs {
    /// Print this component's document instead of the list.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,

    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Component documents (YAML).
    #[arg(required = true, value_name = "DOC")]
    pub documents: Vec<PathBuf>,

    /// Print the diagnostics as a JSON list instead of text lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Component documents (YAML), run in the order given.
    #[arg(required = true, value_name = "DOC")]
    pub documents: Vec<PathBuf>,

    /// The root file system the documents act on (an unpacked image tree).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Phases to run, comma-separated, in document order.
    #[arg(long, value_delimiter = ',', default_value = "build,validate")]
    pub phases: Vec<String>,

    /// A document parameter, NAME=VALUE; repeat for several.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,

    /// Write the JSON run report to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Where each step's full output is written (default: a `logs` folder beside the
    /// report, or none without --report).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Network for the steps: `none` (default) or `host` (the host's network namespace).
    #[arg(long, value_enum, default_value_t = NetworkArg::None)]
    pub network: NetworkArg,

    /// Working directory inside the root that relative paths resolve against.
    #[arg(long, default_value = "/")]
    pub working_dir: String,

    /// Print the JSON report on stdout instead of the readable view.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    None,
    Host,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

fn parse_tag_filter(s: &str) -> Result<(String, Option<String>), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), Some(value.to_string()))),
        None if !s.is_empty() => Ok((s.to_string(), None)),
        _ => Err(format!("`{s}` is not KEY or KEY=VALUE")),
    }
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2025-01-31T00:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn params_need_a_name() {
        assert_eq!(parse_param("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_param("=x").is_err());
        assert!(parse_param("novalue").is_err());
    }
}
