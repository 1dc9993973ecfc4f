//! SigV4 for the one request shape the relay signs itself: a GetRecords POST.
//!
//! `aws-sigv4`'s general signer takes any request, so every call parses the URL, collects and
//! sorts the headers, builds each canonical string in fresh allocations and derives the signing
//! key again with four HMACs, a large share of what an idle shard's poll cost the relay
//! (docs/performance.md). Here the request's method, path, headers and scope are fixed when the
//! endpoint is known, the signing key is kept until the credentials or the day change, and
//! `aws-sigv4`'s own primitive derives the key. The signature is the HMAC that `aws-sigv4`
//! computes, hex-encoded into a buffer: `hex::encode` builds its string one `char` at a time,
//! and a call encodes three digests. The test below holds the result byte for byte to the
//! general signer's.

use std::sync::Mutex;
use std::time::SystemTime;

use aws_sdk_dynamodbstreams::config::Credentials;
use aws_sigv4::sign::v4::generate_signing_key;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Url;
use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Signs GetRecords calls to one endpoint.
pub(super) struct Signer {
    /// The canonical request from the method to the `host` line.
    head: String,
    /// The canonical header lines after `x-amz-date` and `x-amz-security-token`.
    tail: String,
    /// The signed headers' names, without and with the session token.
    signed_headers: [String; 2],
    region: String,
    service: &'static str,
    key: Mutex<Option<SigningKey>>,
}

/// A derived signing key and what it was derived from: it is valid for one secret and one day.
struct SigningKey {
    secret: String,
    day: String,
    key: Vec<u8>,
}

/// The headers a signed request carries besides those it was signed with.
pub(super) struct Signature {
    pub amz_date: HeaderValue,
    pub authorization: HeaderValue,
    pub security_token: Option<HeaderValue>,
}

impl Signer {
    /// `headers` are the other headers the request sends and signs, lowercase, in order; none
    /// sorts between `host` and `x-amz-security-token`.
    pub(super) fn new(
        url: &Url,
        region: &str,
        service: &'static str,
        headers: &[(&str, &str)],
    ) -> Signer {
        let (before, after): (Vec<_>, Vec<_>) =
            headers.iter().partition(|(name, _)| *name < "host");
        assert!(
            after.iter().all(|(name, _)| *name > "x-amz-security-token"),
            "a signed header sorts among host, x-amz-date and x-amz-security-token"
        );
        let lines = |hs: &[(&str, &str)]| -> String {
            hs.iter().map(|(n, v)| format!("{n}:{v}\n")).collect()
        };
        let names = |hs: &[(&str, &str)]| -> Vec<String> {
            hs.iter().map(|(n, _)| n.to_string()).collect()
        };
        let mut host = url.host_str().unwrap_or_default().to_owned();
        if let Some(port) = url.port() {
            host.push_str(&format!(":{port}"));
        }
        let head = format!(
            "POST\n{}\n\n{}host:{host}\n",
            canonical_path(url.path()),
            lines(&before)
        );
        let signed = |token: &[&str]| -> String {
            let mut all = names(&before);
            all.extend(["host", "x-amz-date"].map(str::to_owned));
            all.extend(token.iter().map(|t| t.to_string()));
            all.extend(names(&after));
            all.join(";")
        };
        Signer {
            head,
            tail: lines(&after),
            signed_headers: [signed(&[]), signed(&["x-amz-security-token"])],
            region: region.to_owned(),
            service,
            key: Mutex::new(None),
        }
    }

    /// Signs a request with `body` at `time` (the clock already corrected for skew).
    pub(super) fn sign(
        &self,
        credentials: &Credentials,
        time: SystemTime,
        body: &[u8],
    ) -> Result<Signature, String> {
        let amz_date = amz_date(time::OffsetDateTime::from(time));
        let day = &amz_date[..8];
        let token = credentials.session_token();
        let signed_headers = &self.signed_headers[usize::from(token.is_some())];

        let mut canonical = String::with_capacity(self.head.len() + 512);
        canonical.push_str(&self.head);
        canonical.push_str("x-amz-date:");
        canonical.push_str(&amz_date);
        canonical.push('\n');
        if let Some(token) = token {
            canonical.push_str("x-amz-security-token:");
            canonical.push_str(token.trim());
            canonical.push('\n');
        }
        canonical.push_str(&self.tail);
        canonical.push('\n');
        canonical.push_str(signed_headers);
        canonical.push('\n');
        push_hex(&mut canonical, &Sha256::digest(body));

        // Built by pushes: `format!` cost more per call than the rest of the string to sign.
        let mut scope = String::with_capacity(64);
        for part in [day, "/", &self.region, "/", self.service, "/aws4_request"] {
            scope.push_str(part);
        }
        let mut string_to_sign = String::with_capacity(160);
        for part in [ALGORITHM, "\n", &amz_date, "\n", &scope, "\n"] {
            string_to_sign.push_str(part);
        }
        push_hex(&mut string_to_sign, &Sha256::digest(canonical.as_bytes()));
        let signature = {
            let mut cached = self.key.lock().expect("no signer panics holding the key");
            let secret = credentials.secret_access_key();
            if cached
                .as_ref()
                .is_none_or(|k| k.day != day || k.secret != secret)
            {
                *cached = Some(SigningKey {
                    secret: secret.to_owned(),
                    day: day.to_owned(),
                    key: generate_signing_key(secret, time, &self.region, self.service)
                        .as_ref()
                        .to_vec(),
                });
            }
            let key = &cached.as_ref().expect("set above").key;
            let mut mac =
                Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
            mac.update(string_to_sign.as_bytes());
            mac.finalize().into_bytes()
        };
        let mut authorization = String::with_capacity(256);
        for part in [
            ALGORITHM,
            " Credential=",
            credentials.access_key_id(),
            "/",
            &scope,
            ", SignedHeaders=",
            signed_headers,
            ", Signature=",
        ] {
            authorization.push_str(part);
        }
        push_hex(&mut authorization, &signature);
        let invalid =
            |what: &str| format!("the AWS credentials' {what} is not a valid header value");
        Ok(Signature {
            amz_date: HeaderValue::try_from(amz_date).expect("digits and letters"),
            authorization: HeaderValue::try_from(authorization)
                .map_err(|_| invalid("access key id"))?,
            security_token: token
                .map(HeaderValue::from_str)
                .transpose()
                .map_err(|_| invalid("session token"))?,
        })
    }
}

