//! Tests of the action modules against a test-double [`Host`] that maps target paths onto a
//! temporary directory.
//!
//! The double is for tests only: it maps absolute target paths under its root (refusing `..`),
//! resolves symlinks inside the root, and runs processes with the *real* bash of this machine,
//! with the working directory mapped, `ROOT` set to the root, the root's `/usr/bin` and `/bin`
//! first on `PATH`, and every argument that names an existing path inside the root mapped onto
//! it. Scripts under test therefore use relative paths or `$ROOT`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_component::actions::{
    self, ActionContext, ActionFailure, ActionOutcome, DocumentRunner, RebootRequest,
};
use kiln_component::diag::Diagnostic;
use kiln_component::node::{Node, NodeKind, ScalarStyle, Span};
use kiln_host::{
    DirEntry, ExecOutput, ExecRequest, ExitStatus, FileKind, Host, HostError, HostErrorKind, HostResult,
    Metadata, WriteMode,
};

// =============================================================================================
// The test host
// =============================================================================================

struct TestHost {
    root: PathBuf,
    network: bool,
    reboots: AtomicUsize,
    execs: Mutex<Vec<ExecRequest>>,
}

fn io_err(e: std::io::Error, what: &str) -> HostError {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::NotFound => HostErrorKind::NotFound,
        K::AlreadyExists => HostErrorKind::AlreadyExists,
        K::PermissionDenied => HostErrorKind::PermissionDenied,
        K::DirectoryNotEmpty => HostErrorKind::DirectoryNotEmpty,
        K::NotADirectory => HostErrorKind::NotADirectory,
        K::IsADirectory => HostErrorKind::IsADirectory,
        _ => HostErrorKind::Other,
    };
    HostError::new(kind, format!("{what}: {e}"))
}

impl TestHost {
    fn new(dir: &Path) -> TestHost {
        TestHost {
            root: dir.to_path_buf(),
            network: true,
            reboots: AtomicUsize::new(0),
            execs: Mutex::new(Vec::new()),
        }
    }

    /// The real path of a target path, following symlinks inside the root except (when
    /// `follow_last` is false) the last component.
    fn real(&self, p: &str, follow_last: bool) -> HostResult<PathBuf> {
        if !p.starts_with('/') {
            return Err(HostError::new(HostErrorKind::InvalidPath, format!("{p}: not absolute")));
        }
        let mut todo: Vec<String> = p.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect();
        todo.reverse();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    return Err(HostError::new(HostErrorKind::InvalidPath, format!("{p}: `..` is refused")));
                }
                _ => {}
            }
            let mut candidate = self.root.clone();
            candidate.extend(&cur);
            candidate.push(&c);
            let is_last = todo.is_empty();
            let link =
                std::fs::symlink_metadata(&candidate).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            if link && (follow_last || !is_last) {
                hops += 1;
                if hops > 40 {
                    return Err(HostError::new(HostErrorKind::Other, format!("{p}: too many links")));
                }
                let target = std::fs::read_link(&candidate).map_err(|e| io_err(e, p))?;
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    cur.clear();
                }
                let mut parts: Vec<String> = Vec::new();
                for comp in Path::new(&t).components() {
                    match comp {
                        Component::Normal(s) => parts.push(s.to_string_lossy().to_string()),
                        Component::ParentDir => {
                            if !parts.is_empty() {
                                parts.pop();
                            } else {
                                cur.pop();
                            }
                        }
                        _ => {}
                    }
                }
                for part in parts.into_iter().rev() {
                    todo.push(part);
                }
                continue;
            }
            cur.push(c);
        }
        let mut out = self.root.clone();
        out.extend(&cur);
        Ok(out)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.real(p, false).expect("valid path")
    }

    fn write(&self, p: &str, data: &[u8]) {
        let real = self.path(p);
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(real, data).unwrap();
    }

    fn read(&self, p: &str) -> Vec<u8> {
        std::fs::read(self.real(p, true).unwrap()).unwrap()
    }

    fn read_str(&self, p: &str) -> String {
        String::from_utf8(self.read(p)).unwrap()
    }

    fn exists(&self, p: &str) -> bool {
        std::fs::symlink_metadata(self.path(p)).is_ok()
    }

    fn mode(&self, p: &str) -> u32 {
        std::fs::symlink_metadata(self.path(p)).unwrap().mode() & 0o7777
    }
}

impl Host for TestHost {
    fn describe(&self) -> String {
        format!("test host over {}", self.root.display())
    }

    fn network_allowed(&self) -> bool {
        self.network
    }

    fn exec(&self, req: &ExecRequest) -> HostResult<ExecOutput> {
        self.execs.lock().unwrap().push(req.clone());
        let start = Instant::now();
        let map_arg = |a: &String| -> String {
            if a.starts_with('/') && !a.contains('\n') {
                if let Ok(real) = self.real(a, true) {
                    if real.exists() {
                        return real.to_string_lossy().to_string();
                    }
                }
            }
            a.clone()
        };
        let argv: Vec<String> = req.argv.iter().map(map_arg).collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let cwd = self.real(req.cwd.as_deref().unwrap_or("/"), true)?;
        cmd.current_dir(cwd);
        let path = format!(
            "{}/usr/bin:{}/bin:/usr/local/bin:/usr/bin:/bin",
            self.root.display(),
            self.root.display()
        );
        cmd.env("PATH", path).env("ROOT", &self.root);
        for (k, v) in &req.env {
            cmd.env(k, v);
        }
        cmd.stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| io_err(e, &req.argv[0]))?;
        if let Some(input) = &req.stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        });
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                break match st.code() {
                    Some(c) => ExitStatus::Code(c),
                    None => ExitStatus::Signal(st.signal().unwrap_or(0)),
                };
            }
            if req.timeout.is_some_and(|t| start.elapsed() > t) {
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                break ExitStatus::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(ExecOutput {
            status,
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
            duration: start.elapsed(),
        })
    }

    fn read_file(&self, path: &str) -> HostResult<Vec<u8>> {
        std::fs::read(self.real(path, true)?).map_err(|e| io_err(e, path))
    }

    fn write_file(&self, path: &str, data: &[u8], how: WriteMode, mode: Option<u32>) -> HostResult<()> {
        let real = self.real(path, true)?;
        let mut o = std::fs::OpenOptions::new();
        o.write(true);
        match how {
            WriteMode::Truncate => o.create(true).truncate(true),
            WriteMode::Append => o.create(true).append(true),
            WriteMode::CreateNew => o.create_new(true),
        };
        o.mode(mode.unwrap_or(0o644));
        o.open(real).and_then(|mut f| f.write_all(data)).map_err(|e| io_err(e, path))
    }

    fn create_dir_all(&self, path: &str, mode: Option<u32>) -> HostResult<()> {
        let real = self.real(path, true)?;
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut b, mode.unwrap_or(0o755));
        b.create(real).map_err(|e| io_err(e, path))
    }

    fn metadata(&self, path: &str) -> HostResult<Metadata> {
        let m = std::fs::symlink_metadata(self.real(path, false)?).map_err(|e| io_err(e, path))?;
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        };
        Ok(Metadata { kind, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), size: m.len() })
    }

    fn list_dir(&self, path: &str) -> HostResult<Vec<DirEntry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.real(path, true)?).map_err(|e| io_err(e, path))? {
            let e = e.map_err(|e| io_err(e, path))?;
            let ft = e.file_type().map_err(|e| io_err(e, path))?;
            let kind = if ft.is_symlink() {
                FileKind::Symlink
            } else if ft.is_dir() {
                FileKind::Dir
            } else if ft.is_file() {
                FileKind::File
            } else {
                FileKind::Other
            };
            out.push(DirEntry { name: e.file_name().to_string_lossy().to_string(), kind });
        }
        Ok(out)
    }

    fn remove_file(&self, path: &str) -> HostResult<()> {
        std::fs::remove_file(self.real(path, false)?).map_err(|e| io_err(e, path))
    }

    fn remove_dir(&self, path: &str, recursive: bool) -> HostResult<()> {
        let real = self.real(path, false)?;
        if recursive { std::fs::remove_dir_all(real) } else { std::fs::remove_dir(real) }
            .map_err(|e| io_err(e, path))
    }

    fn rename(&self, from: &str, to: &str) -> HostResult<()> {
        std::fs::rename(self.real(from, false)?, self.real(to, false)?).map_err(|e| io_err(e, from))
    }

    fn copy_file(&self, from: &str, to: &str) -> HostResult<()> {
        std::fs::copy(self.real(from, true)?, self.real(to, true)?).map(|_| ()).map_err(|e| io_err(e, from))
    }

    fn symlink(&self, target: &str, link: &str) -> HostResult<()> {
        std::os::unix::fs::symlink(target, self.real(link, false)?).map_err(|e| io_err(e, link))
    }

    fn read_link(&self, path: &str) -> HostResult<String> {
        std::fs::read_link(self.real(path, false)?)
            .map(|p| p.to_string_lossy().to_string())
            .map_err(|e| io_err(e, path))
    }

    fn set_permissions(&self, path: &str, mode: u32) -> HostResult<()> {
        let real = self.real(path, false)?;
        if std::fs::symlink_metadata(&real).map_err(|e| io_err(e, path))?.file_type().is_symlink() {
            return Err(HostError::new(HostErrorKind::Unsupported, format!("{path}: is a symlink")));
        }
        std::fs::set_permissions(real, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(e, path))
    }

    fn set_owner(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> HostResult<()> {
        std::os::unix::fs::lchown(self.real(path, false)?, uid, gid).map_err(|e| io_err(e, path))
    }

    fn lookup_user(&self, name: &str) -> HostResult<u32> {
        lookup(&self.root.join("etc/passwd"), name)
    }

    fn lookup_group(&self, name: &str) -> HostResult<u32> {
        lookup(&self.root.join("etc/group"), name)
    }

    fn reboot(&self) -> HostResult<()> {
        self.reboots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn lookup(db: &Path, name: &str) -> HostResult<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(db).unwrap_or_default();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
        .ok_or_else(|| HostError::new(HostErrorKind::UnknownAccount, format!("no account `{name}`")))
}

/// One recorded ExecuteDocument call: path, phases, parameters.
type DocCall = (String, Vec<String>, Vec<(String, String)>);

#[derive(Default)]
struct Docs {
    calls: Mutex<Vec<DocCall>>,
    fail: bool,
}

impl DocumentRunner for Docs {
    fn run_document(
        &self,
        path: &str,
        phases: &[String],
        parameters: &[(String, String)],
        _ctx: &ActionContext<'_>,
    ) -> Result<(), String> {
        self.calls.lock().unwrap().push((path.to_string(), phases.to_vec(), parameters.to_vec()));
        if self.fail { Err("step Broken failed".into()) } else { Ok(()) }
    }
}

/// A fresh root with /etc/passwd and /etc/group and a working directory /work.
struct Fixture {
    _dir: tempfile::TempDir,
    host: TestHost,
    docs: Docs,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    depth: u32,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = TestHost::new(dir.path());
        host.write(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\nalice:x:1234:2345::/home/alice:/bin/sh\n",
        );
        host.write("/etc/group", b"root:x:0:\nalicegrp:x:2345:\nstaff:x:3456:alice\n");
        std::fs::create_dir_all(host.path("/work")).unwrap();
        Fixture { _dir: dir, host, docs: Docs::default(), env: Vec::new(), timeout: None, depth: 0 }
    }

    fn offline(mut self) -> Fixture {
        self.host.network = false;
        self
    }

    fn run(&self, action: &str, inputs: Node) -> Result<ActionOutcome, ActionFailure> {
        let ctx = ActionContext {
            host: &self.host,
            working_dir: "/work",
            timeout: self.timeout,
            env: &self.env,
            documents: &self.docs,
            depth: self.depth,
        };
        actions::lookup(action).expect("registered").run(Some(&inputs), &ctx)
    }

    fn run_none(&self, action: &str) -> Result<ActionOutcome, ActionFailure> {
        let ctx = ActionContext {
            host: &self.host,
            working_dir: "/work",
            timeout: self.timeout,
            env: &self.env,
            documents: &self.docs,
            depth: self.depth,
        };
        actions::lookup(action).expect("registered").run(None, &ctx)
    }
}

