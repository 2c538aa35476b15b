//! AWS Signature Version 4, verified on the server side.
//!
//! Written by hand: `aws-sigv4` and the SDKs only sign, and the one verifying crate
//! (`scratchstack-aws-signature`) is a single-maintainer crate with little use whose error
//! codes and payload rules we would have to wrap anyway. The algorithm is short; what matters
//! is following what the SDKs sign exactly, which the tests check against signatures made by
//! botocore (`tests/data/sigv4_botocore.json`).
//!
//! Verification is split so that the credential lookup, which may be asynchronous (a
//! database), happens between two pure steps: [`Verifier::parse`] reads the signature's
//! parameters (the access key id among them), the caller looks the secret key up, and
//! [`Verifier::verify`] checks the clock and the signature. The canonical request follows the
//! rules for every service but S3: the path is normalised (dot segments and empty segments
//! removed) and URI-encoded once more, the query is decoded and re-encoded strictly.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The only algorithm SigV4 knows.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The clock skew AWS tolerates between the request's date and the server's clock.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(15);
/// The longest validity of a presigned URL (a week, as AWS allows).
pub const MAX_PRESIGNED_EXPIRY_SECONDS: i64 = 604_800;
/// The payload hash of a request whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Characters left as they are by SigV4's URI encoding: `A-Z a-z 0-9 - . _ ~`.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// The same for a path, whose slashes separate segments.
const PATH: &AsciiSet = &STRICT.remove(b'/');

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was refused. Each maps to the error AWS answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// Neither an Authorization header nor the X-Amz-Algorithm query parameter.
    #[error("{0}")]
    Missing(String),
    /// The signature's parameters are missing or malformed.
    #[error("{0}")]
    Incomplete(String),
    /// The access key id is unknown, or the session token is not valid.
    #[error("{0}")]
    UnknownAccessKey(String),
    /// The signature does not match, or the scope is not this service's.
    #[error("{0}")]
    Mismatch(String),
    /// The date is outside the allowed skew, or a presigned URL has expired.
    #[error("{0}")]
    Expired(String),
}

impl From<SigV4Error> for ApiError {
    fn from(error: SigV4Error) -> Self {
        match error {
            SigV4Error::Missing(m) => ApiError::MissingAuthenticationToken(m),
            SigV4Error::Incomplete(m) => ApiError::IncompleteSignature(m),
            SigV4Error::UnknownAccessKey(m) => ApiError::InvalidClientTokenId(m),
            SigV4Error::Mismatch(m) => ApiError::SignatureDoesNotMatch(m),
            SigV4Error::Expired(m) => ApiError::RequestExpired(m),
        }
    }
}

impl SigV4Error {
    /// The error for an access key id the credential store does not know.
    pub fn unknown_access_key() -> Self {
        SigV4Error::UnknownAccessKey("The security token included in the request is invalid.".to_owned())
    }
}

/// Where the signature travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The `Authorization` header.
    Header,
    /// Query parameters (`X-Amz-Signature`...): a presigned URL.
    Query,
}

/// The signature's parameters, read from a request before its secret key is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Where the signature was found.
    pub form: Form,
    /// The access key id of the credential scope.
    pub access_key_id: String,
    /// The scope's date, `YYYYMMDD`.
    pub scope_date: String,
    /// The scope's region (whatever the client was configured with).
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed header names, lowercase, in the order given.
    pub signed_headers: Vec<String>,
    /// The signature, in hex as sent.
    pub signature: String,
    /// When the request was signed.
    pub timestamp: DateTime<Utc>,
    /// How long a presigned URL is valid.
    pub expires: Option<TimeDelta>,
    /// `X-Amz-Security-Token`, for temporary credentials.
    pub security_token: Option<String>,
    /// Which header gave the date (`x-amz-date` or `date`), so that it must be signed.
    date_header: Option<&'static str>,
}

/// The parts of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI as received (path and query still percent-encoded).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// Checks signatures for one service.
#[derive(Debug, Clone)]
pub struct Verifier {
    service: String,
    region: Option<String>,
    max_skew: TimeDelta,
}

