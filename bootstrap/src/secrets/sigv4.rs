//! AWS Signature Version 4 for requests with the whole payload in memory (the JSON and Query
//! protocols). Written from the AWS "Signature Version 4 signing process" documentation and
//! checked against its published test vectors (below) and against moto with signature
//! checking on (`bootstrap/tests/secrets_aws.rs`).

use hmac::{Hmac, Mac};
use nodeimg_common::Secret;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// AWS credentials. The secret key and session token never print.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// The parts of a request that are signed.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a url::Url,
    /// Headers to send and sign (names in any case). `host`, `x-amz-date` and
    /// `x-amz-security-token` are added by [`sign`].
    pub headers: &'a [(String, String)],
    pub payload: &'a [u8],
}

/// Sign `req` for `service` in `region` at `now`. Returns the headers to add to the request:
/// `x-amz-date`, `x-amz-security-token` (temporary credentials) and `authorization`.
pub fn sign(
    req: &Request<'_>,
    creds: &Credentials,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> Vec<(String, String)> {
    let (amz_date, date) = amz_timestamp(now);
    let mut extra = vec![("x-amz-date".to_owned(), amz_date.clone())];
    if let Some(t) = &creds.session_token {
        extra.push(("x-amz-security-token".to_owned(), t.expose().to_owned()));
    }

    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .chain(extra.iter())
        .map(|(k, v)| (k.to_ascii_lowercase(), normalize_value(v)))
        .collect();
    if !headers.iter().any(|(k, _)| k == "host") {
        headers.push(("host".to_owned(), host_header(req.url)));
    }
    headers.sort();
    // Repeated header names are signed once, values joined by commas in request order.
    let mut canonical: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        match canonical.last_mut() {
            Some((lk, lv)) if *lk == k => {
                lv.push(',');
                lv.push_str(&v);
            }
            _ => canonical.push((k, v)),
        }
    }
    let signed_headers = canonical
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = canonical
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect();

    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.url),
        canonical_query(req.url),
        canonical_headers,
        signed_headers,
        hex::encode(Sha256::digest(req.payload))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(creds.secret_access_key.expose(), &date, region, service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));

    extra.push((
        "authorization".to_owned(),
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    extra
}

/// `(20150830T123600Z, 20150830)` for the instant `now` (converted to UTC).
pub fn amz_timestamp(now: OffsetDateTime) -> (String, String) {
    let t = now.to_offset(time::UtcOffset::UTC);
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    (stamp, date)
}

/// The Host header value as HTTP clients send it: the port only when not the default.
pub fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Trim and collapse runs of spaces, as the canonical form requires.
fn normalize_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The path, each segment URI-encoded once more (services other than S3 expect the already
/// percent-encoded path to be encoded again; for plain paths such as `/` both are the same).
fn canonical_uri(url: &url::Url) -> String {
    let path = url.path();
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// Query parameters decoded, re-encoded strictly, sorted by name then value.
fn canonical_query(url: &url::Url) -> String {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (uri_encode(&k), uri_encode(&v)))
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding: everything but `A-Z a-z 0-9 - _ . ~` becomes `%XX` (upper-case hex).
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AWS SigV4 test suite's credentials and instant (2015-08-30T12:36:00Z).
    fn suite_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    fn authorization(method: &str, url: &str, headers: &[(String, String)]) -> String {
        let url = url::Url::parse(url).unwrap();
        let out = sign(
            &Request {
                method,
                url: &url,
                headers,
                payload: b"",
            },
            &suite_creds(),
            "us-east-1",
            "service",
            at(1_440_938_160),
        );
        out.into_iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1
    }

    #[test]
    fn suite_get_vanilla() {
        assert_eq!(
            authorization("GET", "https://example.amazonaws.com/", &[]),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn suite_post_vanilla() {
        assert!(
            authorization("POST", "https://example.amazonaws.com/", &[]).ends_with(
                "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            )
        );
    }

    #[test]
    fn suite_get_vanilla_query_order_key_case() {
        assert!(authorization(
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            &[]
        )
        .ends_with("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"));
    }

    /// Amazon S3 API reference, "Signature calculations for the Authorization header",
    /// example "GET Object" (a ranged GET of test.txt).
    #[test]
    fn s3_documented_get_object() {
        let url = url::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let headers = vec![
            ("Range".to_owned(), "bytes=0-9".to_owned()),
            ("x-amz-content-sha256".to_owned(), empty.to_owned()),
        ];
        let out = sign(
            &Request {
                method: "GET",
                url: &url,
                headers: &headers,
                payload: b"",
            },
            &Credentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".to_owned(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                session_token: None,
            },
            "us-east-1",
            "s3",
            at(1_369_353_600), // 2013-05-24T00:00:00Z
        );
        let authz = &out.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(
            authz,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn session_token_is_signed_and_sent() {
        let url = url::Url::parse("http://127.0.0.1:5055/").unwrap();
        let mut creds = suite_creds();
        creds.session_token = Some(Secret::new("session"));
        let out = sign(
            &Request {
                method: "POST",
                url: &url,
                headers: &[],
                payload: b"{}",
            },
            &creds,
            "us-east-1",
            "secretsmanager",
            at(0),
        );
        assert_eq!(out[0], ("x-amz-date".into(), "19700101T000000Z".into()));
        assert_eq!(out[1], ("x-amz-security-token".into(), "session".into()));
        assert!(out[2]
            .1
            .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"));
        assert_eq!(host_header(&url), "127.0.0.1:5055");
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~d*"), "a%20b%2Fc~d%2A");
    }
}