// ---------------------------------------------------------------------------------------------
// Node builders. Each scalar gets its own line number so diagnostics can be located.
// ---------------------------------------------------------------------------------------------

static LINE: AtomicUsize = AtomicUsize::new(100);

fn span() -> Span {
    Span { line: LINE.fetch_add(1, Ordering::Relaxed) as u32, col: 1 }
}

fn s(text: &str) -> Node {
    Node::new(NodeKind::Scalar(text.into(), ScalarStyle::Plain), span())
}

fn at(text: &str, line: u32) -> Node {
    Node::new(NodeKind::Scalar(text.into(), ScalarStyle::Plain), Span { line, col: 5 })
}

fn seq(items: Vec<Node>) -> Node {
    Node::new(NodeKind::Seq(items), span())
}

fn map(entries: Vec<(&str, Node)>) -> Node {
    Node::new(NodeKind::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect()), span())
}

fn strs(items: &[&str]) -> Node {
    seq(items.iter().map(|i| s(i)).collect())
}

/// A list with one item map.
fn one(entries: Vec<(&str, Node)>) -> Node {
    seq(vec![map(entries)])
}

fn check(action: &str, inputs: Option<&Node>) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    actions::lookup(action).unwrap().check("doc.yml", Span { line: 1, col: 1 }, inputs, &mut diags);
    diags
}

fn fail(r: Result<ActionOutcome, ActionFailure>) -> ActionFailure {
    match r {
        Ok(o) => panic!("expected a failure, got {o:?}"),
        Err(f) => f,
    }
}

fn out(o: &ActionOutcome, key: &str) -> String {
    o.outputs.get(key).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("no output {key}")).to_string()
}

// =============================================================================================
// Registry and check
// =============================================================================================

#[test]
fn registry_holds_every_linux_module() {
    let mut names: Vec<&str> = actions::registry().iter().map(|m| m.name()).collect();
    names.sort();
    let mut want = vec![
        "AppendFile",
        "Assert",
        "CopyFile",
        "CopyFolder",
        "CreateFile",
        "CreateFolder",
        "CreateSymlink",
        "DeleteFile",
        "DeleteFolder",
        "ExecuteBash",
        "ExecuteBinary",
        "ExecuteDocument",
        "ListFiles",
        "MoveFile",
        "MoveFolder",
        "ReadFile",
        "Reboot",
        "S3Download",
        "S3Upload",
        "SetFileEncoding",
        "SetFileOwner",
        "SetFilePermissions",
        "SetFolderOwner",
        "SetFolderPermissions",
        "UpdateOS",
        "WebDownload",
    ];
    want.sort();
    assert_eq!(names, want);
    for w in actions::WINDOWS_ONLY {
        assert!(actions::lookup(w).is_none(), "{w}");
    }
    assert!(actions::lookup("executebash").is_none(), "names are case-sensitive");
    assert_eq!(actions::lookup("ExecuteBash").unwrap().output_names(), &["stdout"]);
    assert_eq!(actions::lookup("ReadFile").unwrap().output_names(), &["content"]);
    assert_eq!(actions::lookup("ListFiles").unwrap().output_names(), &["files"]);
    assert_eq!(actions::lookup("WebDownload").unwrap().output_names(), &["destination"]);
}

#[test]
fn check_reports_unknown_inputs_with_a_suggestion_at_the_key() {
    let key = at("pth", 7);
    let inputs = seq(vec![Node::new(NodeKind::Map(vec![(key, s("/x"))]), Span { line: 7, col: 3 })]);
    let d = check("CreateFile", Some(&inputs));
    let unknown = d.iter().find(|d| d.message.contains("unknown input `pth`")).expect("unknown input");
    assert_eq!((unknown.line, unknown.column), (7, 5));
    assert_eq!(unknown.hint.as_deref(), Some("did you mean `path`?"));
    assert!(d.iter().any(|d| d.message.contains("needs the input `path`")), "{d:?}");
}