impl Verifier {
    /// A verifier for `service` (the signing name, `imagebuilder`) accepting any region.
    ///
    /// Any region, because clients pointed at kiln with `--endpoint-url` sign with whatever
    /// region they are configured with; the region is covered by the signature anyway.
    pub fn new(service: impl Into<String>) -> Self {
        Verifier { service: service.into(), region: None, max_skew: MAX_CLOCK_SKEW }
    }

    /// Only accepts signatures scoped to `region`.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Reads the signature's parameters and checks their shape and scope.
    pub fn parse(&self, uri: &Uri, headers: &HeaderMap) -> Result<Authorization, SigV4Error> {
        let query = query_pairs(uri.query().unwrap_or(""));
        let has_query_auth = query.iter().any(|(k, _)| k == "X-Amz-Algorithm");
        let header = headers.get(http::header::AUTHORIZATION);
        let auth = match (header, has_query_auth) {
            (Some(_), true) => {
                return Err(SigV4Error::Incomplete(
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or \
                     the Authorization header should be specified"
                        .into(),
                ));
            }
            (None, false) => {
                return Err(SigV4Error::Missing("Missing Authentication Token".into()));
            }
            (Some(value), false) => parse_header_form(value, headers)?,
            (None, true) => parse_query_form(&query)?,
        };
        self.check_scope(&auth)?;
        Ok(auth)
    }

