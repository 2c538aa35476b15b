//! Distribution to an S3-compatible store: moto's S3 server (PyPI `moto[server]`) started on
//! 127.0.0.1 by the test. moto is the S3 implementation already in kiln's test tools; it
//! speaks the S3 REST protocol object_store uses (PUT, GET, HEAD, DELETE, conditional
//! headers), so this exercises the same code path a real S3 service or Garage would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_dist::{DistError, ImageRef, Keyring, S3Options, Target, is_published, push, verify};

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

fn start_moto() -> Option<Moto> {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = match Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("S3 tests need `moto_server` (pip install 'moto[server]'): {e}");
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
    panic!("moto_server did not listen on 127.0.0.1:{port} within 30 s");
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

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_s3_region_round_trips_and_refuses_a_missing_chunk() {
    let Some(moto) = start_moto() else { return };
    create_bucket(moto.port, "images");
    let s3 = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    };
    let work = tempfile::tempdir().unwrap();
    let ring = Keyring::open(&work.path().join("keys")).unwrap();
    ring.create("s3-key").unwrap();
    let target = Target::open("s3-region", "s3://images/kiln", Some("s3-key".into()), &s3).unwrap();
    let disk = work.path().join("disk.raw");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    let image = ImageRef { name: "s3".into(), version: "1.0.0".into(), build: 1 };
    let first = push(&target, &ring, &image, std::slice::from_ref(&disk), b"{}", 4).await.unwrap();
    assert_eq!(first.uploaded_bytes, data.len() as u64);
    assert!(is_published(&target, &image).await.unwrap());
    let again = push(&target, &ring, &image, std::slice::from_ref(&disk), b"{}", 4).await.unwrap();
    assert_eq!(again.uploaded_bytes, 0, "everything is in the bucket already");
    let out = work.path().join("out");
    verify(&target, &ring, &image, None, Some(&out)).await.unwrap();
    assert_eq!(std::fs::read(out.join("disk.raw")).unwrap(), data);

    // A chunk deleted behind kiln's back (through the S3 API) is named at verify.
    use object_store::ObjectStoreExt;
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("images")
        .with_endpoint(format!("http://127.0.0.1:{}", moto.port))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let index = bucket.get(&"kiln/images/s3/1.0.0/1/index.json".into()).await.unwrap().bytes().await.unwrap();
    let index: kiln_dist::Index = serde_json::from_slice(&index).unwrap();
    let id = &index.artifacts[0].chunks[0].id;
    bucket.delete(&format!("kiln/chunks/{}/{id}", &id[..2]).into()).await.unwrap();
    let err = verify(&target, &ring, &image, None, None).await.unwrap_err();
    assert!(matches!(&err, DistError::Tampered(m) if m.contains("missing")), "{err}");
}
