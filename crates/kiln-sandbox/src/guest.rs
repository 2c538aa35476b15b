//! The client side of the guest agent: a [`Host`] whose steps run inside a booted virtual
//! machine.
//!
//! kiln starts QEMU with a virtio-serial port named `org.kiln.agent.0` whose host end is a Unix
//! socket, and the guest runs this same binary with [`GUEST_AGENT_ARG`] on its end of the port.
//! Requests and responses are the sandbox agent's, one JSON line each with an id (see
//! `proto::Envelope`). Nothing here knows how the guest was started: the caller hands over the
//! socket path and a watchdog that says when the machine is gone (QEMU exited, kernel panic), so
//! a dead guest is an error within a second instead of a hang.

use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_host::{
    DirEntry, ExecOutput, ExecRequest, Host, HostError, HostErrorKind, HostResult, Metadata, WriteMode,
};

use crate::proto::{self, Envelope, Reply, Request, Response};

/// The hidden first argument that turns a binary into the guest agent; the second is the port.
pub const GUEST_AGENT_ARG: &str = "__kiln-guest-agent";

/// How often a waiting client re-sends `Ping` and checks the watchdog.
const TICK: Duration = Duration::from_millis(500);
/// Extra time a request may take beyond the step's own timeout (the agent enforces that one).
const EXEC_GRACE: Duration = Duration::from_secs(60);
/// File operations are quick; a guest that does not answer one in this time is stuck.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(300);

/// Says why the guest is gone, or `None` while it runs.
pub type Watchdog = Box<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    #[error("cannot connect to the guest agent socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the guest agent did not answer within {seconds} s")]
    NotReady { seconds: u64 },
    #[error("the guest stopped: {0}")]
    Gone(String),
    #[error("talking to the guest agent: {0}")]
    Io(#[from] io::Error),
}

/// How to reach a guest and what its steps get.
pub struct GuestOptions {
    /// The base environment of every step; an [`ExecRequest`]'s `env` is laid over it.
    pub env: Vec<(String, String)>,
    /// Whether the guest has a network device (a policy fact for the network actions).
    pub network: bool,
    /// How long to wait for the agent after a (re)boot.
    pub ready_timeout: Duration,
    pub watchdog: Watchdog,
    /// Shown by [`Host::describe`].
    pub description: String,
}

impl std::fmt::Debug for GuestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestOptions")
            .field("network", &self.network)
            .field("ready_timeout", &self.ready_timeout)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

struct Conn {
    /// QEMU's end of the port, connected to again when QEMU is started again (a cold reboot).
    socket: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// A partly read line, kept across read timeouts.
    partial: Vec<u8>,
    next_id: u64,
    boot_id: String,
}

/// A [`Host`] over the guest agent of a running VM.
pub struct GuestSession {
    conn: Mutex<Conn>,
    opts: GuestOptions,
}

impl std::fmt::Debug for GuestSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSession").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl GuestSession {
    /// Connects to the agent socket (QEMU's end of the port) and waits until the agent answers.
    pub fn connect(socket: &Path, opts: GuestOptions) -> Result<GuestSession, GuestError> {
        let deadline = Instant::now() + opts.ready_timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline && opts.watchdog.as_ref()().is_none() => {
                    if !matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) {
                        return Err(GuestError::Connect { path: socket.to_owned(), source: e });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    if let Some(why) = opts.watchdog.as_ref()() {
                        return Err(GuestError::Gone(why));
                    }
                    return Err(GuestError::Connect { path: socket.to_owned(), source: e });
                }
            }
        };
        stream.set_read_timeout(Some(TICK))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut conn = Conn {
            socket: socket.to_owned(),
            writer: stream,
            reader,
            partial: Vec::new(),
            next_id: 1,
            boot_id: String::new(),
        };
        conn.boot_id = wait_for_agent(&mut conn, &opts, deadline, None)?;
        Ok(GuestSession { conn: Mutex::new(conn), opts })
    }

    /// The boot id the agent reported last (it changes with every boot).
    pub fn boot_id(&self) -> String {
        self.lock().boot_id.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call_until(&self, req: &Request, deadline: Option<Instant>) -> HostResult<Reply> {
        let mut conn = self.lock();
        let id = conn.next_id;
        conn.next_id += 1;
        let target = |m: String| HostError::new(HostErrorKind::Target, m);
        proto::send_line(&mut conn.writer, &Envelope { id, msg: req })
            .map_err(|e| target(format!("guest agent unreachable: {e}")))?;
        loop {
            match next_message::<Response>(&mut conn, &self.opts)
                .map_err(|e| target(format!("guest agent: {e}")))?
            {
                Some(m) if m.id == id => return m.msg,
                _ => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(target(format!("the guest agent did not answer {} in time", op_name(req))));
            }
        }
    }

    fn call(&self, req: &Request) -> HostResult<Reply> {
        self.call_until(req, Some(Instant::now() + FILE_OP_TIMEOUT))
    }

    fn unit(&self, req: Request) -> HostResult<()> {
        match self.call(&req)? {
            Reply::Unit => Ok(()),
            other => Err(crate::unexpected(other)),
        }
    }
}

