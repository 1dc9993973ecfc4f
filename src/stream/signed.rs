//! GetRecords, signed (SigV4) and sent by the relay itself instead of through the SDK.
//!
//! A shard is polled for as long as the relay runs, mostly finding nothing, so what one poll
//! costs is what an idle stream costs. Through the SDK, the orchestration around each call
//! (configuration layers, interceptors, endpoint rules, the identity cache, retry classifiers)
//! cost several times the request itself (docs/performance.md). This path keeps what a poll
//! needs and decides the rest once:
//!
//! - the endpoint is resolved at start by the SDK's own rules and configuration
//!   (`AWS_ENDPOINT_URL_DYNAMODB_STREAMS`, `AWS_ENDPOINT_URL`, the profile, the region, FIPS and
//!   dual-stack), so it is the URL the SDK would call;
//! - credentials come from the SDK's default chain (environment, profile, web identity,
//!   container and instance credentials), cached here until shortly before they expire;
//! - the request is signed with SigV4 by [`super::sigv4`], built on `aws-sigv4`'s primitives for
//!   this one request shape, with the clock corrected by the skew the last response's `Date`
//!   showed, as the SDK does;
//! - one hyper client ([`super::connection`]) keeps connections alive, with proxies from
//!   `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` and trust anchors from the system store
//!   (`SSL_CERT_FILE` replaces it), as the SDK's HTTPS client reads them;
//! - errors are classified by [`StreamError::classify`], the same function the SDK's errors go
//!   through. There is no retry here: every caller already backs off and retries by that class.
//!
//! The other Streams calls (DescribeStream, GetShardIterator) are rare and stay on the SDK.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_dynamodbstreams::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_dynamodbstreams::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use aws_types::service_config::ServiceConfigKey;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderMap, HeaderName, HeaderValue,
    USER_AGENT,
};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use reqwest::Url;
use tokio::sync::Mutex;
use tracing::warn;

use super::StreamError;
use super::connection::HttpClient;
use super::page::{RecordsPage, page_buffer};
use super::sigv4::{Signature, Signer};
use crate::metrics;

const TARGET: &str = "DynamoDBStreams_20120810.GetRecords";
const JSON_1_0: &str = "application/x-amz-json-1.0";
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
/// The headers every GetRecords call sends and signs besides `host` and the signature's own.
static SIGNED_HEADERS: [(HeaderName, &str); 2] = [
    (CONTENT_TYPE, JSON_1_0),
    (HeaderName::from_static("x-amz-target"), TARGET),
];
/// The signing name of DynamoDB Streams (it shares DynamoDB's).
const SIGNING_NAME: &str = "dynamodb";
/// Credentials are renewed this long before they expire, so a request signed with them is
/// not refused while in flight; the SDK's identity cache keeps the same margin.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(10);

/// Names the caller in AWS's request logs and support cases, as the SDK's own User-Agent
/// does for the other calls.
const USER_AGENT_VALUE: &str = concat!("dynamodb-nakadi-relay/", env!("CARGO_PKG_VERSION"));

/// Where GetRecords calls go, their signer and the client that sends them.
struct Endpoint {
    uri: Uri,
    signer: Signer,
    http: HttpClient,
}

/// The body of a GetRecords call.
#[derive(serde::Serialize)]
struct GetRecordsInput<'a> {
    #[serde(rename = "ShardIterator")]
    shard_iterator: &'a str,
    #[serde(rename = "Limit")]
    limit: u32,
}

/// Sends GetRecords calls. One per process, shared by every shard worker.
pub struct RecordsReader {
    /// The resolved endpoint, or why there is none (no region): reported by every call, after
    /// the start-up's DescribeStream (on the SDK) has already reported it.
    endpoint: Result<Endpoint, String>,
    credentials: CredentialsCache,
    /// Server time minus local time in milliseconds, from the last response's `Date`.
    skew_ms: AtomicI64,
    /// Cuts an attempt (connection, request and the whole body) that hangs, as the SDK's
    /// attempt timeout does.
    attempt_timeout: Duration,
}

