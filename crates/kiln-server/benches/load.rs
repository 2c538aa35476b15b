//! Load benchmark of `kiln serve` (issue 8), JSON on stdout.
//!
//! A separate load generator: it starts the real `kiln` binary (`--kiln PATH`, default the
//! `kiln` beside this benchmark in the release target directory) with a temporary KILN_HOME,
//! creates a user with `kiln admin create-user --json`, seeds components, recipes and
//! configurations through the API, then:
//!   get/list  `--clients` closed-loop clients on keep-alive connections, each request signed
//!             with kiln-api's SigV4 signer, cycling through Get*/List* calls; `--warmup`
//!             seconds, then `--seconds` measured: throughput, latency percentiles, statuses.
//!             Target: at least 3,000 requests/s with p99 under 50 ms.
//!   bad       the same clients sending malformed JSON, non-object JSON, oversized bodies,
//!             unknown operations, bad signatures, wrong secrets, expired dates, unknown keys
//!             and unsigned requests, `--bad-seconds` per round, two rounds. Every answer must
//!             be AWS-shaped (4xx/5xx, `x-amzn-ErrorType`, a JSON `message`), nothing may hang
//!             (10 s per request), the server must stay up, and its RSS (sampled from
//!             /proc/PID/status) must not grow in the second round.
//! The generator and the server share the machine's cores; the CPU each used is reported.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Uri};
use kiln_api::sigv4::{SigningParams, sign};
use serde_json::{Value, json};

const ACCOUNT: &str = "123456789012";
const ADMIN_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"imagebuilder:*","Resource":"*"}]}"#;
const DOC: &str = "name: hello\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Write\n        action: CreateFile\n        inputs:\n          - path: /etc/hello\n            content: hi\n";
const TARGET_RPS: f64 = 3000.0;
const TARGET_P99_MS: f64 = 50.0;
/// A request that takes longer than this counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_LIMIT: usize = 1024 * 1024;

struct Options {
    kiln: PathBuf,
    clients: usize,
    warmup: u64,
    seconds: u64,
    bad_seconds: u64,
    threads: usize,
}

impl Options {
    fn from_args() -> Options {
        let mut o = Options {
            kiln: default_kiln(),
            clients: 64,
            warmup: 3,
            seconds: 20,
            bad_seconds: 10,
            threads: 2,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--kiln" => o.kiln = value().into(),
                "--clients" => o.clients = value().parse().expect("--clients N"),
                "--warmup" => o.warmup = value().parse().expect("--warmup SECONDS"),
                "--seconds" => o.seconds = value().parse().expect("--seconds SECONDS"),
                "--bad-seconds" => o.bad_seconds = value().parse().expect("--bad-seconds SECONDS"),
                "--threads" => o.threads = value().parse().expect("--threads N"),
                // `cargo bench` passes --bench.
                _ => {}
            }
        }
        o
    }
}

/// `TARGET/release/kiln`: this benchmark runs from `TARGET/release/deps`.
fn default_kiln() -> PathBuf {
    let exe = std::env::current_exe().expect("the benchmark's path");
    exe.parent().and_then(|deps| deps.parent()).expect("TARGET/release").join("kiln")
}

fn main() {
    let options = Options::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run(&options));
    println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
}

// ---- the server process ----------------------------------------------------------------

struct ServerProcess {
    child: Child,
    addr: String,
    // Kept open: the server's stdout must not become a broken pipe.
    _stdout: BufReader<ChildStdout>,
    stderr_path: PathBuf,
}

impl ServerProcess {
    fn start(kiln: &std::path::Path, home: &std::path::Path) -> ServerProcess {
        let stderr_path = home.join("serve.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("server log file");
        let mut child = Command::new(kiln)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("KILN_HOME", home)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", kiln.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line from kiln serve: {line:?}"))
            .to_owned();
        ServerProcess { child, addr, _stdout: stdout, stderr_path }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 10 s.
    fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
    }
}