#[test]
fn check_requires_fields_and_types() {
    let d = check("CopyFile", Some(&one(vec![("source", s("/a"))])));
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("needs the input `destination`"));

    let bad_bool = at("yes", 41);
    let d = check(
        "CopyFile",
        Some(&one(vec![("source", s("/a")), ("destination", s("/b")), ("overwrite", bad_bool)])),
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("must be true or false"));
    assert_eq!(d[0].line, 41);

    // Expressions skip type checks; TRUE in any case is a boolean.
    assert!(
        check(
            "CopyFile",
            Some(&one(vec![("source", s("/a")), ("destination", s("/b")), ("overwrite", s("{{ x }}"))]))
        )
        .is_empty()
    );
    assert!(
        check(
            "CopyFile",
            Some(&one(vec![("source", s("/a")), ("destination", s("/b")), ("overwrite", s("TRUE"))]))
        )
        .is_empty()
    );

    for good in ["0755", "755", "0777", "700", "4755"] {
        assert!(
            check("SetFilePermissions", Some(&one(vec![("path", s("/a")), ("permissions", s(good))])))
                .is_empty(),
            "{good}"
        );
    }
    for bad in ["999", "rwxr-xr-x", "75", "0o755"] {
        let d = check("SetFilePermissions", Some(&one(vec![("path", s("/a")), ("permissions", s(bad))])));
        assert_eq!(d.len(), 1, "{bad}: {d:?}");
        assert!(d[0].message.contains("octal permission bits"), "{d:?}");
        assert!(d[0].hint.as_deref().unwrap().contains("0755"));
    }

    let d = check("Reboot", Some(&map(vec![("delaySeconds", s("soon"))])));
    assert!(d[0].message.contains("whole number"), "{d:?}");
    assert!(check("Reboot", None).is_empty(), "Reboot needs no inputs");
    assert!(check("UpdateOS", None).is_empty(), "UpdateOS needs no inputs");

    let d = check("CreateFile", Some(&one(vec![("path", s("/a")), ("encoding", s("utf-61"))])));
    assert!(d[0].message.contains("unknown encoding"), "{d:?}");
}

#[test]
fn check_list_versus_map_shapes() {
    let d = check("CreateFile", Some(&map(vec![("path", s("/a"))])));
    assert!(d[0].message.contains("must be a list of items, found a map"), "{d:?}");
    assert!(d[0].hint.as_deref().unwrap().contains("- path"));

    let d = check("ExecuteBash", Some(&one(vec![("commands", strs(&["true"]))])));
    assert!(d[0].message.contains("must be a map, found a list"), "{d:?}");

    let d = check("ExecuteBash", Some(&map(vec![("commands", s("echo hi"))])));
    assert!(d[0].message.contains("`commands` must be a list"), "{d:?}");

    let d = check("ExecuteBash", None);
    assert!(d[0].message.contains("needs `inputs`"), "{d:?}");
    assert_eq!(d[0].line, 1);

    assert!(check("ExecuteBash", Some(&map(vec![("commands", strs(&["echo {{ x }}", "true"]))]))).is_empty());
    assert!(
        check(
            "ExecuteBinary",
            Some(&map(vec![("path", s("ansible-playbook")), ("arguments", strs(&["a"]))]))
        )
        .is_empty()
    );
}

#[test]
fn check_module_specific_rules() {
    // ExecuteDocument: parameters as name/value list, phases as comma string.
    let good = map(vec![
        ("document", s("Sample-1.yaml")),
        ("document-s3-bucket-owner", s("123456789012")),
        ("phases", s("build,validate")),
        ("parameters", seq(vec![map(vec![("name", s("p")), ("value", s("v"))])])),
    ]);
    assert!(check("ExecuteDocument", Some(&good)).is_empty());
    let bad = map(vec![
        ("document", s("x.yaml")),
        ("phases", map(vec![("a", s("b"))])),
        ("parameters", seq(vec![map(vec![("nme", s("p")), ("value", s("v"))])])),
    ]);
    let d = check("ExecuteDocument", Some(&bad));
    assert!(d.iter().any(|d| d.message.contains("`phases` must be a comma-separated list")), "{d:?}");
    assert!(d.iter().any(|d| d.message.contains("unknown input `nme`")), "{d:?}");

    // WebDownload: algorithm and URL scheme.
    let d = check(
        "WebDownload",
        Some(&one(vec![("source", s("s3://b/k")), ("destination", s("/tmp/")), ("algorithm", s("SHA265"))])),
    );
    assert!(d.iter().any(|d| d.hint.as_deref() == Some("did you mean `SHA256`?")), "{d:?}");
    assert!(d.iter().any(|d| d.hint.as_deref() == Some("use S3Download for s3:// sources")), "{d:?}");

    // S3: URIs.
    let d = check("S3Download", Some(&one(vec![("source", s("https://x/y")), ("destination", s("/tmp/"))])));
    assert!(d[0].message.contains("must be an S3 URI"), "{d:?}");
    assert!(
        check(
            "S3Download",
            Some(&one(vec![("source", s("s3://{{ B }}/scripts/*")), ("destination", s("/temp"))]))
        )
        .is_empty()
    );

    // SetFileOwner: group given twice.
    let d =
        check("SetFileOwner", Some(&one(vec![("path", s("/a")), ("owner", s("u:g")), ("group", s("g"))])));
    assert!(d[0].message.contains("group is given twice"), "{d:?}");

    // UpdateOS: package names.
    let d = check("UpdateOS", Some(&map(vec![("exclude", strs(&["ok-pkg", "bad;rm"]))])));
    assert_eq!(d.len(), 1, "{d:?}");
}

#[test]
fn check_assert_conditions() {
    let ok = map(vec![("stringEquals", s("2.1.1")), ("value", s("{{ validate.V.outputs.stdout }}"))]);
    assert!(check("Assert", Some(&ok)).is_empty());
    let nested = map(vec![(
        "or",
        seq(vec![
            map(vec![("and", seq(vec![map(vec![("numberGreaterThan", s("2.0")), ("value", s("3"))])]))]),
            map(vec![("not", map(vec![("fileExists", s("/x"))]))]),
            map(vec![("fileSHA256Equals", s("abc")), ("path", s("/x"))]),
        ]),
    )]);
    assert!(check("Assert", Some(&nested)).is_empty(), "{:?}", check("Assert", Some(&nested)));

    let d = check("Assert", Some(&map(vec![("stringEqual", s("a")), ("value", s("a"))])));
    assert!(d.iter().any(|d| d.hint.as_deref() == Some("did you mean `stringEquals`?")), "{d:?}");
    let d = check("Assert", Some(&map(vec![("numberEquals", s("ten")), ("value", s("10"))])));
    assert!(d.iter().any(|d| d.message.contains("needs a number")), "{d:?}");
    let d = check("Assert", Some(&map(vec![("stringEquals", s("a"))])));
    assert!(d.iter().any(|d| d.message.contains("needs a `value`")), "{d:?}");
    let d = check("Assert", Some(&map(vec![("patternMatches", s("([a-z")), ("value", s("a"))])));
    assert!(d.iter().any(|d| d.message.contains("not a valid regular expression")), "{d:?}");
    let d = check(
        "Assert",
        Some(&map(vec![("stringEquals", s("a")), ("numberEquals", s("1")), ("value", s("a"))])),
    );
    assert!(d.iter().any(|d| d.message.contains("exactly one operator")), "{d:?}");
}

// =============================================================================================
// ExecuteBash / ExecuteBinary / ExecuteDocument
// =============================================================================================

fn bash(cmds: &[&str]) -> Node {
    map(vec![("commands", strs(cmds))])
}