impl RecordsReader {
    /// `connect_timeout` and `attempt_timeout` are the SDK clients' own, so a hung connection
    /// is cut as it would be there.
    pub async fn new(
        sdk: &SdkConfig,
        connect_timeout: Duration,
        attempt_timeout: Duration,
    ) -> RecordsReader {
        let region = sdk.region().map(|r| r.to_string());
        let endpoint = match &region {
            Some(region) => resolve_endpoint(sdk, region).await.and_then(|url| {
                let url = Url::parse(&url)
                    .map_err(|e| format!("DynamoDB Streams endpoint {url:?}: {e}"))?;
                let signed = SIGNED_HEADERS
                    .each_ref()
                    .map(|(name, value)| (name.as_str(), *value));
                let signer = Signer::new(&url, region, SIGNING_NAME, &signed);
                let uri: Uri = url
                    .as_str()
                    .parse()
                    .map_err(|e| format!("DynamoDB Streams endpoint {url}: {e}"))?;
                // DynamoDB Streams speaks HTTP/1.1, as the SDK's client does with it.
                let http = HttpClient::new(&uri, connect_timeout);
                Ok(Endpoint { uri, signer, http })
            }),
            None => Err("no AWS region is configured (AWS_REGION)".to_owned()),
        };
        RecordsReader {
            endpoint,
            credentials: CredentialsCache {
                provider: sdk.credentials_provider(),
                current: Mutex::new(None),
            },
            skew_ms: AtomicI64::new(0),
            attempt_timeout,
        }
    }

    /// Up to 1,000 records after `iterator`.
    pub async fn get_records(&self, iterator: &str) -> Result<RecordsPage, StreamError> {
        let result = self.call(iterator).await;
        if let Err(e) = &result {
            metrics::aws_error("GetRecords", e.kind());
        }
        result
    }

    async fn call(&self, iterator: &str) -> Result<RecordsPage, StreamError> {
        let endpoint = self
            .endpoint
            .as_ref()
            .map_err(|e| StreamError::Other(e.clone()))?;
        let credentials = self.credentials.get().await?;
        let body = Bytes::from(
            serde_json::to_vec(&GetRecordsInput {
                shard_iterator: iterator,
                limit: 1000,
            })
            .expect("a string serializes"),
        );
        let signature = endpoint
            .signer
            .sign(&credentials, self.now(), &body)
            .map_err(|e| StreamError::Other(format!("signing GetRecords: {e}")))?;
        tokio::time::timeout(
            self.attempt_timeout,
            self.exchange(endpoint, &signature, body),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StreamError::Other(format!(
                "GetRecords: no answer within {:?}",
                self.attempt_timeout
            )))
        })
    }

    /// The request and its whole answer.
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        signature: &Signature,
        body: Bytes,
    ) -> Result<RecordsPage, StreamError> {
        let mut attempt = 0;
        let response = loop {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = endpoint.uri.clone();
            let headers = request.headers_mut();
            headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
            for (name, value) in &SIGNED_HEADERS {
                headers.insert(name.clone(), HeaderValue::from_static(value));
            }
            headers.insert(X_AMZ_DATE, signature.amz_date.clone());
            headers.insert(AUTHORIZATION, signature.authorization.clone());
            if let Some(token) = &signature.security_token {
                headers.insert(X_AMZ_SECURITY_TOKEN, token.clone());
            }
            metrics::aws_request("GetRecords");
            match endpoint.http.send(request).await {
                Ok(response) => break response,
                // A kept-alive connection the server closed just as the request went out: sent
                // again at once on a new one, as the SDK does. GetRecords only reads, so a
                // request that did arrive is harmless to repeat.
                Err(_) if attempt == 0 => attempt += 1,
                Err(e) => {
                    return Err(StreamError::Other(format!(
                        "GetRecords: {}",
                        error_chain(&e)
                    )));
                }
            }
        };
        let (parts, mut incoming) = response.into_parts();
        self.observe_clock(&parts.headers);
        // Sized from Content-Length up front: growing a megabyte page by doubling copies it
        // several times.
        let expected = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let mut buf = page_buffer(expected);
        let read = async {
            while let Some(frame) = incoming.frame().await {
                if let Some(data) = frame?.data_ref() {
                    buf.extend_from_slice(data);
                }
            }
            Ok::<(), hyper::Error>(())
        }
        .await;
        // A refusal is classified by its code even if its body broke off.
        if parts.status != StatusCode::OK {
            return Err(classify_failure(parts.status, &parts.headers, &buf));
        }
        read.map_err(|e| StreamError::Other(format!("GetRecords body: {}", error_chain(&e))))?;
        let text = String::from_utf8(buf).map_err(|_| {
            StreamError::Other("GetRecords answered with a body that is not UTF-8".into())
        })?;
        RecordsPage::parse(text).map_err(|body| {
            StreamError::Other(format!(
                "GetRecords answered with a body that is not a page: {}",
                excerpt(body.as_bytes())
            ))
        })
    }

    /// Now by the server's clock, as far as the last response's `Date` showed it.
    fn now(&self) -> SystemTime {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if skew >= 0 {
            now + Duration::from_millis(skew as u64)
        } else {
            now - Duration::from_millis(skew.unsigned_abs())
        }
    }

    /// Keeps the skew between the server's clock and ours, so a pod whose clock drifted still
    /// signs with the time AWS accepts (SigV4 refuses a signature more than 5 minutes off).
    fn observe_clock(&self, headers: &HeaderMap) {
        let Some(server) = headers
            .get(DATE)
            .and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok())
        else {
            return;
        };
        let local = SystemTime::now();
        let skew = match server.duration_since(local) {
            Ok(ahead) => ahead.as_millis() as i64,
            Err(behind) => -(behind.duration().as_millis() as i64),
        };
        // `Date` has whole seconds: a difference within one is no skew.
        let skew = if skew.abs() < 1000 { 0 } else { skew };
        self.skew_ms.store(skew, Ordering::Relaxed);
    }
}