fn op_name(req: &Request) -> String {
    serde_json::to_value(req).ok().and_then(|v| v["op"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// The next whole message, or `None` after one tick without one (or on a line that is not a
/// message). Errors when the stream ends or the watchdog says the guest is gone.
fn next_message<T: serde::de::DeserializeOwned>(
    conn: &mut Conn,
    opts: &GuestOptions,
) -> Result<Option<Envelope<T>>, GuestError> {
    match proto::read_line(&mut conn.reader, &mut conn.partial) {
        Ok(true) => {
            let line = std::mem::take(&mut conn.partial);
            Ok(serde_json::from_slice(&line).ok())
        }
        Ok(false) => Err(GuestError::Gone(
            why_gone(opts).unwrap_or_else(|| "QEMU closed the agent channel".to_string()),
        )),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            match opts.watchdog.as_ref()() {
                Some(why) => Err(GuestError::Gone(why)),
                None => Ok(None),
            }
        }
        // A reset channel usually means QEMU died: say why when the watchdog can tell.
        Err(e) => match why_gone(opts) {
            Some(why) => Err(GuestError::Gone(why)),
            None => Err(GuestError::Io(e)),
        },
    }
}

/// The watchdog's reason, given a moment to see it: the channel can close a little before
/// QEMU's exit is visible.
fn why_gone(opts: &GuestOptions) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(why) = opts.watchdog.as_ref()() {
            return Some(why);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pings until the agent answers from a boot other than `not_boot`; returns its boot id. A
/// channel that closes while the watchdog says the machine is still there (QEMU powered it on
/// again after a reboot) is connected to again.
fn wait_for_agent(
    conn: &mut Conn,
    opts: &GuestOptions,
    deadline: Instant,
    not_boot: Option<&str>,
) -> Result<String, GuestError> {
    let first_ping = conn.next_id;
    let mut last_ping = Instant::now() - TICK;
    loop {
        if last_ping.elapsed() >= TICK {
            let id = conn.next_id;
            conn.next_id += 1;
            if proto::send_line(&mut conn.writer, &Envelope { id, msg: Request::Ping }).is_err() {
                reconnect(conn, opts, deadline)?;
                continue;
            }
            last_ping = Instant::now();
        }
        match next_message::<Response>(conn, opts) {
            Ok(Some(Envelope { id, msg: Ok(Reply::Pong { boot_id }) }))
                if id >= first_ping && not_boot != Some(boot_id.as_str()) =>
            {
                return Ok(boot_id);
            }
            Ok(_) => {}
            Err(_) => reconnect(conn, opts, deadline)?,
        }
        if Instant::now() >= deadline {
            return Err(GuestError::NotReady { seconds: opts.ready_timeout.as_secs() });
        }
    }
}

/// Connects to the agent socket again after the channel closed: an error with the watchdog's
/// reason if the machine is gone, else once QEMU (started again) listens.
fn reconnect(conn: &mut Conn, opts: &GuestOptions, deadline: Instant) -> Result<(), GuestError> {
    loop {
        if let Some(why) = opts.watchdog.as_ref()() {
            return Err(GuestError::Gone(why));
        }
        match UnixStream::connect(&conn.socket) {
            Ok(stream) => {
                stream.set_read_timeout(Some(TICK))?;
                conn.reader = BufReader::new(stream.try_clone()?);
                conn.writer = stream;
                conn.partial.clear();
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(GuestError::Connect { path: conn.socket.clone(), source: e });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl Host for GuestSession {
    fn describe(&self) -> String {
        self.opts.description.clone()
    }

    fn network_allowed(&self) -> bool {
        self.opts.network
    }

    fn exec(&self, req: &ExecRequest) -> HostResult<ExecOutput> {
        let deadline = req.timeout.map(|t| Instant::now() + t + EXEC_GRACE);
        crate::exec_output(self.call_until(&crate::exec_request(&self.opts.env, req), deadline)?)
    }

    crate::remote_file_ops!();

    /// A real reboot: the agent acknowledges, the guest restarts, and this returns once the
    /// agent answers from the new boot.
    fn reboot(&self) -> HostResult<()> {
        let old = self.boot_id();
        match self.call(&Request::Reboot)? {
            Reply::Unit => {}
            other => return Err(crate::unexpected(other)),
        }
        let mut conn = self.lock();
        let deadline = Instant::now() + self.opts.ready_timeout;
        let boot = wait_for_agent(&mut conn, &self.opts, deadline, Some(&old))
            .map_err(|e| HostError::new(HostErrorKind::Target, format!("after the reboot: {e}")))?;
        conn.boot_id = boot;
        Ok(())
    }
}
