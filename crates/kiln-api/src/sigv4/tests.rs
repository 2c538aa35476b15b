use super::*;

const AKID: &str = "AKIAKILNEXAMPLE00001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Requests signed by botocore; see `tests/data/gen_sigv4_fixtures.py` for how.
const FIXTURES: &str = include_str!("../../tests/data/sigv4_botocore.json");

#[derive(Debug, Clone)]
struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Req {
    fn check(&self, verifier: &Verifier, secret: &str, now: DateTime<Utc>) -> Result<(), SigV4Error> {
        let auth = verifier.parse(&self.uri, &self.headers)?;
        let request =
            Request { method: &self.method, uri: &self.uri, headers: &self.headers, body: &self.body };
        verifier.verify(&auth, &request, secret, now)
    }
}

fn at(text: &str) -> DateTime<Utc> {
    parse_amz_date(text).unwrap()
}

fn fixtures() -> (DateTime<Utc>, Vec<(String, Req)>) {
    let json: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
    assert_eq!(json["accessKeyId"], AKID);
    assert_eq!(json["secretAccessKey"], SECRET);
    let now = at(json["now"].as_str().unwrap());
    let cases = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let url = case["url"].as_str().unwrap();
            let rest = url.strip_prefix("http://").unwrap();
            let (host, path) = rest.split_at(rest.find('/').unwrap());
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_str(host).unwrap());
            for pair in case["headers"].as_array().unwrap() {
                let name = http::HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap();
                headers.append(name, HeaderValue::from_str(pair[1].as_str().unwrap()).unwrap());
            }
            let req = Req {
                method: case["method"].as_str().unwrap().parse().unwrap(),
                uri: path.parse().unwrap(),
                headers,
                body: case["body"].as_str().unwrap().as_bytes().to_vec(),
            };
            (case["name"].as_str().unwrap().to_owned(), req)
        })
        .collect();
    (now, cases)
}

fn fixture(name_prefix: &str) -> (DateTime<Utc>, Req) {
    let (now, cases) = fixtures();
    let (_, req) = cases.into_iter().find(|(n, _)| n.starts_with(name_prefix)).unwrap();
    (now, req)
}

fn verifier() -> Verifier {
    Verifier::new("imagebuilder")
}

fn is_mismatch(result: Result<(), SigV4Error>) -> bool {
    matches!(result, Err(SigV4Error::Mismatch(_)))
}