/// The credentials of the SDK's chain, kept until shortly before they expire. One renewal at a
/// time: the callers waiting meanwhile get its result.
struct CredentialsCache {
    provider: Option<SharedCredentialsProvider>,
    current: Mutex<Option<Credentials>>,
}

impl CredentialsCache {
    async fn get(&self) -> Result<Credentials, StreamError> {
        let mut current = self.current.lock().await;
        let now = SystemTime::now();
        if let Some(credentials) = current.as_ref() {
            if credentials
                .expiry()
                .is_none_or(|expiry| expiry > now + RENEW_BEFORE_EXPIRY)
            {
                return Ok(credentials.clone());
            }
        }
        let Some(provider) = &self.provider else {
            return Err(StreamError::Other(
                "no AWS credentials provider is configured".into(),
            ));
        };
        match provider.provide_credentials().await {
            Ok(fresh) => {
                *current = Some(fresh.clone());
                Ok(fresh)
            }
            // Credentials that have not expired yet still sign; the renewal is tried again on
            // the next call.
            Err(e) => match current.as_ref() {
                Some(old) if old.expiry().is_none_or(|expiry| expiry > now) => {
                    warn!(error = %error_chain(&e), "renewing AWS credentials failed; using the current ones until they expire");
                    Ok(old.clone())
                }
                _ => Err(StreamError::Other(format!(
                    "loading AWS credentials: {}",
                    error_chain(&e)
                ))),
            },
        }
    }
}

/// The URL the SDK's Streams client would call, by its own endpoint rules and configuration.
async fn resolve_endpoint(sdk: &SdkConfig, region: &str) -> Result<String, String> {
    // As the generated `config::Builder::from(&SdkConfig)` reads it: an endpoint set in code
    // wins, then the service's own variable or profile key, then `AWS_ENDPOINT_URL`.
    let configured = if sdk.get_origin("endpoint_url").is_client_config() {
        sdk.endpoint_url().map(str::to_owned)
    } else {
        let key = ServiceConfigKey::builder()
            .service_id("DynamoDB Streams")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("every field is set");
        sdk.service_config()
            .and_then(|conf| conf.load_config(key))
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
    };
    let params = Params::builder()
        .region(region)
        .use_fips(sdk.use_fips().unwrap_or(false))
        .use_dual_stack(sdk.use_dual_stack().unwrap_or(false))
        .set_endpoint(configured)
        .build()
        .map_err(|e| format!("DynamoDB Streams endpoint: {e}"))?;
    DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map(|endpoint| endpoint.url().to_owned())
        .map_err(|e| format!("DynamoDB Streams endpoint: {e}"))
}