fn create_user(kiln: &std::path::Path, home: &std::path::Path) -> Key {
    let policy = home.join("admin.json");
    std::fs::write(&policy, ADMIN_POLICY).expect("policy file");
    let out = Command::new(kiln)
        .args(["admin", "create-user", "loadbench", "--account", ACCOUNT, "--json", "--policy"])
        .arg(&policy)
        .env("KILN_HOME", home)
        .output()
        .expect("kiln admin create-user");
    assert!(out.status.success(), "create-user: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("create-user --json");
    Key {
        id: v["accessKeyId"].as_str().expect("accessKeyId").to_owned(),
        secret: v["secretAccessKey"].as_str().expect("secretAccessKey").to_owned(),
    }
}

// ---- /proc -----------------------------------------------------------------------------

/// User + system CPU seconds of process `pid` (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15 of stat(5); the rest starts at field 3.
    (ticks(11) + ticks(12)) as f64 / hz
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ---- requests --------------------------------------------------------------------------

#[derive(Clone)]
struct Key {
    id: String,
    secret: String,
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    base: String,
    host: HeaderValue,
    key: Key,
}

/// The headers of `method path` with `body`, signed by `key_id`/`secret` at `time`.
fn signed(
    target: &Target,
    method: &Method,
    path: &str,
    body: &[u8],
    key_id: &str,
    secret: &str,
    time: chrono::DateTime<chrono::Utc>,
) -> HeaderMap {
    let uri: Uri = path.parse().expect("path");
    let mut headers = HeaderMap::new();
    headers.insert("host", target.host.clone());
    if !body.is_empty() {
        headers.insert("content-type", HeaderValue::from_static("application/json"));
    }
    let params = SigningParams {
        access_key_id: key_id,
        secret_access_key: secret,
        region: "local",
        service: "imagebuilder",
        time,
    };
    sign(method, &uri, &mut headers, body, &params).expect("signing");
    headers
}

struct Answer {
    status: u16,
    error_type: Option<String>,
    body: Vec<u8>,
}

async fn send(
    target: &Target,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: reqwest::Body,
) -> Result<Answer, reqwest::Error> {
    let response = target
        .client
        .request(method, format!("{}{path}", target.base))
        .headers(headers)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let error_type =
        response.headers().get("x-amzn-errortype").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.bytes().await?.to_vec();
    Ok(Answer { status, error_type, body })
}

async fn call(target: &Target, method: &str, path: &str, body: Value) -> Value {
    let method: Method = method.parse().expect("method");
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let headers = signed(
        target,
        &method,
        path,
        text.as_bytes(),
        &target.key.id,
        &target.key.secret,
        chrono::Utc::now(),
    );
    let answer = send(target, method.clone(), path, headers, text.into()).await.expect("seeding request");
    let out: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    assert_eq!(answer.status, 200, "{method} {path}: {out}");
    out
}

fn enc(arn: &str) -> String {
    arn.replace(':', "%3A").replace('/', "%2F")
}

/// One request of the Get/List mix.
struct MixRequest {
    operation: &'static str,
    method: Method,
    path: String,
    body: &'static str,
}

/// Seeds resources; returns the Get/List mix over them.
async fn seed(target: &Target) -> (Value, Vec<MixRequest>) {
    const COMPONENTS: usize = 10;
    const OTHERS: usize = 5;
    let mut components = Vec::new();
    for i in 0..COMPONENTS {
        let out = call(
            target,
            "PUT",
            "/CreateComponent",
            json!({"name": format!("load-{i}"), "semanticVersion": "1.0.0", "platform": "Linux", "data": DOC,
                   "tags": {"bench": "load"}, "clientToken": format!("c-{i}")}),
        )
        .await;
        components.push(out["componentBuildVersionArn"].as_str().expect("component ARN").to_owned());
    }
    let (mut recipes, mut infras, mut dists) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..OTHERS {
        let out = call(
            target,
            "PUT",
            "/CreateImageRecipe",
            json!({"name": format!("load-{i}"), "semanticVersion": "1.0.0", "parentImage": "debian-12-x86",
                   "components": [{"componentArn": components[i]}, {"componentArn": components[i + OTHERS]}],
                   "clientToken": format!("r-{i}")}),
        )
        .await;
        recipes.push(out["imageRecipeArn"].as_str().expect("recipe ARN").to_owned());
        let out = call(
            target,
            "PUT",
            "/CreateInfrastructureConfiguration",
            json!({"name": format!("load-{i}"), "instanceProfileName": "none", "clientToken": format!("i-{i}")}),
        )
        .await;
        infras.push(out["infrastructureConfigurationArn"].as_str().expect("infrastructure ARN").to_owned());
        let out = call(
            target,
            "PUT",
            "/CreateDistributionConfiguration",
            json!({"name": format!("load-{i}"), "distributions": [{"region": "local"}], "clientToken": format!("d-{i}")}),
        )
        .await;
        dists.push(out["distributionConfigurationArn"].as_str().expect("distribution ARN").to_owned());
    }
    let get = |operation: &'static str, member: &str, arn: &str| MixRequest {
        operation,
        method: Method::GET,
        path: format!("/{operation}?{member}={}", enc(arn)),
        body: "",
    };
    let list = |operation: &'static str| MixRequest {
        operation,
        method: Method::POST,
        path: format!("/{operation}"),
        body: "{}",
    };
    // Half Gets, half Lists; every resource is read.
    let mut mix = Vec::new();
    for i in 0..OTHERS {
        mix.push(get("GetComponent", "componentBuildVersionArn", &components[i]));
        mix.push(list("ListComponents"));
        mix.push(get("GetImageRecipe", "imageRecipeArn", &recipes[i]));
        mix.push(list("ListImageRecipes"));
        mix.push(get("GetInfrastructureConfiguration", "infrastructureConfigurationArn", &infras[i]));
        mix.push(list("ListInfrastructureConfigurations"));
        mix.push(get("GetDistributionConfiguration", "distributionConfigurationArn", &dists[i]));
        mix.push(list("ListDistributionConfigurations"));
        mix.push(get("GetComponent", "componentBuildVersionArn", &components[i + OTHERS]));
        mix.push(list("ListImages"));
        mix.push(MixRequest {
            operation: "ListTagsForResource",
            method: Method::GET,
            path: format!("/tags/{}", enc(&components[i])),
            body: "",
        });
    }
    let seeded = json!({
        "components": COMPONENTS,
        "imageRecipes": OTHERS,
        "infrastructureConfigurations": OTHERS,
        "distributionConfigurations": OTHERS,
        "images": 0,
    });
    (seeded, mix)
}

