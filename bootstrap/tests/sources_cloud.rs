//! The EC2, GCE and Azure user-data sources against the in-process metadata fakes
//! (nodeimg-tests `fakes::{imds, gce, azure}`), and the fakes' own documented rules.

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine;
use nodeboot::sources::{
    fetch_user_data, source_for, Source, SourceError, SourceKind, SourceOptions,
};
use nodeimg_tests::fakes::azure::FakeAzure;
use nodeimg_tests::fakes::gce::FakeGce;
use nodeimg_tests::fakes::imds::FakeImds;
use nodeimg_tests::fakes::BlackHole;

const DOC: &[u8] = b"version = 1\n[node]\nrole = \"join-worker\"\n";

fn opts(kind: SourceKind) -> SourceOptions {
    SourceOptions {
        kind,
        timeout: Duration::from_secs(2),
        retries: 2,
        backoff: Duration::from_millis(10),
        ..SourceOptions::default()
    }
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn b64(data: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .into_bytes()
}

fn ec2(imds: &FakeImds) -> Box<dyn Source> {
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = imds.url();
    source_for(SourceKind::Ec2, &o).unwrap()
}

#[test]
fn ec2_user_data_over_imdsv2() {
    let imds = FakeImds::start();
    imds.set_user_data(Some(DOC));
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = imds.url();
    let ud = fetch_user_data(&o).unwrap();
    assert_eq!(ud.source, "ec2");
    assert_eq!(ud.bytes, DOC);
    assert_eq!(imds.token_puts(), 1);
}

#[test]
fn ec2_reuses_token_and_renews_it_after_401() {
    let imds = FakeImds::start();
    imds.set_user_data(Some(DOC));
    let src = ec2(&imds);
    assert_eq!(src.fetch().unwrap(), DOC);
    assert_eq!(src.fetch().unwrap(), DOC);
    assert_eq!(imds.token_puts(), 1, "the session token is cached");
    imds.expire_tokens();
    assert_eq!(src.fetch().unwrap(), DOC);
    assert_eq!(imds.unauthorized(), 1, "the expired token was tried once");
    assert_eq!(imds.token_puts(), 2, "then dropped and a new one requested");
}

#[test]
fn ec2_without_user_data_is_absent() {
    let imds = FakeImds::start();
    let err = ec2(&imds).fetch().unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Absent {
                source_name: "ec2",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");
    // Forced, "absent" is an error for the caller.
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = imds.url();
    let msg = format!("{:#}", fetch_user_data(&o).unwrap_err());
    assert!(msg.contains("no user-data"), "{msg}");
}

#[test]
fn ec2_disabled_imds_fails_fast() {
    let imds = FakeImds::start();
    imds.set_user_data(Some(DOC));
    imds.set_disabled(true);
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = imds.url();
    o.retries = 4;
    o.backoff = Duration::from_millis(300);
    let started = Instant::now();
    let err = source_for(SourceKind::Ec2, &o)
        .unwrap()
        .fetch()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::Failed { .. }), "{msg}");
    assert!(msg.contains("403") && msg.contains("disabled"), "{msg}");
    // Four retries with backoff would take at least 300+600+1200+2400 ms.
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "no retry on 403"
    );
}

#[test]
fn ec2_gzip_and_base64_payloads_are_decoded() {
    let imds = FakeImds::start();
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = imds.url();
    for payload in [gz(DOC), b64(DOC), b64(&gz(DOC))] {
        imds.set_user_data(Some(&payload));
        assert_eq!(fetch_user_data(&o).unwrap().bytes, DOC);
    }
}

