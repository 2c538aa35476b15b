//! WebDownload: HTTP/HTTPS downloads into the image.
//!
//! AWSTOE's behaviour as documented: up to 5 attempts per download with exponential backoff
//! (separate from the step's `maxAttempts`), redirects followed, every final status other than
//! 200 an error, `destination` ending with `/` names a folder (the file keeps the URL's last
//! path segment), missing folders are created, `overwrite` defaults to true, and with
//! `overwrite` plus `checksum`/`algorithm` an existing file whose hash already matches is not
//! downloaded again. Verification needs both `checksum` and `algorithm` (MD5, SHA1, SHA256,
//! SHA512); with only one of them nothing is verified, as AWSTOE documents. Bodies are taken as
//! sent (no content decoding, so a checksum of a `.gz` is the checksum of the `.gz`).
//!
//! The body streams into `DEST.kiln-download` in the image, is hashed on the way, and is
//! renamed over `DEST` only after it verified; a failed attempt leaves no partial file.
//! Attempts are retried after connection errors and 408/429/5xx statuses; other 4xx statuses
//! and checksum mismatches fail at once (another attempt would get the same answer).

use std::io::Read;
use std::time::Duration;

use kiln_host::{FileKind, WriteMode};
use sha2::Digest;

use super::util::{
    Checker, Field, Item, Ty, has_expr, host_fail, items, join, kind_of, names_folder, opt, parent, req,
    resolve,
};
use super::{ActionContext, ActionFailure, ActionModule, ActionOutcome};
use crate::diag::{Diagnostic, suggest};
use crate::node::{Node, Span};

/// Attempts per download, as AWSTOE documents.
pub const DOWNLOAD_ATTEMPTS: u32 = 5;
/// The first pause between attempts; it doubles after each failed attempt (0.5, 1, 2, 4 s).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The checksum algorithms AWSTOE documents for WebDownload.
pub const ALGORITHMS: &[&str] = &["MD5", "SHA1", "SHA256", "SHA512"];

/// The message every network module gives when the network is off.
pub(crate) fn no_network(module: &str, what: &str) -> ActionFailure {
    ActionFailure::msg(format!(
        "{module}: this infrastructure configuration allows no network; cannot {what}. \
         Allow network access for the build, or put the file into the image another way (e.g. a recipe file or a local path)"
    ))
}