// ---- statistics ------------------------------------------------------------------------

fn percentiles(mut micros: Vec<u32>) -> Value {
    if micros.is_empty() {
        return Value::Null;
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        f64::from(micros[i]) / 1000.0
    };
    let mean = micros.iter().map(|&m| f64::from(m)).sum::<f64>() / micros.len() as f64 / 1000.0;
    json!({
        "p50": round(at(0.50)),
        "p90": round(at(0.90)),
        "p99": round(at(0.99)),
        "p999": round(at(0.999)),
        "max": round(f64::from(*micros.last().unwrap_or(&0)) / 1000.0),
        "mean": round(mean),
    })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---- the Get/List phase ----------------------------------------------------------------

#[derive(Default)]
struct ClientTally {
    /// (mix index, microseconds) of the requests in the measured window.
    samples: Vec<(u16, u32)>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: BTreeMap<String, u64>,
}

async fn get_list_phase(target: &Target, mix: Arc<Vec<MixRequest>>, options: &Options, pid: u32) -> Value {
    let start = Instant::now() + Duration::from_secs(options.warmup);
    let end = start + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    for n in 0..options.clients {
        let target = target.clone();
        let mix = mix.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = ClientTally::default();
            // Clients start at different places in the mix so that operations interleave.
            let mut i = n * 7;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let index = i % mix.len();
                i += 1;
                let r = &mix[index];
                let headers = signed(
                    &target,
                    &r.method,
                    &r.path,
                    r.body.as_bytes(),
                    &target.key.id,
                    &target.key.secret,
                    chrono::Utc::now(),
                );
                let result = send(&target, r.method.clone(), &r.path, headers, r.body.into()).await;
                let t1 = Instant::now();
                if t0 < start || t1 > end {
                    continue;
                }
                tally.samples.push((index as u16, (t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32));
                match result {
                    Ok(a) => *tally.statuses.entry(a.status).or_default() += 1,
                    Err(e) => *tally.transport_errors.entry(transport_kind(&e)).or_default() += 1,
                }
            }
            tally
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let (server0, gen0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    tokio::time::sleep_until(end.into()).await;
    let (server1, gen1) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let mut all = ClientTally::default();
    for t in tasks {
        let t = t.await.expect("client task");
        all.samples.extend(t.samples);
        for (k, v) in t.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        for (k, v) in t.transport_errors {
            *all.transport_errors.entry(k).or_default() += v;
        }
    }
    let seconds = options.seconds as f64;
    let requests = all.samples.len();
    let rps = requests as f64 / seconds;
    let mut by_operation: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for &(index, micros) in &all.samples {
        by_operation.entry(mix[index as usize].operation).or_default().push(micros);
    }
    let latency = percentiles(all.samples.iter().map(|&(_, m)| m).collect());
    let p99 = latency["p99"].as_f64().unwrap_or(f64::INFINITY);
    let ok = all.statuses.get(&200).copied().unwrap_or(0);
    json!({
        "requests": requests,
        "seconds": seconds,
        "requestsPerSecond": round(rps),
        "latencyMs": latency,
        "statuses": all.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "transportErrors": all.transport_errors,
        "byOperation": by_operation.into_iter().map(|(op, micros)| {
            let n = micros.len();
            let l = percentiles(micros);
            (op.to_owned(), json!({"requests": n, "p50Ms": l["p50"], "p99Ms": l["p99"]}))
        }).collect::<serde_json::Map<_, _>>(),
        "cpuCores": {
            "server": round((server1 - server0) / seconds),
            "generator": round((gen1 - gen0) / seconds),
        },
        "meetsTargets": rps >= TARGET_RPS && p99 < TARGET_P99_MS && ok == requests as u64,
    })
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        // The innermost cause names what happened (reset, closed before the response...).
        let mut source: &dyn std::error::Error = e;
        while let Some(s) = source.source() {
            source = s;
        }
        let text = source.to_string();
        text.chars().take(80).collect()
    }
}

// ---- the bad-request phase -------------------------------------------------------------

const BAD_KINDS: [&str; 10] = [
    "malformedJson",
    "nonObjectJson",
    "oversizedBody",
    "unknownOperation",
    "badSignature",
    "wrongSecret",
    "expiredDate",
    "unknownAccessKey",
    "unsigned",
    "malformedAuthorization",
];

/// The request of bad kind `kind`: (method, path, headers, body).
fn bad_request(
    target: &Target,
    kind: &str,
    oversized: &'static [u8],
) -> (Method, String, HeaderMap, reqwest::Body) {
    let now = chrono::Utc::now();
    let (id, secret) = (target.key.id.as_str(), target.key.secret.as_str());
    let sign_as = |method: &Method, path: &str, body: &[u8], id: &str, secret: &str, time| {
        signed(target, method, path, body, id, secret, time)
    };
    match kind {
        "malformedJson" => {
            let body = r#"{"name": "load-x", "semanticVersion": "1.0.0", "data": "#;
            let h = sign_as(&Method::PUT, "/CreateComponent", body.as_bytes(), id, secret, now);
            (Method::PUT, "/CreateComponent".into(), h, body.into())
        }
        "nonObjectJson" => {
            let body = r#"["ListComponents", 1, 2, 3]"#;
            let h = sign_as(&Method::POST, "/ListComponents", body.as_bytes(), id, secret, now);
            (Method::POST, "/ListComponents".into(), h, body.into())
        }
        "oversizedBody" => {
            // Declared and sent: the limit is checked on Content-Length before reading.
            let h = sign_as(&Method::PUT, "/CreateComponent", b"", id, secret, now);
            (Method::PUT, "/CreateComponent".into(), h, oversized.into())
        }
        "unknownOperation" => {
            let h = sign_as(&Method::POST, "/ListWidgets", b"{}", id, secret, now);
            (Method::POST, "/ListWidgets".into(), h, "{}".into())
        }
        "badSignature" => {
            let mut h = sign_as(&Method::POST, "/ListComponents", b"{}", id, secret, now);
            let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            // The last hex digit changed.
            let flipped = match auth.chars().last() {
                Some('0') => format!("{}1", &auth[..auth.len() - 1]),
                _ => format!("{}0", &auth[..auth.len() - 1]),
            };
            h.insert("authorization", HeaderValue::from_str(&flipped).expect("header"));
            (Method::POST, "/ListComponents".into(), h, "{}".into())
        }
        "wrongSecret" => {
            let h = sign_as(
                &Method::POST,
                "/ListComponents",
                b"{}",
                id,
                "not-the-secret-key-0000000000000000000000",
                now,
            );
            (Method::POST, "/ListComponents".into(), h, "{}".into())
        }
        "expiredDate" => {
            let h = sign_as(
                &Method::POST,
                "/ListComponents",
                b"{}",
                id,
                secret,
                now - chrono::TimeDelta::minutes(20),
            );
            (Method::POST, "/ListComponents".into(), h, "{}".into())
        }
        "unknownAccessKey" => {
            let h = sign_as(&Method::POST, "/ListComponents", b"{}", "AKIAUNKNOWNKEY000000", secret, now);
            (Method::POST, "/ListComponents".into(), h, "{}".into())
        }
        "unsigned" => {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            (Method::POST, "/ListComponents".into(), h, "{}".into())
        }
        _ => {
            let mut h = HeaderMap::new();
            h.insert("x-amz-date", HeaderValue::from_static("20240101T000000Z"));
            h.insert(
                "authorization",
                HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=garbage, Signature=zz"),
            );
            (Method::POST, "/ListComponents".into(), h, "{}".into())
        }
    }
}

#[derive(Default)]
struct KindTally {
    requests: u64,
    aws_shaped: u64,
    not_shaped: u64,
    codes: BTreeMap<String, u64>,
    transport_errors: BTreeMap<String, u64>,
}

/// Whether an answer is an AWS error: 4xx/5xx, `x-amzn-ErrorType`, a JSON `message`.
fn aws_shaped(a: &Answer) -> bool {
    let message = serde_json::from_slice::<Value>(&a.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(|m| !m.is_empty()));
    a.status >= 400 && a.error_type.as_deref().is_some_and(|t| !t.is_empty()) && message == Some(true)
}

async fn bad_round(target: &Target, options: &Options, pid: u32, oversized: &'static [u8]) -> Value {
    let end = Instant::now() + Duration::from_secs(options.bad_seconds);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while sampling.load(Ordering::Relaxed) {
                max = max.max(rss_kib(pid).0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };
    let (server0, gen0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let mut tasks = Vec::new();
    for n in 0..options.clients {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally: BTreeMap<&'static str, KindTally> = BTreeMap::new();
            let mut latencies = Vec::new();
            let mut i = n;
            while Instant::now() < end {
                let kind = BAD_KINDS[i % BAD_KINDS.len()];
                i += 1;
                let (method, path, headers, body) = bad_request(&target, kind, oversized);
                let t0 = Instant::now();
                let result = send(&target, method, &path, headers, body).await;
                latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                let k = tally.entry(kind).or_default();
                k.requests += 1;
                match result {
                    Ok(a) => {
                        if aws_shaped(&a) {
                            k.aws_shaped += 1;
                        } else {
                            k.not_shaped += 1;
                        }
                        let code = format!("{} {}", a.status, a.error_type.as_deref().unwrap_or("-"));
                        *k.codes.entry(code).or_default() += 1;
                    }
                    Err(e) => *k.transport_errors.entry(transport_kind(&e)).or_default() += 1,
                }
            }
            (tally, latencies)
        }));
    }
    let mut kinds: BTreeMap<&'static str, KindTally> = BTreeMap::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (tally, l) = t.await.expect("client task");
        latencies.extend(l);
        for (kind, t) in tally {
            let k = kinds.entry(kind).or_default();
            k.requests += t.requests;
            k.aws_shaped += t.aws_shaped;
            k.not_shaped += t.not_shaped;
            for (c, n) in t.codes {
                *k.codes.entry(c).or_default() += n;
            }
            for (c, n) in t.transport_errors {
                *k.transport_errors.entry(c).or_default() += n;
            }
        }
    }
    let (server1, gen1) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    sampling.store(false, Ordering::Relaxed);
    let max_rss = sampler.await.unwrap_or(0);
    let seconds = options.bad_seconds as f64;
    let requests: u64 = kinds.values().map(|k| k.requests).sum();
    let shaped: u64 = kinds.values().map(|k| k.aws_shaped).sum();
    let not_shaped: u64 = kinds.values().map(|k| k.not_shaped).sum();
    let transport: u64 = kinds.values().flat_map(|k| k.transport_errors.values()).sum();
    let timeouts: u64 = kinds.values().filter_map(|k| k.transport_errors.get("timeout")).sum();
    json!({
        "requests": requests,
        "requestsPerSecond": round(requests as f64 / seconds),
        "awsShaped": shaped,
        "notShaped": not_shaped,
        "transportErrors": transport,
        "hangs": timeouts,
        "latencyMs": percentiles(latencies),
        "cpuCores": {
            "server": round((server1 - server0) / seconds),
            "generator": round((gen1 - gen0) / seconds),
        },
        "maxRssKiB": max_rss,
        "kinds": kinds.into_iter().map(|(kind, k)| (kind.to_owned(), json!({
            "requests": k.requests,
            "awsShaped": k.aws_shaped,
            "notShaped": k.not_shaped,
            "answers": k.codes,
            "transportErrors": k.transport_errors,
        }))).collect::<serde_json::Map<_, _>>(),
    })
}