/// A non-200 answer as the SDK reads it: the error code from `x-amzn-ErrorType` or the body's
/// `__type` (both may carry a namespace before `#` and details after `:`), the message from
/// the body.
fn classify_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> StreamError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "__type")]
        kind: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let raw_code = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parsed.as_ref().and_then(|p| p.kind.clone()));
    let code = raw_code.as_deref().map(|c| {
        let c = c.rsplit('#').next().unwrap_or(c);
        c.split(':').next().unwrap_or(c)
    });
    let message = parsed
        .and_then(|p| p.message)
        .unwrap_or_else(|| excerpt(body));
    StreamError::classify(
        code,
        format!(
            "GetRecords: {} ({status}): {message}",
            code.unwrap_or("unknown error")
        ),
    )
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn failures_are_classified_as_the_sdk_classifies_them() {
        type Headers = &'static [(&'static str, &'static str)];
        let table: &[(u16, Headers, &str, &str)] = &[
            (
                400,
                &[],
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#ExpiredIteratorException","message":"Iterator expired"}"#,
                "expired_iterator",
            ),
            (
                400,
                &[(
                    "x-amzn-errortype",
                    "TrimmedDataAccessException:http://internal.amazon.com/",
                )],
                r#"{"message":"trimmed"}"#,
                "trimmed",
            ),
            (
                400,
                &[],
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#LimitExceededException","message":"slow down"}"#,
                "throttling",
            ),
            (
                400,
                &[],
                r#"{"__type":"com.amazon.coral.availability#ThrottlingException"}"#,
                "throttling",
            ),
            (
                400,
                &[],
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","Message":"gone"}"#,
                "not_found",
            ),
            (500, &[], r#"{"__type":"InternalServerError"}"#, "other"),
            (503, &[], "<html>Service Unavailable</html>", "other"),
            (
                400,
                &[],
                r#"{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"Signature expired"}"#,
                "other",
            ),
        ];
        for (status, hs, body, kind) in table {
            let status = StatusCode::from_u16(*status).unwrap();
            let e = classify_failure(status, &headers(hs), body.as_bytes());
            assert_eq!(e.kind(), *kind, "{status} {body}: {e}");
        }
    }

    #[test]
    fn the_message_names_the_code_and_the_service_message() {
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"__type":"x#ResourceNotFoundException","message":"Requested resource not found"}"#,
        );
        let text = e.to_string();
        assert!(text.contains("ResourceNotFoundException"), "{text}");
        assert!(text.contains("Requested resource not found"), "{text}");
    }

    #[tokio::test]
    async fn the_clock_skew_follows_the_server_date() {
        let sdk = SdkConfig::builder()
            .region(aws_types::region::Region::new("eu-central-1"))
            .build();
        let reader = RecordsReader::new(&sdk, Duration::from_secs(1), Duration::from_secs(1)).await;
        assert_eq!(
            reader.endpoint.as_ref().map(|e| e.uri.to_string()),
            Ok("https://streams.dynamodb.eu-central-1.amazonaws.com/".to_owned())
        );
        let an_hour_ahead = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        reader.observe_clock(&headers(&[("date", &an_hour_ahead)]));
        let skew = reader.skew_ms.load(Ordering::Relaxed);
        assert!((3_598_000..=3_601_000).contains(&skew), "{skew}");
        let now = httpdate::fmt_http_date(SystemTime::now());
        reader.observe_clock(&headers(&[("date", &now)]));
        assert_eq!(reader.skew_ms.load(Ordering::Relaxed), 0);
    }
}