#[test]
fn execute_bash_runs_commands_as_one_script() {
    let mut f = Fixture::new();
    f.env.push(("GREETING".into(), "hello".into()));
    let o = f
        .run("ExecuteBash", bash(&["X=from-first", "echo \"$X $GREETING\"", "pwd", "touch made-here"]))
        .unwrap();
    let stdout = out(&o, "stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "from-first hello");
    assert!(lines[1].ends_with("/work"), "{stdout}");
    assert!(f.host.exists("/work/made-here"), "cwd is the working directory");
    assert_eq!(o.exit_code, Some(0));
    assert!(o.reboot.is_none());
    assert!(o.stdout.ends_with(b"\n"), "raw stdout keeps its newline");
    assert!(!stdout.ends_with('\n'), "the output loses the trailing newline");
    assert_eq!(f.host.execs.lock().unwrap()[0].argv[0], "bash");
}

#[test]
fn execute_bash_has_no_set_e_and_the_last_exit_code_counts() {
    let f = Fixture::new();
    let o = f.run("ExecuteBash", bash(&["false", "echo still-running"])).unwrap();
    assert_eq!(out(&o, "stdout"), "still-running");

    let e = fail(f.run("ExecuteBash", bash(&["echo oops >&2", "exit 3"])));
    assert_eq!(e.exit_code, Some(3));
    assert_eq!(e.stderr, b"oops\n");
    assert!(!e.timed_out);
    assert!(e.message.contains("exited with code 3"), "{}", e.message);
}

#[test]
fn execute_bash_exit_194_requests_reboot_and_rerun() {
    let f = Fixture::new();
    let script =
        "if [ -f marker ]; then rm marker; echo after; exit 0; fi\ntouch marker\necho before\nexit 194";
    let o = f.run("ExecuteBash", bash(&[script])).unwrap();
    assert_eq!(o.reboot, Some(RebootRequest::ThenRerunStep));
    assert_eq!(out(&o, "stdout"), "before");
    let o = f.run("ExecuteBash", bash(&[script])).unwrap();
    assert_eq!(o.reboot, None);
    assert_eq!(out(&o, "stdout"), "after");
    assert_eq!(f.host.reboots.load(Ordering::SeqCst), 0, "the module asks; the engine reboots");
}

#[test]
fn execute_bash_timeout_fails_with_timed_out() {
    let mut f = Fixture::new();
    f.timeout = Some(Duration::from_millis(300));
    let start = Instant::now();
    let e = fail(f.run("ExecuteBash", bash(&["echo started", "sleep 20"])));
    assert!(e.timed_out);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(e.message.contains("timed out"), "{}", e.message);
    assert_eq!(e.stdout, b"started\n");
}

#[test]
fn execute_bash_long_script_goes_through_a_removed_file() {
    let f = Fixture::new();
    let filler = format!("# {}", "x".repeat(120 * 1024));
    let o = f.run("ExecuteBash", bash(&[&filler, "echo long-ok"])).unwrap();
    assert_eq!(out(&o, "stdout"), "long-ok");
    let req = f.host.execs.lock().unwrap()[0].clone();
    assert_eq!(req.argv.len(), 2);
    assert!(req.argv[1].starts_with("/tmp/kiln-executebash-"));
    assert!(!f.host.exists(&req.argv[1]), "script file removed");
}

#[test]
fn execute_binary_runs_with_arguments() {
    let f = Fixture::new();
    let o = f
        .run("ExecuteBinary", map(vec![("path", s("echo")), ("arguments", strs(&["--version-like", "a b"]))]))
        .unwrap();
    assert_eq!(out(&o, "stdout"), "--version-like a b");

    let o = f
        .run("ExecuteBinary", map(vec![("path", s("bash")), ("arguments", strs(&["-c", "exit 194"]))]))
        .unwrap();
    assert_eq!(o.reboot, Some(RebootRequest::ThenRerunStep));

    let e =
        fail(f.run("ExecuteBinary", map(vec![("path", s("bash")), ("arguments", strs(&["-c", "exit 7"]))])));
    assert_eq!(e.exit_code, Some(7));

    // A relative path with a slash is taken from the working directory.
    f.host.write("/work/bin/tool", b"#!/bin/sh\necho tool-ran \"$@\"\n");
    std::fs::set_permissions(f.host.path("/work/bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o =
        f.run("ExecuteBinary", map(vec![("path", s("./bin/tool")), ("arguments", strs(&["x"]))])).unwrap();
    assert_eq!(out(&o, "stdout"), "tool-ran x");
    assert_eq!(f.host.execs.lock().unwrap().last().unwrap().argv[0], "/work/bin/tool");

    let e = fail(f.run("ExecuteBinary", map(vec![("path", s("/no/such/binary"))])));
    assert!(e.message.contains("cannot start"), "{}", e.message);
}

#[test]
fn execute_document_delegates_to_the_runner() {
    let f = Fixture::new();
    let inputs = map(vec![
        ("document", s("Sample-1.yaml")),
        ("phases", s("build, validate")),
        (
            "parameters",
            seq(vec![
                map(vec![("name", s("p1")), ("value", s("v1"))]),
                map(vec![("name", s("p2")), ("value", s("v2"))]),
            ]),
        ),
    ]);
    f.run("ExecuteDocument", inputs).unwrap();
    let calls = f.docs.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "/work/Sample-1.yaml");
    assert_eq!(calls[0].1, vec!["build".to_string(), "validate".to_string()]);
    assert_eq!(calls[0].2, vec![("p1".into(), "v1".into()), ("p2".into(), "v2".into())]);

    // Parameters as a plain map, phases as a list.
    f.run(
        "ExecuteDocument",
        map(vec![
            ("document", s("/abs/d.yml")),
            ("phases", strs(&["test"])),
            ("parameters", map(vec![("k", s("v"))])),
        ]),
    )
    .unwrap();
    let calls = f.docs.calls.lock().unwrap().clone();
    assert_eq!(
        calls[1],
        ("/abs/d.yml".to_string(), vec!["test".to_string()], vec![("k".into(), "v".into())])
    );
}

#[test]
fn execute_document_limits_and_failures() {
    let mut f = Fixture::new();
    f.depth = 3;
    let e = fail(f.run("ExecuteDocument", map(vec![("document", s("d.yml"))])));
    assert!(e.message.contains("3 levels"), "{}", e.message);
    assert!(f.docs.calls.lock().unwrap().is_empty());

    let f = Fixture::new().offline();
    let e = fail(f.run("ExecuteDocument", map(vec![("document", s("s3://bucket/d.yml"))])));
    assert!(e.message.contains("allows no network"), "{}", e.message);

    let mut f = Fixture::new();
    f.docs.fail = true;
    let e = fail(f.run("ExecuteDocument", map(vec![("document", s("d.yml"))])));
    assert!(e.message.contains("step Broken failed"), "{}", e.message);
}

// =============================================================================================
// File modules
// =============================================================================================

#[test]
fn create_file_writes_content_encoding_and_properties() {
    let f = Fixture::new();
    f.run(
        "CreateFile",
        seq(vec![
            map(vec![("path", s("/etc/app/conf.txt")), ("content", s("hi\n")), ("permissions", s("0640"))]),
            map(vec![("path", s("rel/u16.txt")), ("content", s("A")), ("encoding", s("UTF-16"))]),
            map(vec![("path", s("/empty.txt"))]),
            map(vec![("path", s("/owned.txt")), ("owner", s("alice"))]),
        ]),
    )
    .unwrap();
    assert_eq!(f.host.read_str("/etc/app/conf.txt"), "hi\n");
    assert_eq!(f.host.mode("/etc/app/conf.txt"), 0o640);
    assert_eq!(f.host.read("/work/rel/u16.txt"), vec![0x41, 0x00]);
    assert_eq!(f.host.read("/empty.txt"), b"");
    let m = f.host.metadata("/owned.txt").unwrap();
    assert_eq!((m.uid, m.gid), (1234, 2345), "the user's primary group from the image's passwd");

    // Overwrite is the default; overwrite: false refuses.
    f.run("CreateFile", one(vec![("path", s("/empty.txt")), ("content", s("new"))])).unwrap();
    assert_eq!(f.host.read_str("/empty.txt"), "new");
    let e = fail(f.run(
        "CreateFile",
        one(vec![("path", s("/empty.txt")), ("content", s("x")), ("overwrite", s("false"))]),
    ));
    assert!(e.message.contains("already exists and `overwrite` is false"), "{}", e.message);
    assert_eq!(f.host.read_str("/empty.txt"), "new");

    let e = fail(f.run("CreateFile", one(vec![("path", s("/x.txt")), ("owner", s("mallory"))])));
    assert!(e.message.contains("unknown user `mallory`"), "{}", e.message);
    let e = fail(f.run("CreateFile", one(vec![("path", s("/y.txt")), ("permissions", s("rwx"))])));
    assert!(e.message.contains("octal permission bits"), "{}", e.message);
    assert!(!f.host.exists("/y.txt"), "nothing written before the inputs were valid");
    let e = fail(f.run("CreateFile", one(vec![("path", s("/etc"))])));
    assert!(e.message.contains("is a folder"), "{}", e.message);
}

#[test]
fn append_file_adds_and_needs_an_existing_file() {
    let f = Fixture::new();
    f.host.write("/log.txt", b"one\n");
    f.run(
        "AppendFile",
        seq(vec![
            map(vec![("path", s("/log.txt")), ("content", s("two\n"))]),
            map(vec![("path", s("/log.txt"))]),
        ]),
    )
    .unwrap();
    assert_eq!(f.host.read_str("/log.txt"), "one\ntwo\n");
    f.run(
        "AppendFile",
        one(vec![("path", s("/log.txt")), ("content", s("Z")), ("encoding", s("utf-32-BE"))]),
    )
    .unwrap();
    assert!(f.host.read("/log.txt").ends_with(&[0, 0, 0, b'Z']));
    let e = fail(f.run("AppendFile", one(vec![("path", s("/missing.txt")), ("content", s("x"))])));
    assert!(e.message.contains("does not exist") && e.message.contains("CreateFile"), "{}", e.message);
}

#[test]
fn copy_file_variants() {
    let f = Fixture::new();
    f.host.write("/src/a.log", b"A");
    f.host.write("/src/b.log", b"B");
    f.host.write("/src/c.txt", b"C");
    f.run("CopyFile", one(vec![("source", s("/src/a.log")), ("destination", s("/dst/renamed.log"))]))
        .unwrap();
    assert_eq!(f.host.read_str("/dst/renamed.log"), "A");
    f.run("CopyFile", one(vec![("source", s("/src/c.txt")), ("destination", s("/dst/"))])).unwrap();
    assert_eq!(f.host.read_str("/dst/c.txt"), "C");
    f.run("CopyFile", one(vec![("source", s("/src/*.log")), ("destination", s("/many/"))])).unwrap();
    assert_eq!(f.host.read_str("/many/a.log"), "A");
    assert_eq!(f.host.read_str("/many/b.log"), "B");
    assert!(!f.host.exists("/many/c.txt"));
    assert!(f.host.exists("/src/a.log"), "copy keeps the source");

    let e = fail(f.run("CopyFile", one(vec![("source", s("/src/*.log")), ("destination", s("/one-file"))])));
    assert!(e.message.contains("must be a folder ending with `/`"), "{}", e.message);
    let e = fail(f.run(
        "CopyFile",
        one(vec![("source", s("/src/c.txt")), ("destination", s("/dst/c.txt")), ("overwrite", s("false"))]),
    ));
    assert!(e.message.contains("already exists"), "{}", e.message);
    let e = fail(f.run("CopyFile", one(vec![("source", s("/src/none.txt")), ("destination", s("/dst/"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let e = fail(f.run("CopyFile", one(vec![("source", s("/src")), ("destination", s("/dst/"))])));
    assert!(e.message.contains("use CopyFolder"), "{}", e.message);
}

#[test]
fn move_file_moves() {
    let f = Fixture::new();
    f.host.write("/work/a.txt", b"A");
    f.host.write("/other.txt", b"old");
    f.run("MoveFile", one(vec![("source", s("a.txt")), ("destination", s("/other.txt"))])).unwrap();
    assert_eq!(f.host.read_str("/other.txt"), "A");
    assert!(!f.host.exists("/work/a.txt"));
    f.host.write("/work/b.txt", b"B");
    let e = fail(f.run(
        "MoveFile",
        one(vec![("source", s("b.txt")), ("destination", s("/other.txt")), ("overwrite", s("false"))]),
    ));
    assert!(e.message.contains("already exists"), "{}", e.message);
    assert!(f.host.exists("/work/b.txt"));
}

#[test]
fn delete_file_single_and_wildcard() {
    let f = Fixture::new();
    for p in ["/d/a.log", "/d/b.log", "/d/keep.txt"] {
        f.host.write(p, b"x");
    }
    f.run("DeleteFile", one(vec![("path", s("/d/*log"))])).unwrap();
    assert!(!f.host.exists("/d/a.log") && !f.host.exists("/d/b.log"));
    assert!(f.host.exists("/d/keep.txt"));
    f.run("DeleteFile", one(vec![("path", s("/d/*.none"))])).unwrap();
    f.run("DeleteFile", one(vec![("path", s("/d/keep.txt"))])).unwrap();
    assert!(!f.host.exists("/d/keep.txt"));
    let e = fail(f.run("DeleteFile", one(vec![("path", s("/d/keep.txt"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let e = fail(f.run("DeleteFile", one(vec![("path", s("/d"))])));
    assert!(e.message.contains("use DeleteFolder"), "{}", e.message);
}

#[test]
fn create_symlink_force_and_errors() {
    let f = Fixture::new();
    f.host.write("/Folder/Sample.txt", b"S");
    f.host.write("/Folder/Other.txt", b"O");
    f.run("CreateSymlink", one(vec![("path", s("/Folder2/link.txt")), ("target", s("/Folder/Sample.txt"))]))
        .unwrap();
    assert_eq!(f.host.read_link("/Folder2/link.txt").unwrap(), "/Folder/Sample.txt");
    assert_eq!(f.host.read_str("/Folder2/link.txt"), "S");

    let e = fail(f.run(
        "CreateSymlink",
        one(vec![("path", s("/Folder2/link.txt")), ("target", s("/Folder/Other.txt"))]),
    ));
    assert!(e.message.contains("set force: true"), "{}", e.message);
    f.run(
        "CreateSymlink",
        one(vec![("path", s("/Folder2/link.txt")), ("target", s("/Folder/Other.txt")), ("force", s("true"))]),
    )
    .unwrap();
    assert_eq!(f.host.read_str("/Folder2/link.txt"), "O");

    // Relative link path from the working directory.
    f.run("CreateSymlink", one(vec![("path", s("rel-link")), ("target", s("/Folder/Sample.txt"))])).unwrap();
    assert_eq!(f.host.metadata("/work/rel-link").unwrap().kind, FileKind::Symlink);

    let e = fail(f.run("CreateSymlink", one(vec![("path", s("/l2")), ("target", s("/nope"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let e = fail(f.run(
        "CreateSymlink",
        one(vec![
            ("path", s("/Folder/Sample.txt")),
            ("target", s("/Folder/Other.txt")),
            ("force", s("true")),
        ]),
    ));
    assert!(e.message.contains("not a symbolic link"), "{}", e.message);
}

#[test]
fn read_file_outputs_content() {
    let f = Fixture::new();
    f.host.write("/r/a.txt", b"The file content");
    let mut u32le = Vec::new();
    for c in "wide".chars() {
        u32le.extend((c as u32).to_le_bytes());
    }
    f.host.write("/r/u32.txt", &u32le);
    let o = f.run("ReadFile", one(vec![("path", s("/r/a.txt"))])).unwrap();
    assert_eq!(out(&o, "content"), "The file content");
    assert!(o.stdout.is_empty(), "not printed by default");
    let o = f
        .run(
            "ReadFile",
            one(vec![("path", s("/r/u32.txt")), ("encoding", s("UTF-32")), ("printFileContent", s("true"))]),
        )
        .unwrap();
    assert_eq!(out(&o, "content"), "wide");
    assert_eq!(o.stdout, b"wide\n");
    let e = fail(f.run("ReadFile", one(vec![("path", s("/r/none.txt"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
    f.host.write("/r/bin", &[0xff, 0xfe, 0xfd]);
    let e = fail(f.run("ReadFile", one(vec![("path", s("/r/bin"))])));
    assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
}

#[test]
fn set_file_encoding_converts_from_utf8() {
    let f = Fixture::new();
    f.host.write("/e.txt", "é".as_bytes());
    std::fs::set_permissions(f.host.path("/e.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    f.run("SetFileEncoding", one(vec![("path", s("/e.txt")), ("encoding", s("utf16-BE"))])).unwrap();
    assert_eq!(f.host.read("/e.txt"), vec![0x00, 0xE9]);
    assert_eq!(f.host.mode("/e.txt"), 0o600, "permissions kept");
    let e = fail(f.run("SetFileEncoding", one(vec![("path", s("/none.txt")), ("encoding", s("utf8"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

#[test]
fn list_files_pattern_and_recursion() {
    let f = Fixture::new();
    for p in ["/l/a.log", "/l/b.txt", "/l/sub/c.log", "/l/sub/deeper/d.log"] {
        f.host.write(p, b"x");
    }
    let o = f.run("ListFiles", one(vec![("path", s("/l"))])).unwrap();
    assert_eq!(out(&o, "files"), "/l/a.log,/l/b.txt");
    let o = f
        .run(
            "ListFiles",
            one(vec![("path", s("/l/")), ("fileNamePattern", s("*log")), ("recursive", s("true"))]),
        )
        .unwrap();
    assert_eq!(out(&o, "files"), "/l/a.log,/l/sub/c.log,/l/sub/deeper/d.log");
    let e = fail(f.run("ListFiles", one(vec![("path", s("/nope"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

// =============================================================================================
// Folder modules
// =============================================================================================

#[test]
fn create_folder_with_properties() {
    let f = Fixture::new();
    f.run(
        "CreateFolder",
        one(vec![
            ("path", s("/Sample/My/Deep/")),
            ("permissions", s("0750")),
            ("owner", s("alice")),
            ("group", s("staff")),
        ]),
    )
    .unwrap();
    assert_eq!(f.host.metadata("/Sample/My/Deep").unwrap().kind, FileKind::Dir);
    assert_eq!(f.host.mode("/Sample/My/Deep"), 0o750);
    let m = f.host.metadata("/Sample/My/Deep").unwrap();
    assert_eq!((m.uid, m.gid), (1234, 3456));
    // Existing folder: kept (with its content), properties applied.
    f.host.write("/Sample/My/Deep/keep", b"k");
    f.run("CreateFolder", one(vec![("path", s("/Sample/My/Deep")), ("permissions", s("755"))])).unwrap();
    assert_eq!(f.host.mode("/Sample/My/Deep"), 0o755);
    assert!(f.host.exists("/Sample/My/Deep/keep"));
    let e = fail(f.run("CreateFolder", one(vec![("path", s("/Sample/My/Deep")), ("overwrite", s("false"))])));
    assert!(e.message.contains("already exists"), "{}", e.message);
    let e = fail(f.run("CreateFolder", one(vec![("path", s("/Sample/My/Deep/keep"))])));
    assert!(e.message.contains("not a folder"), "{}", e.message);
    let e = fail(f.run("CreateFolder", one(vec![("path", s("/g")), ("group", s("nogroup-here"))])));
    assert!(e.message.contains("unknown group"), "{}", e.message);
}

#[test]
fn copy_folder_copies_and_merges() {
    let f = Fixture::new();
    f.host.write("/s/app/bin/run", b"run");
    f.host.write("/s/app/conf", b"new");
    std::os::unix::fs::symlink("bin/run", f.host.path("/s/app/link")).unwrap();
    f.run("CopyFolder", one(vec![("source", s("/s/app")), ("destination", s("/opt/"))])).unwrap();
    assert_eq!(f.host.read_str("/opt/app/bin/run"), "run");
    assert_eq!(f.host.read_link("/opt/app/link").unwrap(), "bin/run");

    f.host.write("/d/conf", b"old");
    f.host.write("/d/extra", b"kept");
    f.run("CopyFolder", one(vec![("source", s("/s/app")), ("destination", s("/d"))])).unwrap();
    assert_eq!(f.host.read_str("/d/conf"), "new");
    assert_eq!(f.host.read_str("/d/extra"), "kept");
    assert_eq!(f.host.read_str("/d/bin/run"), "run");

    let e = fail(f.run(
        "CopyFolder",
        one(vec![("source", s("/s/app")), ("destination", s("/d")), ("overwrite", s("false"))]),
    ));
    assert!(e.message.contains("already exists"), "{}", e.message);
    let e = fail(f.run("CopyFolder", one(vec![("source", s("/s/app")), ("destination", s("/s/app/inner"))])));
    assert!(e.message.contains("into itself"), "{}", e.message);
    let e = fail(f.run("CopyFolder", one(vec![("source", s("/s/none")), ("destination", s("/x"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

#[test]
fn move_folder_renames_and_merges() {
    let f = Fixture::new();
    f.host.write("/m/one/a", b"a");
    f.host.write("/m/two/b", b"b");
    f.run("MoveFolder", one(vec![("source", s("/m/t*")), ("destination", s("/moved/"))])).unwrap();
    assert_eq!(f.host.read_str("/moved/two/b"), "b");
    assert!(!f.host.exists("/m/two"));
    assert!(f.host.exists("/m/one"), "not matched by the wildcard");

    f.host.write("/target/x", b"old");
    f.host.write("/target/y", b"kept");
    f.host.write("/m/one/x", b"new");
    f.run("MoveFolder", one(vec![("source", s("/m/one")), ("destination", s("/target"))])).unwrap();
    assert_eq!(f.host.read_str("/target/x"), "new");
    assert_eq!(f.host.read_str("/target/y"), "kept");
    assert_eq!(f.host.read_str("/target/a"), "a");
    assert!(!f.host.exists("/m/one"));
}

#[test]
fn delete_folder_needs_force_when_not_empty() {
    let f = Fixture::new();
    f.host.write("/del/full/f", b"x");
    std::fs::create_dir_all(f.host.path("/del/empty")).unwrap();
    f.run("DeleteFolder", one(vec![("path", s("/del/empty/"))])).unwrap();
    assert!(!f.host.exists("/del/empty"));
    let e = fail(f.run("DeleteFolder", one(vec![("path", s("/del/full"))])));
    assert!(e.message.contains("not empty") && e.message.contains("force: true"), "{}", e.message);
    assert!(f.host.exists("/del/full/f"));
    f.run("DeleteFolder", one(vec![("path", s("/del/full")), ("force", s("true"))])).unwrap();
    assert!(!f.host.exists("/del/full"));
    let e = fail(f.run("DeleteFolder", one(vec![("path", s("/del/full"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let e = fail(f.run("DeleteFolder", one(vec![("path", s("/"))])));
    assert!(e.message.contains("root"), "{}", e.message);
}

// =============================================================================================
// Owners and permissions
// =============================================================================================

#[test]
fn set_file_owner_forms_and_errors() {
    let f = Fixture::new();
    f.host.write("/o/f", b"x");
    f.run("SetFileOwner", one(vec![("path", s("/o/f")), ("owner", s("alice"))])).unwrap();
    let m = f.host.metadata("/o/f").unwrap();
    assert_eq!((m.uid, m.gid), (1234, 2345));
    f.run("SetFileOwner", one(vec![("path", s("/o/f")), ("owner", s("root:staff"))])).unwrap();
    let m = f.host.metadata("/o/f").unwrap();
    assert_eq!((m.uid, m.gid), (0, 3456));
    f.run("SetFileOwner", one(vec![("path", s("/o/f")), ("owner", s("alice")), ("group", s("root"))]))
        .unwrap();
    let m = f.host.metadata("/o/f").unwrap();
    assert_eq!((m.uid, m.gid), (1234, 0));

    // Through a symlink: the file it points to changes.
    std::os::unix::fs::symlink("/o/f", f.host.path("/o/link")).unwrap();
    f.run("SetFileOwner", one(vec![("path", s("/o/link")), ("owner", s("root:root"))])).unwrap();
    assert_eq!(f.host.metadata("/o/f").unwrap().uid, 0);

    let e = fail(f.run("SetFileOwner", one(vec![("path", s("/o/f")), ("owner", s("LinuxUser"))])));
    assert!(e.message.contains("unknown user `LinuxUser`"), "{}", e.message);
    let e = fail(f.run("SetFileOwner", one(vec![("path", s("/o/none")), ("owner", s("alice"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let e = fail(f.run("SetFileOwner", one(vec![("path", s("/o")), ("owner", s("alice"))])));
    assert!(e.message.contains("is a folder"), "{}", e.message);
}

#[test]
fn set_folder_owner_recursive_or_not() {
    let f = Fixture::new();
    f.host.write("/t/a/b/c", b"x");
    f.run("SetFolderOwner", one(vec![("path", s("/t")), ("owner", s("alice"))])).unwrap();
    for p in ["/t", "/t/a", "/t/a/b", "/t/a/b/c"] {
        assert_eq!(f.host.metadata(p).unwrap().uid, 1234, "{p}");
    }
    f.run("SetFolderOwner", one(vec![("path", s("/t")), ("owner", s("root")), ("recursive", s("false"))]))
        .unwrap();
    assert_eq!(f.host.metadata("/t").unwrap().uid, 0);
    assert_eq!(f.host.metadata("/t/a").unwrap().uid, 1234);
    let e = fail(f.run("SetFolderOwner", one(vec![("path", s("/t/a/b/c")), ("owner", s("root"))])));
    assert!(e.message.contains("not a folder"), "{}", e.message);
}

#[test]
fn set_permissions_file_and_folder() {
    let f = Fixture::new();
    f.host.write("/p/f", b"x");
    f.host.write("/p/sub/g", b"x");
    f.run("SetFilePermissions", one(vec![("path", s("/p/f")), ("permissions", s("0700"))])).unwrap();
    assert_eq!(f.host.mode("/p/f"), 0o700);
    let e = fail(f.run("SetFilePermissions", one(vec![("path", s("/p/f")), ("permissions", s("0999"))])));
    assert!(e.message.contains("octal permission bits"), "{}", e.message);
    assert_eq!(f.host.mode("/p/f"), 0o700);
    let e =
        fail(f.run("SetFilePermissions", one(vec![("path", s("/p/missing")), ("permissions", s("644"))])));
    assert!(e.message.contains("does not exist"), "{}", e.message);

    f.run("SetFolderPermissions", one(vec![("path", s("/p/")), ("permissions", s("777"))])).unwrap();
    for p in ["/p", "/p/f", "/p/sub", "/p/sub/g"] {
        assert_eq!(f.host.mode(p), 0o777, "{p}");
    }
    f.run(
        "SetFolderPermissions",
        one(vec![("path", s("/p")), ("permissions", s("0750")), ("recursive", s("false"))]),
    )
    .unwrap();
    assert_eq!(f.host.mode("/p"), 0o750);
    assert_eq!(f.host.mode("/p/sub"), 0o777);
}

// =============================================================================================
// System modules
// =============================================================================================

#[test]
fn reboot_requests_continue_with_delay() {
    let f = Fixture::new();
    let o = f.run("Reboot", map(vec![("delaySeconds", s("60"))])).unwrap();
    assert_eq!(o.reboot, Some(RebootRequest::ThenContinue { delay_seconds: 60 }));
    let o = f.run_none("Reboot").unwrap();
    assert_eq!(o.reboot, Some(RebootRequest::ThenContinue { delay_seconds: 0 }));
    let e = fail(f.run("Reboot", map(vec![("delaySeconds", s("-1"))])));
    assert!(e.message.contains("whole number"), "{}", e.message);
}

#[test]
fn assert_evaluates_conditions() {
    let f = Fixture::new();
    let ok = |n: Node| f.run("Assert", n).is_ok();
    assert!(ok(map(vec![("stringEquals", s("2.1.1")), ("value", s("2.1.1"))])));
    assert!(ok(map(vec![("stringEquals", s("ABC")), ("value", s("abc"))])), "string comparisons ignore case");
    assert!(!ok(map(vec![("stringEquals", s("a ")), ("value", s("a"))])), "no trimming");
    assert!(ok(map(vec![
        ("patternMatches", s("^[a-zA-Z\\s]+$")),
        ("value", s("This text contains spaces"))
    ])));
    assert!(ok(map(vec![("patternMatches", s("^s3://.*/.*$")), ("value", s("s3://bucket/key"))])));
    assert!(ok(map(vec![("numberGreaterThan", s("2.0")), ("value", s("2.5"))])), "value > operand");
    assert!(!ok(map(vec![("numberLessThan", s("2.0")), ("value", s("2.5"))])));
    assert!(ok(map(vec![("numberEquals", s("1")), ("value", s("1.0"))])));
    assert!(!ok(map(vec![("numberEquals", s("10")), ("value", s("a10"))])), "not a number: false");
    assert!(ok(map(vec![("stringLessThan", s("b")), ("value", s("a"))])));
    assert!(ok(map(vec![("stringIsEmpty", s(""))])));
    assert!(ok(map(vec![("stringIsWhitespace", s("  "))])));
    assert!(!ok(map(vec![("stringIsWhitespace", s(""))])));

    f.host.write("/work/f.txt", b"abc");
    assert!(ok(map(vec![("fileExists", s("f.txt"))])));
    assert!(!ok(map(vec![("folderExists", s("/work/f.txt"))])));
    assert!(ok(map(vec![("folderExists", s("/work"))])));
    assert!(ok(map(vec![
        ("fileSHA256Equals", s("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")),
        ("path", s("/work/f.txt")),
    ])));
    assert!(ok(map(vec![("fileMD5Equals", s("900150983cd24fb0d6963f7d28e17f72")), ("path", s("f.txt"))])));
    f.host.write("/usr/bin/mytool", b"#!/bin/sh\n");
    std::fs::set_permissions(f.host.path("/usr/bin/mytool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(ok(map(vec![("binaryExists", s("mytool"))])));
    assert!(!ok(map(vec![("binaryExists", s("not-a-tool"))])));

    let nested = map(vec![(
        "or",
        seq(vec![
            map(vec![(
                "and",
                seq(vec![
                    map(vec![("numberGreaterThan", s("2.0")), ("value", s("1"))]),
                    map(vec![("stringEquals", s("x")), ("value", s("x"))]),
                ]),
            )]),
            map(vec![("not", map(vec![("fileExists", s("/none"))]))]),
        ]),
    )]);
    assert!(ok(nested));

    let e = fail(f.run("Assert", map(vec![("stringEquals", s("2.1.1")), ("value", s("2.0.0"))])));
    assert!(e.message.contains("assertion is false") && e.message.contains("'2.0.0'"), "{}", e.message);
}

fn fake_tool(f: &Fixture, name: &str, body: &str) {
    let p = format!("/usr/bin/{name}");
    f.host.write(&p, format!("#!/bin/bash\necho \"{name} $*\" >> \"$ROOT/pm.log\"\n{body}\n").as_bytes());
    std::fs::set_permissions(f.host.path(&p), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn update_os_apt_holds_exclusions_around_the_upgrade() {
    let f = Fixture::new();
    fake_tool(&f, "apt-get", "");
    fake_tool(&f, "apt-mark", "");
    fake_tool(&f, "dpkg-query", "[ \"$3\" = installed-pkg ] && printf 'install ok installed'");
    let o = f.run("UpdateOS", map(vec![("exclude", strs(&["installed-pkg", "absent-pkg"]))])).unwrap();
    assert!(o.outputs.is_empty());
    let log = f.host.read_str("/pm.log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("dpkg-query")).collect();
    assert_eq!(
        lines,
        vec![
            "apt-get update",
            "apt-mark hold installed-pkg",
            "apt-get upgrade -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold",
            "apt-mark unhold installed-pkg",
        ]
    );
    let script = f.host.execs.lock().unwrap()[0].argv[2].clone();
    assert!(script.contains("DEBIAN_FRONTEND=noninteractive"));

    // A failing upgrade fails the step, and the hold is still released.
    std::fs::remove_file(f.host.path("/pm.log")).unwrap();
    fake_tool(&f, "apt-get", "[ \"$1\" = upgrade ] && exit 100; true");
    let e = fail(f.run("UpdateOS", map(vec![("exclude", strs(&["installed-pkg"]))])));
    assert_eq!(e.exit_code, Some(100));
    assert!(f.host.read_str("/pm.log").ends_with("apt-mark unhold installed-pkg\n"));
}

#[test]
fn update_os_refusals() {
    let f = Fixture::new().offline();
    let e = fail(f.run_none("UpdateOS"));
    assert!(e.message.contains("allows no network"), "{}", e.message);
    let f = Fixture::new();
    let e = fail(f.run_none("UpdateOS"));
    assert!(e.message.contains("no supported package manager"), "{}", e.message);
    let e = fail(f.run("UpdateOS", map(vec![("include", strs(&["x; reboot"]))])));
    assert!(e.message.contains("not a package name"), "{}", e.message);
}

// =============================================================================================
// WebDownload against a small HTTP server on 127.0.0.1
// =============================================================================================

struct Server {
    port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

/// Serves `routes`: path → list of (status, body) answers given in turn (the last repeats).
/// Answers of one route, given in turn: (status, body).
type Answers = Vec<(u16, Vec<u8>)>;

fn serve(routes: Vec<(&'static str, Answers)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let routes: HashMap<String, Answers> = routes.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let req = String::from_utf8_lossy(&buf);
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let n = {
                let mut hits = h.lock().unwrap();
                let c = hits.entry(path.clone()).or_insert(0);
                *c += 1;
                *c
            };
            let (status, body) = match routes.get(&path) {
                Some(answers) => answers[(n - 1).min(answers.len() - 1)].clone(),
                None => (404, b"not found".to_vec()),
            };
            let head =
                format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    Server { port, hits }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

const BODY_SHA256: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"; // "hello world"

#[test]
fn web_download_to_file_and_folder_with_checksum() {
    let srv = serve(vec![("/files/java14.zip", vec![(200, b"hello world".to_vec())])]);
    let f = Fixture::new();
    let o = f
        .run(
            "WebDownload",
            seq(vec![
                map(vec![
                    ("source", s(&srv.url("/files/java14.zip"))),
                    ("destination", s("/tmp/renamed.zip")),
                ]),
                map(vec![
                    ("source", s(&srv.url("/files/java14.zip"))),
                    ("destination", s("new_folder/")),
                    ("checksum", s(&BODY_SHA256.to_uppercase())),
                    ("algorithm", s("SHA256")),
                ]),
            ]),
        )
        .unwrap();
    assert_eq!(out(&o, "destination"), "/tmp/renamed.zip\n/work/new_folder/java14.zip");
    assert_eq!(f.host.read_str("/tmp/renamed.zip"), "hello world");
    assert_eq!(f.host.read_str("/work/new_folder/java14.zip"), "hello world");
    assert!(!f.host.exists("/tmp/renamed.zip.kiln-download"));
    assert_eq!(srv.hits("/files/java14.zip"), 2);

    // Overwrite with a matching checksum: not downloaded again.
    f.run(
        "WebDownload",
        one(vec![
            ("source", s(&srv.url("/files/java14.zip"))),
            ("destination", s("/tmp/renamed.zip")),
            ("checksum", s("5eb63bbbe01eeed093cb22bb8f5acdc3")),
            ("algorithm", s("md5")),
        ]),
    )
    .unwrap();
    assert_eq!(srv.hits("/files/java14.zip"), 2);

    // overwrite: false refuses an existing file.
    let e = fail(f.run(
        "WebDownload",
        one(vec![
            ("source", s(&srv.url("/files/java14.zip"))),
            ("destination", s("/tmp/renamed.zip")),
            ("overwrite", s("false")),
        ]),
    ));
    assert!(e.message.contains("already exists and `overwrite` is false"), "{}", e.message);
}

#[test]
fn web_download_retries_server_errors() {
    let srv = serve(vec![
        ("/flaky", vec![(500, b"boom".to_vec()), (503, b"busy".to_vec()), (200, b"finally".to_vec())]),
        ("/always500", vec![(500, b"boom".to_vec())]),
    ]);
    let f = Fixture::new();
    f.run("WebDownload", one(vec![("source", s(&srv.url("/flaky"))), ("destination", s("/dl/flaky"))]))
        .unwrap();
    assert_eq!(f.host.read_str("/dl/flaky"), "finally");
    assert_eq!(srv.hits("/flaky"), 3);

    // 404: no retry.
    let e = fail(
        f.run("WebDownload", one(vec![("source", s(&srv.url("/missing"))), ("destination", s("/dl/m"))])),
    );
    assert!(e.message.contains("404"), "{}", e.message);
    assert_eq!(srv.hits("/missing"), 1);
    assert!(!f.host.exists("/dl/m") && !f.host.exists("/dl/m.kiln-download"));
}

#[test]
fn web_download_gives_up_after_five_attempts() {
    let srv = serve(vec![("/always500", vec![(500, b"boom".to_vec())])]);
    let f = Fixture::new();
    let e = fail(
        f.run("WebDownload", one(vec![("source", s(&srv.url("/always500"))), ("destination", s("/dl/x"))])),
    );
    assert!(e.message.contains("500") && e.message.contains("after 5 attempts"), "{}", e.message);
    assert_eq!(srv.hits("/always500"), 5);
}

#[test]
fn web_download_checksum_mismatch_writes_nothing() {
    let srv = serve(vec![("/f", vec![(200, b"hello world".to_vec())])]);
    let f = Fixture::new();
    let e = fail(f.run(
        "WebDownload",
        one(vec![
            ("source", s(&srv.url("/f"))),
            ("destination", s("/dl/f")),
            ("checksum", s("0000000000000000000000000000000000000000")),
            ("algorithm", s("SHA1")),
        ]),
    ));
    assert!(e.message.contains("checksum mismatch"), "{}", e.message);
    assert!(e.message.contains("2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"), "{}", e.message);
    assert!(!f.host.exists("/dl/f") && !f.host.exists("/dl/f.kiln-download"));
    assert_eq!(srv.hits("/f"), 1, "a mismatch is not retried");
}

#[test]
fn web_download_refuses_without_network() {
    let srv = serve(vec![("/f", vec![(200, b"x".to_vec())])]);
    let f = Fixture::new().offline();
    let e = fail(f.run("WebDownload", one(vec![("source", s(&srv.url("/f"))), ("destination", s("/dl/f"))])));
    assert!(e.message.contains("this infrastructure configuration allows no network"), "{}", e.message);
    assert_eq!(srv.hits("/f"), 0);
}

#[test]
fn network_modules_refuse_without_network() {
    let f = Fixture::new().offline();
    let e = fail(f.run("S3Download", one(vec![("source", s("s3://b/k")), ("destination", s("/x"))])));
    assert!(e.message.contains("allows no network"), "{}", e.message);
    let e = fail(f.run("S3Upload", one(vec![("source", s("/x")), ("destination", s("s3://b/k"))])));
    assert!(e.message.contains("allows no network"), "{}", e.message);
}

// =============================================================================================
// S3 against moto_server on 127.0.0.1
// =============================================================================================

struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `moto_server` (PyPI package `moto[server]`) on a free loopback port, or explains
/// why it cannot. With KILN_REQUIRE_S3_TESTS=1 a missing server fails the test.
fn start_moto() -> Option<Moto> {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "S3 tests need `moto_server` on PATH (install it with: pip install 'moto[server]'); starting it failed: {e}"
            );
            if std::env::var("KILN_REQUIRE_S3_TESTS").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
    };
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(moto);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not start listening on 127.0.0.1:{port} within 30 s");
}

fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "bucket creation: {resp}");
}

#[test]
fn s3_upload_and_download_against_moto() {
    let Some(moto) = start_moto() else { return };
    create_bucket(moto.port, "kiln-test");
    let mut f = Fixture::new();
    f.env = vec![
        ("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", moto.port)),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ];
    f.host.write("/up/a.txt", b"A");
    f.host.write("/up/b.log", b"B");
    f.host.write("/up/sub/c.txt", b"C");

    // A single file to a key; files by wildcard (no recursion); a folder recursively.
    f.run(
        "S3Upload",
        seq(vec![
            map(vec![("source", s("/up/a.txt")), ("destination", s("s3://kiln-test/single/renamed.txt"))]),
            map(vec![("source", s("/up/*")), ("destination", s("s3://kiln-test/flat/"))]),
            map(vec![
                ("source", s("/up")),
                ("destination", s("s3://kiln-test/tree/")),
                ("recurse", s("true")),
            ]),
        ]),
    )
    .unwrap();
    let e = fail(f.run("S3Upload", one(vec![("source", s("/up")), ("destination", s("s3://kiln-test/x/"))])));
    assert!(e.message.contains("recurse: true"), "{}", e.message);

    // One object to a file, and to a folder.
    f.run(
        "S3Download",
        seq(vec![
            map(vec![
                ("source", s("s3://kiln-test/single/renamed.txt")),
                ("destination", s("/down/one.txt")),
            ]),
            map(vec![("source", s("s3://kiln-test/single/renamed.txt")), ("destination", s("/down/dir/"))]),
        ]),
    )
    .unwrap();
    assert_eq!(f.host.read_str("/down/one.txt"), "A");
    assert_eq!(f.host.read_str("/down/dir/renamed.txt"), "A");

    // A key prefix: every object below it, sub-paths kept.
    f.run("S3Download", one(vec![("source", s("s3://kiln-test/tree/*")), ("destination", s("/tree"))]))
        .unwrap();
    assert_eq!(f.host.read_str("/tree/a.txt"), "A");
    assert_eq!(f.host.read_str("/tree/b.log"), "B");
    assert_eq!(f.host.read_str("/tree/sub/c.txt"), "C");
    f.run("S3Download", one(vec![("source", s("s3://kiln-test/flat/*")), ("destination", s("/flat/"))]))
        .unwrap();
    assert!(f.host.exists("/flat/a.txt") && f.host.exists("/flat/b.log"));
    assert!(!f.host.exists("/flat/sub"), "the wildcard upload did not recurse");

    // overwrite: false, a missing object, an empty prefix.
    let e = fail(f.run(
        "S3Download",
        one(vec![
            ("source", s("s3://kiln-test/single/renamed.txt")),
            ("destination", s("/down/one.txt")),
            ("overwrite", s("false")),
        ]),
    ));
    assert!(e.message.contains("`overwrite` is false"), "{}", e.message);
    let e = fail(f.run(
        "S3Download",
        one(vec![("source", s("s3://kiln-test/nope.txt")), ("destination", s("/down/n"))]),
    ));
    assert!(e.message.contains("cannot download s3://kiln-test/nope.txt"), "{}", e.message);
    assert!(!f.host.exists("/down/n") && !f.host.exists("/down/n.kiln-download"));
    let e = fail(
        f.run("S3Download", one(vec![("source", s("s3://kiln-test/empty/*")), ("destination", s("/e"))])),
    );
    assert!(e.message.contains("no objects"), "{}", e.message);
}