// ---- the run ---------------------------------------------------------------------------

async fn run(options: &Options) -> Value {
    assert!(
        options.kiln.is_file(),
        "{} not found: build it with cargo build --release -p kiln-cli",
        options.kiln.display()
    );
    let home = tempfile::tempdir().expect("temporary KILN_HOME");
    let key = create_user(&options.kiln, home.path());
    let mut server = ServerProcess::start(&options.kiln, home.path());
    let pid = server.pid();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client");
    let target = Target {
        client,
        base: format!("http://{}", server.addr),
        host: HeaderValue::from_str(&server.addr).expect("host"),
        key,
    };
    let (seeded, mix) = seed(&target).await;
    let operations: Vec<&str> = {
        let mut ops: Vec<&str> = mix.iter().map(|r| r.operation).collect();
        ops.sort_unstable();
        ops.dedup();
        ops
    };
    let rss_start = rss_kib(pid).0;
    let get_list = get_list_phase(&target, Arc::new(mix), options, pid).await;
    let rss_after_get_list = rss_kib(pid).0;

    let oversized: &'static [u8] = Box::leak(vec![b' '; BODY_LIMIT + 1].into_boxed_slice());
    let round1 = bad_round(&target, options, pid, oversized).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_round1 = rss_kib(pid).0;
    let round2 = bad_round(&target, options, pid, oversized).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after_round2, rss_peak) = rss_kib(pid);

    // Still up and still answering.
    let alive = server.alive();
    let answers = {
        let headers = signed(
            &target,
            &Method::POST,
            "/ListComponents",
            b"{}",
            &target.key.id,
            &target.key.secret,
            chrono::Utc::now(),
        );
        matches!(send(&target, Method::POST, "/ListComponents", headers, "{}".into()).await, Ok(a) if a.status == 200)
    };
    let exit = server.stop();
    let mut stderr = String::new();
    let _ = std::fs::File::open(&server.stderr_path).and_then(|mut f| f.read_to_string(&mut stderr));
    let growth = rss_after_round2 as i64 - rss_after_round1 as i64;
    let all_shaped = [&round1, &round2].iter().all(|r| r["notShaped"] == 0 && r["hangs"] == 0);
    json!({
        "bench": "api",
        "machine": {"cpus": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "setup": {
            "server": "kiln serve (release), default logging (warn), no audit sink",
            "generator": "this process: tokio + reqwest (HTTP/1.1 keep-alive), every request SigV4-signed; closed loop",
            "sharedCores": "the generator and the server share the machine's cores",
            "clients": options.clients,
            "generatorThreads": options.threads,
            "warmupSeconds": options.warmup,
            "seeded": seeded,
            "operations": operations,
        },
        "targets": {"requestsPerSecond": TARGET_RPS, "p99Ms": TARGET_P99_MS},
        "getList": get_list,
        "bad": {
            "secondsPerRound": options.bad_seconds,
            "rounds": [round1, round2],
            "allAwsShapedNoHang": all_shaped,
            "serverAliveAfter": alive,
            "serverAnswersAfter": answers,
            "serverExitCode": exit,
            "serverStderrLines": stderr.lines().count(),
            "rssKiB": {
                "afterSeeding": rss_start,
                "afterGetList": rss_after_get_list,
                "afterRound1": rss_after_round1,
                "afterRound2": rss_after_round2,
                "growthInRound2": growth,
                "peak": rss_peak,
            },
        },
    })
}