/// `YYYYMMDDTHHMMSSZ`, two digits at a time.
fn amz_date(when: time::OffsetDateTime) -> String {
    let year = when.year().clamp(0, 9999) as u16;
    let pairs = [
        (year / 100) as u8,
        (year % 100) as u8,
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second(),
    ];
    let mut out = String::with_capacity(16);
    for (i, n) in pairs.into_iter().enumerate() {
        if i == 4 {
            out.push('T');
        }
        out.push(char::from(b'0' + n / 10));
        out.push(char::from(b'0' + n % 10));
    }
    out.push('Z');
    out
}

/// Appends a SHA-256 digest in lowercase hex.
fn push_hex(out: &mut String, digest: &[u8]) {
    let mut buf = [0u8; 64];
    hex::encode_to_slice(digest, &mut buf).expect("a SHA-256 digest is 32 bytes");
    out.push_str(std::str::from_utf8(&buf).expect("hex digits are ASCII"));
}

/// The path as SigV4 canonicalizes it for every service but S3: the URL's (already
/// percent-encoded once and without dot segments) encoded once more.
fn canonical_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_smithy_runtime_api::client::identity::Identity;

    use super::*;

    const HEADERS: &[(&str, &str)] = &[
        ("content-type", "application/x-amz-json-1.0"),
        ("x-amz-target", "DynamoDBStreams_20120810.GetRecords"),
    ];

    /// What the general signer puts on the same request.
    fn general(
        url: &str,
        credentials: &Credentials,
        time: SystemTime,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let identity = Identity::from(credentials.clone());
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-central-1")
            .name("dynamodb")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let request = SignableRequest::new(
            "POST",
            url,
            HEADERS.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let (headers, _) = instructions.into_parts();
        let mut out: Vec<_> = headers
            .into_iter()
            .map(|h| (h.name().to_owned(), h.value().to_owned()))
            .collect();
        out.sort();
        out
    }

    fn ours(signature: &Signature) -> Vec<(String, String)> {
        let text = |v: &HeaderValue| v.to_str().unwrap().to_owned();
        let mut out = vec![
            ("authorization".to_owned(), text(&signature.authorization)),
            ("x-amz-date".to_owned(), text(&signature.amz_date)),
        ];
        if let Some(token) = &signature.security_token {
            out.push(("x-amz-security-token".to_owned(), text(token)));
        }
        out.sort();
        out
    }

    #[test]
    fn signatures_are_the_general_signers_byte_for_byte() {
        let keys = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let session = Credentials::new(
            "ASIAEXAMPLE",
            "another/secret+key",
            Some("IQoJb3JpZ2luX2VjEPT//////////wEaDGV1LWNlbnRyYWwtMSJHMEUCIQ==".to_owned()),
            None,
            "test",
        );
        let urls = [
            "https://streams.dynamodb.eu-central-1.amazonaws.com",
            "https://streams.dynamodb.eu-central-1.amazonaws.com/",
            "http://127.0.0.1:8000",
            "http://localhost:4566/streams/a%20b/",
            "https://[::1]:8443/x",
        ];
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_601_599);
        // Across midnight (the signing key changes with the day) and back, with one signer per
        // endpoint reused for every call, as the reader reuses it.
        let times = [0, 1, 2, 86_400 * 40 + 7, 3].map(|s| start + Duration::from_secs(s));
        let bodies: [&[u8]; 2] = [
            br#"{"ShardIterator":"arn:aws:dynamodb:eu-central-1:1:table/t/stream/2026|1|AAAA","Limit":1000}"#,
            b"",
        ];
        for url in urls {
            let signer = Signer::new(
                &Url::parse(url).unwrap(),
                "eu-central-1",
                "dynamodb",
                HEADERS,
            );
            for time in times {
                for credentials in [&keys, &session, &keys] {
                    for body in bodies {
                        let signature = signer.sign(credentials, time, body).unwrap();
                        assert_eq!(
                            ours(&signature),
                            general(url, credentials, time, body),
                            "{url} at {time:?} with {}",
                            credentials.access_key_id()
                        );
                    }
                }
            }
        }
    }
}