#[test]
fn every_botocore_request_verifies() {
    let (now, cases) = fixtures();
    assert!(cases.len() >= 8);
    for (name, req) in &cases {
        req.check(&verifier(), SECRET, now).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_botocore_request_is_refused_with_another_secret() {
    let (now, cases) = fixtures();
    for (name, req) in &cases {
        let result = req.check(&verifier(), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz", now);
        assert!(is_mismatch(result.clone()), "{name}: {result:?}");
    }
}

/// kiln's signer gives botocore's signature when it signs the same headers: the canonical
/// request of both sides is the same, not merely self-consistent.
#[test]
fn our_signer_matches_botocore() {
    let (now, cases) = fixtures();
    let mut compared = 0;
    for (name, req) in &cases {
        let Some(theirs) = req.headers.get("authorization") else { continue };
        let theirs = theirs.to_str().unwrap();
        if !theirs.contains("SignedHeaders=content-type;host;x-amz-date,")
            && !theirs.contains("SignedHeaders=host;x-amz-date,")
        {
            continue;
        }
        let mut headers = HeaderMap::new();
        for name in ["host", "content-type"] {
            if let Some(v) = req.headers.get(name) {
                headers.insert(name, v.clone());
            }
        }
        let params = SigningParams {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "eu-west-3",
            service: "imagebuilder",
            time: now,
        };
        sign(&req.method, &req.uri, &mut headers, &req.body, &params).unwrap();
        assert_eq!(headers["authorization"], theirs, "{name}");
        compared += 1;
    }
    assert!(compared >= 4, "only {compared} fixtures compared");
}

/// The published AWS examples: `get-vanilla` of the SigV4 test suite and IAM ListUsers of the
/// signing guide (both re-checked with botocore when this test was written).
#[test]
fn published_aws_examples() {
    let params = |service| SigningParams {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: SECRET,
        region: "us-east-1",
        service,
        time: at("20150830T123600Z"),
    };
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
    let uri: Uri = "/".parse().unwrap();
    sign(&Method::GET, &uri, &mut headers, b"", &params("service")).unwrap();
    assert!(
        headers["authorization"]
            .to_str()
            .unwrap()
            .ends_with("Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    );

    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
    headers
        .insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
    let uri: Uri = "/?Action=ListUsers&Version=2010-05-08".parse().unwrap();
    sign(&Method::GET, &uri, &mut headers, b"", &params("iam")).unwrap();
    assert!(
        headers["authorization"]
            .to_str()
            .unwrap()
            .ends_with("Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")
    );
    let auth = Verifier::new("iam").parse(&uri, &headers).unwrap();
    Verifier::new("iam")
        .verify(
            &auth,
            &Request { method: &Method::GET, uri: &uri, headers: &headers, body: b"" },
            SECRET,
            at("20150830T124000Z"),
        )
        .unwrap();
}

#[test]
fn signing_key_of_the_aws_guide() {
    let key = signing_key(SECRET, "20150830", "us-east-1", "iam");
    assert_eq!(hex::encode(key), "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
}

#[test]
fn tampered_body_is_refused() {
    let (now, mut req) = fixture("CreateComponent");
    req.body = req.body.iter().map(|b| if *b == b'1' { b'2' } else { *b }).collect();
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
}

#[test]
fn body_not_matching_its_declared_hash_is_refused() {
    let (now, mut req) = fixture("CreateComponent");
    let declared = hex::encode(Sha256::digest(b"something else"));
    req.headers.insert("x-amz-content-sha256", HeaderValue::from_str(&declared).unwrap());
    let err = req.check(&verifier(), SECRET, now).unwrap_err();
    // Unsigned x-amz header and wrong hash are both refused; neither is accepted.
    assert!(matches!(err, SigV4Error::Mismatch(_)), "{err}");
}

#[test]
fn declared_payload_hash_is_checked_against_the_body() {
    let now = at("20240101T000000Z");
    let params = SigningParams {
        access_key_id: AKID,
        secret_access_key: SECRET,
        region: "us-east-1",
        service: "imagebuilder",
        time: now,
    };
    let uri: Uri = "/ListImages".parse().unwrap();
    let body = br#"{"owner":"Self"}"#;
    for declared in [hex::encode(Sha256::digest(body)), UNSIGNED_PAYLOAD.to_owned()] {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("kiln:8080"));
        headers.insert("x-amz-content-sha256", HeaderValue::from_str(&declared).unwrap());
        sign(&Method::POST, &uri, &mut headers, body, &params).unwrap();
        let req = Req { method: Method::POST, uri: uri.clone(), headers, body: body.to_vec() };
        let result = req.check(&verifier(), SECRET, now);
        if declared == UNSIGNED_PAYLOAD {
            assert!(is_mismatch(result), "UNSIGNED-PAYLOAD accepted with a body");
        } else {
            result.unwrap();
        }
    }
}

#[test]
fn tampered_signed_header_is_refused() {
    let (now, mut req) = fixture("CreateComponent");
    req.headers.insert("content-type", HeaderValue::from_static("text/plain"));
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
    let (now, mut req) = fixture("CreateComponent");
    req.headers.insert("host", HeaderValue::from_static("elsewhere:8080"));
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
}

#[test]
fn tampered_path_or_query_is_refused() {
    let (now, mut req) = fixture("GetImage (query");
    req.uri = req.uri.to_string().replace("%2F1.0.0%2F1", "%2F1.0.0%2F2").parse().unwrap();
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
    let (now, mut req) = fixture("GetImage (query");
    req.uri = format!("{}&extra=1", req.uri).parse().unwrap();
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
    let (now, mut req) = fixture("ListImages");
    req.method = Method::PUT;
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
}

#[test]
fn unsigned_amz_header_is_refused() {
    let (now, mut req) = fixture("ListImages");
    req.headers.insert("x-amz-security-token", HeaderValue::from_static("stolen"));
    let err = req.check(&verifier(), SECRET, now).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    // Unsigned headers outside x-amz-* (user agent, invocation id) do not matter.
    let (now, mut req) = fixture("ListImages");
    req.headers.insert("user-agent", HeaderValue::from_static("other"));
    req.check(&verifier(), SECRET, now).unwrap();
}

#[test]
fn signed_header_absent_from_the_request_is_refused() {
    let (now, mut req) = fixture("CreateComponent");
    req.headers.remove("content-type");
    assert!(matches!(req.check(&verifier(), SECRET, now), Err(SigV4Error::Incomplete(_))));
}

#[test]
fn host_must_be_signed() {
    let headers = header_form(
        "AWS4-HMAC-SHA256 Credential=AKID/20240101/r/imagebuilder/aws4_request, SignedHeaders=x-amz-date, Signature=00",
    );
    let err = verifier().parse(&"/".parse().unwrap(), &headers).unwrap_err();
    assert!(matches!(err, SigV4Error::Incomplete(ref m) if m.contains("Host")), "{err}");
}

#[test]
fn clock_skew_of_more_than_15_minutes_is_refused_both_ways() {
    let (now, req) = fixture("ListImages");
    req.check(&verifier(), SECRET, now + TimeDelta::minutes(15)).unwrap();
    req.check(&verifier(), SECRET, now - TimeDelta::minutes(15)).unwrap();
    let late = req.check(&verifier(), SECRET, now + TimeDelta::minutes(16)).unwrap_err();
    assert_eq!(
        late,
        SigV4Error::Expired(
            "Signature expired: 20240331T003005Z is now earlier than 20240331T003105Z \
             (20240331T004605Z - 15 min.)"
                .into()
        )
    );
    let early = req.check(&verifier(), SECRET, now - TimeDelta::minutes(16)).unwrap_err();
    assert!(matches!(early, SigV4Error::Expired(ref m) if m.contains("not yet current")));
    assert_eq!(ApiError::from(late).code(), "RequestExpired");
}

#[test]
fn presigned_url_verifies_until_it_expires() {
    let (now, req) = fixture("GetImage presigned");
    let auth = verifier().parse(&req.uri, &req.headers).unwrap();
    assert_eq!(auth.form, Form::Query);
    assert_eq!(auth.expires, Some(TimeDelta::seconds(300)));
    req.check(&verifier(), SECRET, now + TimeDelta::seconds(299)).unwrap();
    let err = req.check(&verifier(), SECRET, now + TimeDelta::seconds(301)).unwrap_err();
    assert_eq!(err, SigV4Error::Expired("Request has expired".into()));
    let err = req.check(&verifier(), SECRET, now - TimeDelta::minutes(16)).unwrap_err();
    assert_eq!(err, SigV4Error::Expired("Request is not yet valid".into()));
}

#[test]
fn presigned_url_does_not_cover_a_body() {
    let (now, mut req) = fixture("GetImage presigned");
    req.body = b"{}".to_vec();
    assert!(is_mismatch(req.check(&verifier(), SECRET, now)));
}

#[test]
fn presigned_url_tampered_query_is_refused() {
    let (now, mut req) = fixture("GetImage presigned");
    req.uri = req.uri.to_string().replace("X-Amz-Expires=300", "X-Amz-Expires=3000").parse().unwrap();
    assert!(is_mismatch(req.check(&verifier(), SECRET, now + TimeDelta::seconds(400))));
}

#[test]
fn our_presigned_urls_verify() {
    let now = at("20240601T120000Z");
    let params = SigningParams {
        access_key_id: AKID,
        secret_access_key: SECRET,
        region: "us-east-1",
        service: "imagebuilder",
        time: now,
    };
    let uri: Uri =
        "/GetImage?imageBuildVersionArn=arn%3Aaws%3Aimagebuilder%3Aus-east-1%3A1%3Aimage%2Fa%2F1.0.0%2F1"
            .parse()
            .unwrap();
    let signed = presign(&Method::GET, &uri, "kiln:8080", 60, &params).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("kiln:8080"));
    let req = Req { method: Method::GET, uri: signed, headers, body: vec![] };
    req.check(&verifier(), SECRET, now).unwrap();
}

#[test]
fn session_token_is_reported() {
    let (_, req) = fixture("DeleteComponent");
    let auth = verifier().parse(&req.uri, &req.headers).unwrap();
    assert_eq!(auth.security_token.as_deref(), Some("FQoGZXIvYXdzEXAMPLESESSIONTOKEN//+="));
    assert_eq!(auth.access_key_id, AKID);
    assert_eq!(auth.region, "eu-west-3");
}

#[test]
fn scope_must_name_this_service_and_the_right_date() {
    let (now, req) = fixture("ListImages");
    let err = Verifier::new("s3").parse(&req.uri, &req.headers).unwrap_err();
    assert!(matches!(err, SigV4Error::Mismatch(ref m) if m.contains("correct service")));
    let err = verifier().with_region("us-east-1").parse(&req.uri, &req.headers).unwrap_err();
    assert!(matches!(err, SigV4Error::Mismatch(ref m) if m.contains("region")));
    verifier().with_region("eu-west-3").parse(&req.uri, &req.headers).unwrap();

    let mut req = req;
    req.headers.insert("x-amz-date", HeaderValue::from_static("20240401T003005Z"));
    let err = verifier().parse(&req.uri, &req.headers).unwrap_err();
    assert!(matches!(err, SigV4Error::Mismatch(ref m) if m.contains("Credential scope")));
    let _ = now;
}

fn header_form(authorization: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("kiln"));
    headers.insert("x-amz-date", HeaderValue::from_static("20240101T000000Z"));
    if let Ok(v) = HeaderValue::from_str(authorization) {
        headers.insert("authorization", v);
    }
    headers
}

#[test]
fn missing_and_malformed_authorization() {
    let uri: Uri = "/ListImages".parse().unwrap();
    let mut headers = header_form("");
    headers.remove("authorization");
    assert!(matches!(verifier().parse(&uri, &headers), Err(SigV4Error::Missing(_))));

    let cases = [
        ("AWS4-HMAC-SHA1 Credential=a/20240101/r/imagebuilder/aws4_request", "Unsupported"),
        ("AWS4-HMAC-SHA256", "requires 'Credential'"),
        ("AWS4-HMAC-SHA256 Credential=a/20240101/r/imagebuilder/aws4_request", "requires 'Signature'"),
        ("AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=00", "ACCESS_KEY_ID/YYYYMMDD"),
        (
            "AWS4-HMAC-SHA256 Credential=a/20240101/r/imagebuilder/aws4_request, SignedHeaders=Host, Signature=00",
            "lowercase",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/20240101/r/imagebuilder/aws4_request, Credential=b, SignedHeaders=host, Signature=00",
            "twice",
        ),
        ("AWS4-HMAC-SHA256 garbage", "name=value"),
    ];
    for (value, expected) in cases {
        let err = verifier().parse(&uri, &header_form(value)).unwrap_err();
        assert!(err.to_string().contains(expected), "{value}: {err}");
    }
    let mut headers = header_form(
        "AWS4-HMAC-SHA256 Credential=a/20240101/r/imagebuilder/aws4_request, SignedHeaders=host, Signature=00",
    );
    headers.remove("x-amz-date");
    let err = verifier().parse(&uri, &headers).unwrap_err();
    assert!(err.to_string().contains("'X-Amz-Date' or a 'Date'"), "{err}");
}

#[test]
fn both_auth_mechanisms_at_once_are_refused() {
    let uri: Uri = "/GetImage?X-Amz-Algorithm=AWS4-HMAC-SHA256".parse().unwrap();
    let headers = header_form(
        "AWS4-HMAC-SHA256 Credential=a/20240101/r/imagebuilder/aws4_request, SignedHeaders=host, Signature=00",
    );
    let err = verifier().parse(&uri, &headers).unwrap_err();
    assert!(err.to_string().contains("Only one auth mechanism"), "{err}");
}

#[test]
fn query_form_errors() {
    let headers = HeaderMap::new();
    let err = verifier()
        .parse(&"/GetImage?X-Amz-Algorithm=AWS4-HMAC-SHA256".parse().unwrap(), &headers)
        .unwrap_err();
    assert!(err.to_string().contains("X-Amz-Credential"), "{err}");
    let base = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2F20240101%2Fr%2Fimagebuilder%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=00";
    let err =
        verifier().parse(&format!("/?{base}&X-Amz-Expires=604801").parse().unwrap(), &headers).unwrap_err();
    assert!(err.to_string().contains("X-Amz-Expires"), "{err}");
    let err = verifier()
        .parse(&format!("/?{base}&X-Amz-Expires=1&X-Amz-Expires=2").parse().unwrap(), &headers)
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    verifier().parse(&format!("/?{base}&X-Amz-Expires=60").parse().unwrap(), &headers).unwrap();
}

#[test]
fn bad_signature_hex_is_a_mismatch_not_a_panic() {
    let (now, mut req) = fixture("ListImages");
    let value = req.headers["authorization"].to_str().unwrap().to_owned();
    let cut = value.find("Signature=").unwrap() + "Signature=".len();
    for sig in ["", "zz", "00", &"a".repeat(63), &"é".repeat(32)] {
        if let Ok(v) = HeaderValue::from_str(&format!("{}{sig}", &value[..cut])) {
            req.headers.insert("authorization", v);
            let result = req.check(&verifier(), SECRET, now);
            // Non-ASCII makes the header unreadable (Incomplete); the rest is a wrong signature.
            assert!(
                is_mismatch(result.clone()) || matches!(result, Err(SigV4Error::Incomplete(_))),
                "{sig}: {result:?}"
            );
        }
    }
}

/// Garbage in every header and query the verifier reads: errors, never a panic.
#[test]
fn garbage_never_panics() {
    let pieces = [
        "",
        " ",
        ",",
        "=",
        "/",
        ";",
        "%",
        "%zz",
        "%e9",
        "\t",
        "AWS4-HMAC-SHA256",
        "Credential=",
        "SignedHeaders=",
        "Signature=",
        "a/b/c/d/e",
        "a/20240101/r/imagebuilder/aws4_request",
        "host",
        "HOST",
        "20240101T000000Z",
        "99999999T999999Z",
        "é",
        "x-amz-date",
        "..",
        "&",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Expires=-1",
        "X-Amz-Date=",
        "\u{0}",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        pieces[(seed % pieces.len() as u64) as usize]
    };
    for round in 0..3000 {
        let separator = if round % 2 == 0 { " " } else { "," };
        let auth: String = (0..6).map(|_| next()).collect::<Vec<_>>().join(separator);
        let query: String = (0..4).map(|_| next()).collect::<Vec<_>>().join("&");
        let date = next();
        let mut headers = HeaderMap::new();
        for (name, value) in
            [("authorization", auth.as_str()), ("x-amz-date", date), ("date", next()), ("host", next())]
        {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        let Ok(uri) = format!("/{}?{query}", next()).parse::<Uri>() else { continue };
        if let Ok(auth) = verifier().parse(&uri, &headers) {
            let request = Request { method: &Method::GET, uri: &uri, headers: &headers, body: b"x" };
            let _ = verifier().verify(&auth, &request, SECRET, Utc::now());
        }
    }
}

#[test]
fn canonical_uri_normalises_then_encodes_again() {
    assert_eq!(canonical_uri(""), "/");
    assert_eq!(canonical_uri("/"), "/");
    assert_eq!(canonical_uri("/a/./b/../c//d/"), "/a/c/d/");
    assert_eq!(canonical_uri("/../.."), "/");
    assert_eq!(canonical_uri("/tags/arn%3Aaws%2Fx"), "/tags/arn%253Aaws%252Fx");
    assert_eq!(canonical_uri("/a b~c"), "/a%20b~c");
}

#[test]
fn canonical_query_is_sorted_and_strictly_encoded() {
    assert_eq!(canonical_query("", false), "");
    assert_eq!(canonical_query("b=2&a=1&a=0", false), "a=0&a=1&b=2");
    assert_eq!(canonical_query("k=a+b&s=a%20b&c=%3a", false), "c=%3A&k=a%2Bb&s=a%20b");
    assert_eq!(canonical_query("flag&x=", false), "flag=&x=");
    assert_eq!(canonical_query("a=1&X-Amz-Signature=00", true), "a=1");
    assert_eq!(canonical_query("a=1&X-Amz-Signature=00", false), "X-Amz-Signature=00&a=1");
    assert_eq!(canonical_query("é=%C3%A9&&", false), "%C3%A9=%C3%A9");
}

#[test]
fn trim_all_collapses_whitespace() {
    let mut out = Vec::new();
    trim_all(b"  several   spaces\there  ", &mut out);
    assert_eq!(out, b"several spaces here");
}

#[test]
fn errors_map_to_aws_codes() {
    let codes: Vec<&str> = [
        SigV4Error::Missing(String::new()),
        SigV4Error::Incomplete(String::new()),
        SigV4Error::unknown_access_key(),
        SigV4Error::Mismatch(String::new()),
        SigV4Error::Expired(String::new()),
    ]
    .into_iter()
    .map(|e| ApiError::from(e).code())
    .collect();
    assert_eq!(
        codes,
        [
            "MissingAuthenticationToken",
            "IncompleteSignature",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "RequestExpired"
        ]
    );
}