    fn check_scope(&self, auth: &Authorization) -> Result<(), SigV4Error> {
        let date = auth.timestamp.format("%Y%m%d").to_string();
        if auth.scope_date != date {
            return Err(SigV4Error::Mismatch(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{date}'",
                auth.scope_date
            )));
        }
        if auth.service != self.service {
            return Err(SigV4Error::Mismatch(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        if let Some(region) = &self.region
            && &auth.region != region
        {
            return Err(SigV4Error::Mismatch(format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            )));
        }
        Ok(())
    }

    /// Checks the request's date against `now` and its signature against `secret_key`.
    ///
    /// `body` is the whole body: the signature covers its digest.
    pub fn verify(
        &self,
        auth: &Authorization,
        request: &Request<'_>,
        secret_key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SigV4Error> {
        let Request { method, uri, headers, body } = *request;
        self.check_time(auth, now)?;
        check_required_headers(auth, headers)?;
        let body_hash = hex::encode(Sha256::digest(body));
        let payload_hashes: Vec<String> = match auth.form {
            Form::Header => match headers.get("x-amz-content-sha256") {
                Some(value) => {
                    let value = value.to_str().unwrap_or("");
                    // An unsigned payload would let anyone holding one signed request replay
                    // its headers with another body; the API never needs it.
                    if !value.eq_ignore_ascii_case(&body_hash) {
                        return Err(SigV4Error::Mismatch(
                            "The provided 'x-amz-content-sha256' header does not match what was \
                             computed."
                                .into(),
                        ));
                    }
                    vec![value.to_owned()]
                }
                None => vec![body_hash],
            },
            // A presigned URL cannot know the body, so SDKs sign `UNSIGNED-PAYLOAD`; that is
            // only acceptable when there is no body to tamper with.
            Form::Query if body.is_empty() => vec![UNSIGNED_PAYLOAD.to_owned(), body_hash],
            Form::Query => vec![body_hash],
        };
        let expected = decode_signature(&auth.signature)?;
        let key = signing_key(secret_key, &auth.scope_date, &auth.region, &auth.service);
        for payload_hash in &payload_hashes {
            let canonical = canonical_request(
                method,
                uri,
                headers,
                &auth.signed_headers,
                payload_hash,
                auth.form == Form::Query,
            )?;
            let to_sign = string_to_sign(auth, &canonical);
            let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
            mac.update(to_sign.as_bytes());
            // verify_slice compares in constant time.
            if mac.verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(SigV4Error::Mismatch(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        ))
    }

    fn check_time(&self, auth: &Authorization, now: DateTime<Utc>) -> Result<(), SigV4Error> {
        let fmt = |t: DateTime<Utc>| t.format(AMZ_DATE_FORMAT).to_string();
        let skew = self.max_skew;
        let minutes = skew.num_minutes();
        match auth.expires {
            None => {
                if auth.timestamp < now - skew {
                    return Err(SigV4Error::Expired(format!(
                        "Signature expired: {} is now earlier than {} ({} - {minutes} min.)",
                        fmt(auth.timestamp),
                        fmt(now - skew),
                        fmt(now)
                    )));
                }
                if auth.timestamp > now + skew {
                    return Err(SigV4Error::Expired(format!(
                        "Signature not yet current: {} is still later than {} ({} + {minutes} \
                         min.)",
                        fmt(auth.timestamp),
                        fmt(now + skew),
                        fmt(now)
                    )));
                }
            }
            Some(expires) => {
                if auth.timestamp > now + skew {
                    return Err(SigV4Error::Expired("Request is not yet valid".into()));
                }
                if now > auth.timestamp + expires {
                    return Err(SigV4Error::Expired("Request has expired".into()));
                }
            }
        }
        Ok(())
    }
}

/// `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=hex`
fn parse_header_form(value: &HeaderValue, headers: &HeaderMap) -> Result<Authorization, SigV4Error> {
    let value = value
        .to_str()
        .map_err(|_| SigV4Error::Incomplete("The Authorization header is not ASCII.".into()))?;
    let (algorithm, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if algorithm != ALGORITHM {
        return Err(SigV4Error::Incomplete(format!(
            "Unsupported Authorization algorithm '{}': kiln accepts {ALGORITHM} only.",
            truncate(algorithm)
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((name, value)) = part.split_once('=') else {
            return Err(SigV4Error::Incomplete(format!(
                "Authorization header requires each component to be of the form name=value: \
                 '{}'.",
                truncate(part)
            )));
        };
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(value.to_owned()).is_some() {
            return Err(SigV4Error::Incomplete(format!("Authorization header has '{name}' twice.")));
        }
    }
    let missing: Vec<&str> = [
        ("Credential", credential.is_none()),
        ("Signature", signature.is_none()),
        ("SignedHeaders", signed_headers.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    if !missing.is_empty() {
        return Err(SigV4Error::Incomplete(
            missing
                .iter()
                .map(|m| format!("Authorization header requires '{m}' parameter."))
                .collect::<Vec<_>>()
                .join(" "),
        ));
    }
    let (timestamp, date_header) = if let Some(v) = headers.get("x-amz-date") {
        (parse_amz_date(v.to_str().unwrap_or(""))?, "x-amz-date")
    } else if let Some(v) = headers.get(http::header::DATE) {
        let text = v.to_str().unwrap_or("");
        let parsed = DateTime::parse_from_rfc2822(text).map_err(|_| {
            SigV4Error::Incomplete(format!("The Date header is not an HTTP date: '{}'.", truncate(text)))
        })?;
        (parsed.with_timezone(&Utc), "date")
    } else {
        return Err(SigV4Error::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
             header."
                .into(),
        ));
    };
    let scope = parse_credential(credential.as_deref().unwrap_or(""))?;
    Ok(Authorization {
        form: Form::Header,
        access_key_id: scope.0,
        scope_date: scope.1,
        region: scope.2,
        service: scope.3,
        signed_headers: parse_signed_headers(signed_headers.as_deref().unwrap_or(""))?,
        signature: signature.unwrap_or_default(),
        timestamp,
        expires: None,
        security_token: headers
            .get("x-amz-security-token")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        date_header: Some(date_header),
    })
}

/// `?X-Amz-Algorithm=...&X-Amz-Credential=...&X-Amz-Date=...&X-Amz-Expires=...
/// &X-Amz-SignedHeaders=...&X-Amz-Signature=...`
fn parse_query_form(query: &[(String, String)]) -> Result<Authorization, SigV4Error> {
    let get = |name: &str| -> Result<Option<String>, SigV4Error> {
        let mut values = query.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.clone());
        if values.next().is_some() {
            return Err(SigV4Error::Incomplete(format!("The query parameter '{name}' is given twice.")));
        }
        Ok(first)
    };
    let names = [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ];
    let mut values = Vec::with_capacity(names.len());
    let mut missing = Vec::new();
    for name in names {
        let value = get(name)?;
        if value.is_none() {
            missing.push(name);
        }
        values.push(value.unwrap_or_default());
    }
    if !missing.is_empty() {
        return Err(SigV4Error::Incomplete(format!(
            "AWS query-string parameters missing: {}.",
            missing.join(", ")
        )));
    }
    let [algorithm, credential, date, expires, signed_headers, signature] =
        <[String; 6]>::try_from(values).map_err(|_| SigV4Error::Incomplete(String::new()))?;
    if algorithm != ALGORITHM {
        return Err(SigV4Error::Incomplete(format!(
            "Unsupported X-Amz-Algorithm '{}': kiln accepts {ALGORITHM} only.",
            truncate(&algorithm)
        )));
    }
    let expires_seconds: i64 =
        expires.parse().ok().filter(|s| (0..=MAX_PRESIGNED_EXPIRY_SECONDS).contains(s)).ok_or_else(|| {
            SigV4Error::Incomplete(format!(
                "X-Amz-Expires must be a number of seconds from 0 to \
                 {MAX_PRESIGNED_EXPIRY_SECONDS}, not '{}'.",
                truncate(&expires)
            ))
        })?;
    let scope = parse_credential(&credential)?;
    Ok(Authorization {
        form: Form::Query,
        access_key_id: scope.0,
        scope_date: scope.1,
        region: scope.2,
        service: scope.3,
        signed_headers: parse_signed_headers(&signed_headers)?,
        signature,
        timestamp: parse_amz_date(&date)?,
        expires: Some(TimeDelta::seconds(expires_seconds)),
        security_token: get("X-Amz-Security-Token")?,
        date_header: None,
    })
}

/// `AKID/YYYYMMDD/region/service/aws4_request` → (AKID, date, region, service).
fn parse_credential(credential: &str) -> Result<(String, String, String, String), SigV4Error> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = parts[..] else {
        return Err(SigV4Error::Incomplete(format!(
            "Credential must have the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, \
             not '{}'.",
            truncate(credential)
        )));
    };
    if terminator != "aws4_request" {
        return Err(SigV4Error::Mismatch(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
            truncate(terminator)
        )));
    }
    if akid.is_empty() || region.is_empty() || service.is_empty() {
        return Err(SigV4Error::Incomplete(format!(
            "Credential has an empty part: '{}'.",
            truncate(credential)
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigV4Error::Incomplete(format!(
            "Credential's date must be YYYYMMDD, not '{}'.",
            truncate(date)
        )));
    }
    Ok((akid.to_owned(), date.to_owned(), region.to_owned(), service.to_owned()))
}

fn parse_signed_headers(list: &str) -> Result<Vec<String>, SigV4Error> {
    let names: Vec<String> = list.split(';').map(str::to_owned).collect();
    if names.iter().any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase())) {
        return Err(SigV4Error::Incomplete(format!(
            "SignedHeaders must be lowercase header names separated by ';', not '{}'.",
            truncate(list)
        )));
    }
    if !names.iter().any(|n| n == "host") {
        return Err(SigV4Error::Incomplete(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    Ok(names)
}

fn parse_amz_date(text: &str) -> Result<DateTime<Utc>, SigV4Error> {
    NaiveDateTime::parse_from_str(text, AMZ_DATE_FORMAT).map(|t| t.and_utc()).map_err(|_| {
        SigV4Error::Incomplete(format!(
            "X-Amz-Date must be in the ISO8601 basic format YYYYMMDD'T'HHMMSS'Z', not '{}'.",
            truncate(text)
        ))
    })
}

fn decode_signature(signature: &str) -> Result<Vec<u8>, SigV4Error> {
    match hex::decode(signature) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(SigV4Error::Mismatch("The request signature is not 64 hexadecimal digits.".into())),
    }
}

/// Headers whose change would change what the request means must be signed: the host, the
/// date used, and every `x-amz-*` header (the SDKs sign them all). Signed headers must exist.
fn check_required_headers(auth: &Authorization, headers: &HeaderMap) -> Result<(), SigV4Error> {
    let signed = |name: &str| auth.signed_headers.iter().any(|h| h == name);
    if let Some(date_header) = auth.date_header
        && !signed(date_header)
    {
        return Err(SigV4Error::Mismatch(format!("The '{date_header}' header must be signed.")));
    }
    for name in headers.keys() {
        let name = name.as_str();
        if (name.starts_with("x-amz-") || name == "content-md5") && !signed(name) {
            return Err(SigV4Error::Mismatch(format!(
                "There were headers present in the request which were not signed: '{name}'."
            )));
        }
    }
    for name in &auth.signed_headers {
        if name != "host" && !headers.contains_key(name.as_str()) {
            return Err(SigV4Error::Incomplete(format!(
                "The signed header '{}' is not in the request.",
                truncate(name)
            )));
        }
    }
    Ok(())
}

/// Keeps quoted client input in messages short.
fn truncate(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The query's pairs, decoded (names and values as UTF-8, lossily: they are only compared).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode_str(k).decode_utf8_lossy().into_owned(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

/// The canonical query string: each name and value decoded then encoded strictly, sorted by
/// name then value, the signature itself left out of a presigned URL's.
fn canonical_query(query: &str, presigned: bool) -> String {
    let encode = |raw: &str| -> String {
        let bytes: Vec<u8> = percent_decode_str(raw).collect();
        percent_encoding::percent_encode(&bytes, STRICT).to_string()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .map(|(k, v)| (encode(k), encode(v)))
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The canonical URI of a non-S3 service: the path as received (already percent-encoded once
/// by the client), dot and empty segments removed, then encoded again.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    utf8_percent_encode(&normalized, PATH).to_string()
}

/// Trimall: surrounding whitespace removed, inner runs of whitespace made one space (as
/// botocore does with `' '.join(value.split())`).
fn trim_all(value: &[u8], out: &mut Vec<u8>) {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f);
    let mut first = true;
    for word in value.split(is_space).filter(|w| !w.is_empty()) {
        if !first {
            out.push(b' ');
        }
        out.extend_from_slice(word);
        first = false;
    }
}

/// The canonical request, as bytes: header values are bytes, and mapping them to text
/// lossily would let two different values share a signature.
fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &[String],
    payload_hash: &str,
    presigned: bool,
) -> Result<Vec<u8>, SigV4Error> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(uri.path()).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(uri.query().unwrap_or(""), presigned).as_bytes());
    out.push(b'\n');
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let values: Vec<&[u8]> = headers.get_all(name.as_str()).iter().map(HeaderValue::as_bytes).collect();
        if values.is_empty() && name == "host" {
            // HTTP/2 carries the host in the URI's authority.
            let authority = uri
                .authority()
                .ok_or_else(|| SigV4Error::Incomplete("The request has no Host header.".into()))?;
            out.extend_from_slice(authority.as_str().as_bytes());
        }
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            trim_all(value, &mut out);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

fn string_to_sign(auth: &Authorization, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{}\n{}/{}/{}/aws4_request\n{}",
        auth.timestamp.format(AMZ_DATE_FORMAT),
        auth.scope_date,
        auth.region,
        auth.service,
        hex::encode(Sha256::digest(canonical_request))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The signing key: HMAC chained over the date, region, service and `aws4_request`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// What a signer needs; kiln's own clients and the tests sign with it.
#[derive(Debug, Clone)]
pub struct SigningParams<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// Its secret key.
    pub secret_access_key: &'a str,
    /// The region of the scope.
    pub region: &'a str,
    /// The service of the scope (`imagebuilder`).
    pub service: &'a str,
    /// The signing time.
    pub time: DateTime<Utc>,
}

/// Signs a request in the header form: adds `x-amz-date` and `authorization`, signing the
/// host, `content-type` and every `x-amz-*` header. The `host` header must be set.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    params: &SigningParams<'_>,
) -> Result<(), SigV4Error> {
    let amz_date = params.time.format(AMZ_DATE_FORMAT).to_string();
    headers.insert(
        "x-amz-date",
        HeaderValue::from_str(&amz_date).map_err(|e| SigV4Error::Incomplete(e.to_string()))?,
    );
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k == "host" || k == "content-type" || k.starts_with("x-amz-"))
        .collect();
    signed.sort();
    signed.dedup();
    let auth = Authorization {
        form: Form::Header,
        access_key_id: params.access_key_id.to_owned(),
        scope_date: params.time.format("%Y%m%d").to_string(),
        region: params.region.to_owned(),
        service: params.service.to_owned(),
        signed_headers: signed,
        signature: String::new(),
        timestamp: params.time,
        expires: None,
        security_token: None,
        date_header: Some("x-amz-date"),
    };
    let payload_hash = hex::encode(Sha256::digest(body));
    let canonical = canonical_request(method, uri, headers, &auth.signed_headers, &payload_hash, false)?;
    let signature = hex::encode(hmac(
        &signing_key(params.secret_access_key, &auth.scope_date, params.region, params.service),
        string_to_sign(&auth, &canonical).as_bytes(),
    ));
    let value = format!(
        "{ALGORITHM} Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={signature}",
        params.access_key_id,
        auth.scope_date,
        params.region,
        params.service,
        auth.signed_headers.join(";")
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&value).map_err(|e| SigV4Error::Incomplete(e.to_string()))?,
    );
    Ok(())
}

/// A presigned URL (query form) for a request without a body, signing the host only.
pub fn presign(
    method: &Method,
    uri: &Uri,
    host: &str,
    expires_seconds: i64,
    params: &SigningParams<'_>,
) -> Result<Uri, SigV4Error> {
    let scope_date = params.time.format("%Y%m%d").to_string();
    let credential =
        format!("{}/{scope_date}/{}/{}/aws4_request", params.access_key_id, params.region, params.service);
    let added = [
        ("X-Amz-Algorithm", ALGORITHM.to_owned()),
        ("X-Amz-Credential", credential),
        ("X-Amz-Date", params.time.format(AMZ_DATE_FORMAT).to_string()),
        ("X-Amz-Expires", expires_seconds.to_string()),
        ("X-Amz-SignedHeaders", "host".to_owned()),
    ];
    let mut query = uri.query().unwrap_or("").to_owned();
    for (name, value) in &added {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&format!("{name}={}", utf8_percent_encode(value, STRICT)));
    }
    let unsigned: Uri = format!("{}?{query}", uri.path())
        .parse()
        .map_err(|e: http::uri::InvalidUri| SigV4Error::Incomplete(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(host).map_err(|e| SigV4Error::Incomplete(e.to_string()))?,
    );
    let auth = Authorization {
        form: Form::Query,
        access_key_id: params.access_key_id.to_owned(),
        scope_date,
        region: params.region.to_owned(),
        service: params.service.to_owned(),
        signed_headers: vec!["host".to_owned()],
        signature: String::new(),
        timestamp: params.time,
        expires: Some(TimeDelta::seconds(expires_seconds)),
        security_token: None,
        date_header: None,
    };
    let canonical =
        canonical_request(method, &unsigned, &headers, &auth.signed_headers, UNSIGNED_PAYLOAD, true)?;
    let signature = hex::encode(hmac(
        &signing_key(params.secret_access_key, &auth.scope_date, params.region, params.service),
        string_to_sign(&auth, &canonical).as_bytes(),
    ));
    format!("{}?{query}&X-Amz-Signature={signature}", uri.path())
        .parse()
        .map_err(|e: http::uri::InvalidUri| SigV4Error::Incomplete(e.to_string()))
}

#[cfg(test)]
mod tests;