#[test]
fn ec2_malformed_payloads() {
    let imds = FakeImds::start();
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = imds.url();
    let mut broken = gz(DOC);
    broken.truncate(12);
    imds.set_user_data(Some(&broken));
    let msg = format!("{:#}", fetch_user_data(&o).unwrap_err());
    assert!(msg.contains("not valid gzip"), "{msg}");
    // Not base64 at all: handed on unchanged for the schema parser to reject.
    imds.set_user_data(Some(b"%%% not base64, not toml %%%"));
    assert_eq!(
        fetch_user_data(&o).unwrap().bytes,
        b"%%% not base64, not toml %%%"
    );
    // Empty user-data counts as none.
    imds.set_user_data(Some(b"  \n"));
    let msg = format!("{:#}", fetch_user_data(&o).unwrap_err());
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn ec2_oversize_payload_is_refused_without_reading_it_all() {
    let imds = FakeImds::start();
    let src = ec2(&imds);
    // Declared length: refused from the header.
    imds.set_user_data(Some(&vec![b'#'; 10 * 1024 * 1024]));
    let msg = src.fetch().unwrap_err().to_string();
    assert!(msg.contains("larger than the limit"), "{msg}");
    // No length (chunked): reading stops one byte past the limit.
    imds.set_streamed_user_data(10 * 1024 * 1024);
    let started = Instant::now();
    let msg = src.fetch().unwrap_err().to_string();
    assert!(msg.contains("larger than the limit"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(200));
    let served = imds.streamed_bytes();
    eprintln!("fake IMDS wrote {served} of 10485760 streamed bytes before the client hung up");
    assert!(
        served < 5 * 1024 * 1024,
        "the client must hang up early, the server wrote {served} bytes"
    );
}

#[test]
fn unanswering_metadata_service_times_out() {
    let hole = BlackHole::start();
    let mut o = opts(SourceKind::Ec2);
    o.ec2_base = hole.url();
    o.timeout = Duration::from_millis(300);
    o.retries = 1;
    let started = Instant::now();
    let msg = format!("{:#}", fetch_user_data(&o).unwrap_err());
    let took = started.elapsed();
    assert!(
        msg.contains("timed out") || msg.contains("timeout"),
        "{msg}"
    );
    assert!(msg.contains("2 attempts"), "{msg}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(hole.connections() >= 1);
}

#[test]
fn imds_fake_enforces_token_rules() {
    let imds = FakeImds::start();
    let c = reqwest::blocking::Client::new();
    let url = format!("{}/latest/api/token", imds.url());
    let put = |ttl: Option<&str>| {
        let mut r = c.put(&url);
        if let Some(t) = ttl {
            r = r.header("X-aws-ec2-metadata-token-ttl-seconds", t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(put(None), 400);
    assert_eq!(put(Some("0")), 400);
    assert_eq!(put(Some("21601")), 400);
    assert_eq!(put(Some("abc")), 400);
    assert_eq!(put(Some("21600")), 200);
    assert_eq!(c.get(&url).send().unwrap().status().as_u16(), 405);
    let fwd = c
        .put(&url)
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .unwrap();
    assert_eq!(fwd.status().as_u16(), 403);
    let ud = format!("{}/latest/user-data", imds.url());
    assert_eq!(c.get(&ud).send().unwrap().status().as_u16(), 401);
    assert_eq!(
        c.get(&ud)
            .header("X-aws-ec2-metadata-token", "forged")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    // A token with a 1 s TTL stops working after a second.
    let token = c
        .put(&url)
        .header("X-aws-ec2-metadata-token-ttl-seconds", "1")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let get = || {
        c.get(&ud)
            .header("X-aws-ec2-metadata-token", &token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(), 404, "valid token, no user-data");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(), 401, "expired");
}

fn gce(fake: &FakeGce) -> SourceOptions {
    let mut o = opts(SourceKind::Gce);
    o.gce_base = fake.url();
    o
}

#[test]
fn gce_user_data_attribute() {
    let fake = FakeGce::start();
    fake.set_attribute("user-data", Some(DOC));
    let ud = fetch_user_data(&gce(&fake)).unwrap();
    assert_eq!((ud.source, ud.bytes.as_slice()), ("gce", DOC));
    assert!(fake
        .requests()
        .contains(&"/computeMetadata/v1/instance/attributes/user-data".to_owned()));
}

#[test]
fn gce_declared_base64_encoding() {
    let fake = FakeGce::start();
    fake.set_attribute("user-data", Some(&b64(&gz(DOC))));
    fake.set_attribute("user-data-encoding", Some(b"base64"));
    assert_eq!(fetch_user_data(&gce(&fake)).unwrap().bytes, DOC);
    fake.set_attribute("user-data", Some(b"@@not base64@@"));
    let msg = format!("{:#}", fetch_user_data(&gce(&fake)).unwrap_err());
    assert!(msg.contains("not valid base64"), "{msg}");
    fake.set_attribute("user-data-encoding", Some(b"rot13"));
    let msg = format!("{:#}", fetch_user_data(&gce(&fake)).unwrap_err());
    assert!(msg.contains("unsupported user-data-encoding"), "{msg}");
}

#[test]
fn gce_without_user_data_is_absent() {
    let fake = FakeGce::start();
    let err = source_for(SourceKind::Gce, &gce(&fake))
        .unwrap()
        .fetch()
        .unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Absent {
                source_name: "gce",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn gce_fake_requires_the_flavor_header() {
    let fake = FakeGce::start();
    fake.set_attribute("user-data", Some(DOC));
    let url = format!(
        "{}/computeMetadata/v1/instance/attributes/user-data",
        fake.url()
    );
    let c = reqwest::blocking::Client::new();
    assert_eq!(c.get(&url).send().unwrap().status().as_u16(), 403);
    let r = c
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["metadata-flavor"], "Google");
}

fn azure(fake: &FakeAzure) -> SourceOptions {
    let mut o = opts(SourceKind::Azure);
    o.azure_base = fake.url();
    o
}

#[test]
fn azure_user_data_is_base64_decoded() {
    let fake = FakeAzure::start();
    fake.set_user_data(Some(DOC));
    let ud = fetch_user_data(&azure(&fake)).unwrap();
    assert_eq!((ud.source, ud.bytes.as_slice()), ("azure", DOC));
    // gzip inside Azure's own base64.
    fake.set_user_data(Some(&gz(DOC)));
    assert_eq!(fetch_user_data(&azure(&fake)).unwrap().bytes, DOC);
}

#[test]
fn azure_empty_is_absent_and_malformed_fails() {
    let fake = FakeAzure::start();
    let err = source_for(SourceKind::Azure, &azure(&fake))
        .unwrap()
        .fetch()
        .unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Absent {
                source_name: "azure",
                ..
            }
        ),
        "{err}"
    );
    fake.set_raw_user_data("this is *not* base64");
    let msg = format!("{:#}", fetch_user_data(&azure(&fake)).unwrap_err());
    assert!(msg.contains("must be base64"), "{msg}");
}

#[test]
fn azure_fake_requires_metadata_header_and_api_version() {
    let fake = FakeAzure::start();
    let c = reqwest::blocking::Client::new();
    let base = fake.url();
    let status = |url: String, hdr: bool| {
        let mut r = c.get(url);
        if hdr {
            r = r.header("Metadata", "true");
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(
        status(
            format!("{base}/metadata/instance?api-version=2021-08-01"),
            false
        ),
        400
    );
    assert_eq!(
        status(
            format!("{base}/metadata/instance?api-version=2021-08-01"),
            true
        ),
        200
    );
    assert_eq!(
        status(
            format!("{base}/metadata/instance?api-version=2019-06-01"),
            true
        ),
        200
    );
    assert_eq!(
        status(
            format!("{base}/metadata/instance?api-version=1999-01-01"),
            true
        ),
        400
    );
    assert_eq!(status(format!("{base}/metadata/instance"), true), 400);
}
