//! The wire protocol between a [`Session`](crate::Session) and its agent.
//!
//! Every message is one frame: a 4-byte big-endian length followed by that many bytes of JSON.
//! Byte payloads (file contents, stdin, stdout, stderr) travel as base64 strings so a frame stays
//! plain JSON. The protocol is strictly request/response: the session sends one [`Request`] and
//! reads exactly one [`Response`] before it sends the next (the session's mutex guarantees it).
//!
//! Start-up uses the same framing: the session first sends an [`Init`], the helper or agent
//! answers with one [`Ready`] frame (`Ok` once the root is mounted and pivoted into, `Err` with
//! the reason otherwise).

use std::io::{self, Read, Write};

use kiln_host::{DirEntry, ExitStatus, HostError, Metadata, WriteMode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Network, RootSpec};

/// Frames larger than this are refused (a step's captured output included).
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// Start-up parameters, the first frame on a fresh socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Init {
    pub root: RootSpec,
    pub network: Network,
    pub hostname: String,
}

/// The answer to [`Init`]: `Ok(())` once the agent serves requests.
pub(crate) type Ready = Result<(), String>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Exec {
        argv: Vec<String>,
        /// Full environment of the process (base environment already merged).
        env: Vec<(String, String)>,
        cwd: Option<String>,
        #[serde(with = "b64opt")]
        stdin: Option<Vec<u8>>,
        timeout_ms: Option<u64>,
    },
    ReadFile {
        path: String,
    },
    WriteFile {
        path: String,
        #[serde(with = "b64")]
        data: Vec<u8>,
        how: WriteMode,
        mode: Option<u32>,
    },
    CreateDirAll {
        path: String,
        mode: Option<u32>,
    },
    Metadata {
        path: String,
    },
    ListDir {
        path: String,
    },
    RemoveFile {
        path: String,
    },
    RemoveDir {
        path: String,
        recursive: bool,
    },
    Rename {
        from: String,
        to: String,
    },
    CopyFile {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        link: String,
    },
    ReadLink {
        path: String,
    },
    SetPermissions {
        path: String,
        mode: u32,
    },
    SetOwner {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// End the session: the agent answers `Unit` and exits (a guest agent keeps serving).
    Shutdown,
    /// Guest agent only: answer [`Reply::Pong`] with the guest's boot id.
    Ping,
    /// Guest agent only: answer `Unit`, then reboot the guest.
    Reboot,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    Unit,
    Bytes(#[serde(with = "b64")] Vec<u8>),
    Exec {
        status: ExitStatus,
        #[serde(with = "b64")]
        stdout: Vec<u8>,
        #[serde(with = "b64")]
        stderr: Vec<u8>,
        duration_us: u64,
    },
    Metadata(Metadata),
    Entries(Vec<DirEntry>),
    Link(String),
    Pong {
        boot_id: String,
    },
}

/// A message on a guest agent's port: one JSON line. The id pairs a response with its request,
/// so answers to requests sent before a reboot or a reconnection are recognised and skipped.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub id: u64,
    pub msg: T,
}

/// Write one message as a JSON line (serde_json never writes a raw newline inside a value).
pub(crate) fn send_line<T: Serialize, W: Write>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    body.push(b'\n');
    w.write_all(&body)?;
    w.flush()
}

/// Append the next line (without its newline) to `buf`: `Ok(false)` at end of stream.
/// A line longer than [`MAX_FRAME`] is an error. Bytes read before a timeout stay in `buf`, so
/// calling again after `WouldBlock`/`TimedOut` continues the same line.
pub(crate) fn read_line<R: io::BufRead>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let (done, used) = {
            let avail = match r.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(false);
            }
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    buf.extend_from_slice(&avail[..i]);
                    (true, i + 1)
                }
                None => {
                    buf.extend_from_slice(avail);
                    (false, avail.len())
                }
            }
        };
        r.consume(used);
        if buf.len() > MAX_FRAME {
            buf.clear();
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line exceeds the frame limit"));
        }
        if done {
            return Ok(true);
        }
    }
}

pub(crate) type Response = Result<Reply, HostError>;

/// Write one frame.
pub(crate) fn send<T: Serialize, W: Write>(w: &mut W, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {} bytes exceeds the {MAX_FRAME}-byte limit", body.len()),
        ));
    }
    let len = u32::try_from(body.len()).expect("MAX_FRAME fits in u32");
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()
}

/// Read one frame. A clean end of stream before the length prefix is `UnexpectedEof`.
pub(crate) fn recv<T: DeserializeOwned, R: Read>(r: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

mod b64 {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64opt {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&STANDARD.encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_resync_after_garbage() {
        let mut wire = b"{\"id\":1,\"ms".to_vec(); // a line cut by a reboot
        wire.push(b'\n');
        send_line(&mut wire, &Envelope { id: 7, msg: Request::Ping }).unwrap();
        let mut r = io::BufReader::new(&wire[..]);
        let mut line = Vec::new();
        assert!(read_line(&mut r, &mut line).unwrap());
        assert!(serde_json::from_slice::<Envelope<Request>>(&line).is_err());
        line.clear();
        assert!(read_line(&mut r, &mut line).unwrap());
        let e: Envelope<Request> = serde_json::from_slice(&line).unwrap();
        assert_eq!(e.id, 7);
        assert!(matches!(e.msg, Request::Ping));
        line.clear();
        assert!(!read_line(&mut r, &mut line).unwrap());
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = Request::WriteFile {
            path: "/etc/x".into(),
            data: vec![0, 1, 2, 255],
            how: WriteMode::Append,
            mode: Some(0o600),
        };
        send(&mut buf, &req).unwrap();
        assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize, buf.len() - 4);
        let json: serde_json::Value = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(json["op"], "write_file");
        assert_eq!(json["data"], "AAEC/w==");
        match recv::<Request, _>(&mut &buf[..]).unwrap() {
            Request::WriteFile { data, mode, .. } => {
                assert_eq!(data, vec![0, 1, 2, 255]);
                assert_eq!(mode, Some(0o600));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_length_is_refused() {
        let buf = (u32::MAX).to_be_bytes();
        let err = recv::<Request, _>(&mut &buf[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