/// An incremental hash for checksum verification.
pub(crate) enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: &str) -> Option<Hasher> {
        Some(match algorithm.trim().to_ascii_uppercase().replace('-', "").as_str() {
            "MD5" => Hasher::Md5(md5::Md5::new()),
            "SHA1" => Hasher::Sha1(sha1::Sha1::new()),
            "SHA256" => Hasher::Sha256(sha2::Sha256::new()),
            "SHA512" => Hasher::Sha512(sha2::Sha512::new()),
            _ => return None,
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Lower-case hex digest.
    pub fn finish(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }

    /// The hex digest of `data` with `algorithm`.
    pub fn digest(algorithm: &str, data: &[u8]) -> Option<String> {
        let mut h = Hasher::new(algorithm)?;
        h.update(data);
        Some(h.finish())
    }
}

#[derive(Debug)]
pub struct WebDownload;

const FIELDS: &[Field] = &[
    req("source", Ty::Str),
    req("destination", Ty::Str),
    opt("overwrite", Ty::Bool),
    opt("checksum", Ty::Str),
    opt("algorithm", Ty::Str),
    opt("ignoreCertificateErrors", Ty::Bool),
];

/// Why one attempt failed, and whether another attempt may help.
struct AttemptError {
    message: String,
    retry: bool,
}

impl WebDownload {
    fn target_path(
        ctx: &ActionContext<'_>,
        item: &Item<'_>,
        url: &reqwest::Url,
        dest_raw: &str,
    ) -> Result<String, ActionFailure> {
        if !names_folder(dest_raw) {
            return Ok(resolve(ctx, dest_raw));
        }
        let name =
            url.path_segments().and_then(|mut s| s.next_back().map(str::to_string)).unwrap_or_default();
        if name.is_empty() {
            return Err(item.fail(format!(
                "`destination` {dest_raw} is a folder but the URL {url} names no file; give a file path as destination"
            )));
        }
        let name = percent_decode(&name);
        if name == ".." || name == "." || name.contains('/') {
            return Err(item.fail(format!(
                "the URL {url} ends in `{name}`, which is not a file name; give a file path as destination"
            )));
        }
        Ok(join(&resolve(ctx, dest_raw), &name))
    }

    fn attempt(
        ctx: &ActionContext<'_>,
        client: &reqwest::blocking::Client,
        url: &reqwest::Url,
        part: &str,
        algorithm: Option<&str>,
    ) -> Result<Option<String>, AttemptError> {
        let mut resp = client.get(url.clone()).send().map_err(|e| AttemptError {
            message: format!("request failed: {}", error_chain(&e)),
            retry: true,
        })?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let code = status.as_u16();
            return Err(AttemptError {
                message: format!("the server answered {status}; only 200 is accepted"),
                retry: code == 408 || code == 429 || code >= 500,
            });
        }
        let mut hasher = algorithm.and_then(Hasher::new);
        let mut buf = vec![0u8; 1 << 20];
        let mut first = true;
        loop {
            let n = resp.read(&mut buf).map_err(|e| AttemptError {
                message: format!("reading the body failed: {e}"),
                retry: true,
            })?;
            if n == 0 && !first {
                break;
            }
            let how = if first { WriteMode::Truncate } else { WriteMode::Append };
            ctx.host.write_file(part, &buf[..n], how, None).map_err(|e| AttemptError {
                message: format!("cannot write {part} in the image: {e}"),
                retry: false,
            })?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            first = false;
            if n == 0 {
                break;
            }
        }
        Ok(hasher.map(Hasher::finish))
    }
}

impl ActionModule for WebDownload {
    fn name(&self) -> &'static str {
        "WebDownload"
    }

    fn output_names(&self) -> &'static [&'static str] {
        &["destination"]
    }

    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        let mut c = Checker { file, module: self.name(), diags };
        for item in c.list_of_items(step_span, inputs, FIELDS) {
            if let Some(alg) = item.get("algorithm").filter(|n| n.as_str().is_some_and(|s| !has_expr(s))) {
                let text = alg.as_str().unwrap_or_default();
                if Hasher::new(text).is_none() {
                    let hint = match suggest(text, ALGORITHMS.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("use one of {}", ALGORITHMS.join(", ")),
                    };
                    c.err(alg.span, format!("WebDownload: unknown checksum algorithm `{text}`"), Some(hint));
                }
            }
            if let Some(src) = item.get("source").and_then(Node::as_str).filter(|s| !has_expr(s)) {
                let lower = src.to_ascii_lowercase();
                if !lower.starts_with("http://") && !lower.starts_with("https://") {
                    let span = item.get("source").map(|n| n.span).unwrap_or(item.span);
                    let hint = if lower.starts_with("s3://") {
                        "use S3Download for s3:// sources"
                    } else {
                        "write a full http:// or https:// URL"
                    };
                    c.err(
                        span,
                        format!("WebDownload `source` must be an http or https URL, found `{src}`"),
                        Some(hint.into()),
                    );
                }
            }
        }
    }

    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let items = items(self.name(), inputs)?;
        if !ctx.host.network_allowed() {
            let src = items.first().and_then(|i| i.str_opt("source").ok().flatten()).unwrap_or("the source");
            return Err(no_network(self.name(), &format!("download {src}")));
        }
        let mut destinations = Vec::new();
        for item in &items {
            let source = item.str_req("source")?;
            let url = reqwest::Url::parse(source)
                .map_err(|e| item.fail(format!("`source` {source} is not a valid URL: {e}")))?;
            if url.scheme() != "http" && url.scheme() != "https" {
                return Err(item.fail(format!("`source` must be an http or https URL, found `{source}`")));
            }
            let dest = Self::target_path(ctx, item, &url, item.str_req("destination")?)?;
            let overwrite = item.bool_or("overwrite", true)?;
            let ignore_certs = item.bool_or("ignoreCertificateErrors", false)?;
            let verify = match (
                item.str_opt("checksum")?.filter(|s| !s.is_empty()),
                item.str_opt("algorithm")?.filter(|s| !s.is_empty()),
            ) {
                (Some(sum), Some(alg)) => {
                    if Hasher::new(alg).is_none() {
                        return Err(item.fail(format!(
                            "unknown checksum algorithm `{alg}`; use one of {}",
                            ALGORITHMS.join(", ")
                        )));
                    }
                    Some((alg, sum.trim().to_ascii_lowercase()))
                }
                _ => None,
            };

            match kind_of(ctx.host, &dest).map_err(|e| host_fail(&item.who(), "inspect", &dest, &e))? {
                Some(FileKind::Dir) => {
                    return Err(item.fail(format!(
                        "a folder exists at {dest}; end `destination` with `/` to download into it"
                    )));
                }
                Some(_) if !overwrite => {
                    return Err(
                        item.fail(format!("{dest} already exists and `overwrite` is false; cannot download"))
                    );
                }
                Some(_) => {
                    if let Some((alg, sum)) = &verify {
                        let existing = ctx.host.read_file(&dest).ok();
                        if existing.and_then(|d| Hasher::digest(alg, &d)).as_deref() == Some(sum.as_str()) {
                            destinations.push(dest);
                            continue;
                        }
                    }
                }
                None => {}
            }
            if let Some(p) = parent(&dest) {
                ctx.host
                    .create_dir_all(p, None)
                    .map_err(|e| host_fail(&item.who(), "create the folder", p, &e))?;
            }

            let mut builder = reqwest::blocking::Client::builder()
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                .tls_danger_accept_invalid_certs(ignore_certs);
            builder = builder.timeout(ctx.timeout);
            let client =
                builder.build().map_err(|e| item.fail(format!("cannot set up the HTTP client: {e}")))?;

            let part = format!("{dest}.kiln-download");
            let mut pause = FIRST_BACKOFF;
            let mut attempt = 1;
            let digest = loop {
                match Self::attempt(ctx, &client, &url, &part, verify.as_ref().map(|(a, _)| *a)) {
                    Ok(d) => break d,
                    Err(e) => {
                        let _ = ctx.host.remove_file(&part);
                        if !e.retry || attempt >= DOWNLOAD_ATTEMPTS {
                            let tries = if attempt > 1 {
                                format!(" (after {attempt} attempts)")
                            } else {
                                String::new()
                            };
                            return Err(item.fail(format!("cannot download {url}: {}{tries}", e.message)));
                        }
                        std::thread::sleep(pause);
                        pause *= 2;
                        attempt += 1;
                    }
                }
            };
            if let (Some((alg, want)), Some(got)) = (&verify, digest)
                && &got != want
            {
                let _ = ctx.host.remove_file(&part);
                return Err(item.fail(format!(
                    "checksum mismatch for {url}: {alg} of the download is {got}, the document expects {want}; nothing was written to {dest}"
                )));
            }
            ctx.host.rename(&part, &dest).map_err(|e| {
                let _ = ctx.host.remove_file(&part);
                host_fail(&item.who(), "move the download into place at", &dest, &e)
            })?;
            destinations.push(dest);
        }
        let mut outcome = ActionOutcome::default();
        outcome.outputs.insert("destination".into(), destinations.join("\n").into());
        Ok(outcome)
    }
}

/// An error with its causes, so "connection refused" is not hidden behind "error sending
/// request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert_eq!(Hasher::digest("md5", b"abc").unwrap(), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(Hasher::digest("SHA1", b"abc").unwrap(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            Hasher::digest("sha256", b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Hasher::digest("SHA-512", b"abc").unwrap().starts_with("ddaf35a193617aba"));
        assert!(Hasher::new("crc32").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b.zip"), "a b.zip");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("x%2"), "x%2");
    }
}
