//! The HTTP client of the relay's own GetRecords calls ([`super::signed`]): hyper's pooled
//! client over rustls, with the proxy the environment names, and nothing else.
//!
//! Not reqwest, which the Nakadi publisher uses: an idle shard's poll is an empty answer, so
//! what a client spends on each request is most of what an idle stream costs. reqwest wraps
//! hyper's client in layers GetRecords has no use for (redirects, retries, a `Url` parsed
//! again from every response); under callgrind they cost more instructions per poll than the
//! rest of the request (docs/performance.md). What those layers did that GetRecords does
//! need is here, decided once for the one endpoint:
//!
//! - trust anchors from the system store, which `SSL_CERT_FILE` replaces (rustls-native-certs,
//!   as the SDK's HTTPS client loads them);
//! - `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` as curl reads them (hyper-util's
//!   matcher, the one reqwest uses): an HTTPS endpoint is reached through a CONNECT tunnel, an
//!   HTTP one by sending the request to the proxy in absolute form, with the proxy URL's
//!   user and password as `Proxy-Authorization`;
//! - TCP_NODELAY, a connect timeout, and idle connections closed after 90 s.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::warn;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle kept-alive connections are closed after this long, as reqwest and the SDK do.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A pooled HTTP/1.1 client for one endpoint.
pub struct HttpClient {
    client: Client<HttpsConnector<Route>, Full<Bytes>>,
    /// `Proxy-Authorization` of requests forwarded in absolute form to a proxy with
    /// credentials; a tunnel sends it in its CONNECT instead.
    proxy_authorization: Option<HeaderValue>,
}

impl HttpClient {
    /// A client for requests to `endpoint`, whose route (direct, tunnelled or forwarded) the
    /// proxy variables decide now.
    pub fn new(endpoint: &Uri, connect_timeout: Duration) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let mut proxy_authorization = None;
        let route = match Matcher::from_env().intercept(endpoint) {
            None => Route::Direct(http),
            Some(proxy) if endpoint.scheme() == Some(&http::uri::Scheme::HTTPS) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Route::Tunnel(tunnel)
            }
            Some(proxy) => {
                proxy_authorization = proxy.basic_auth().cloned();
                Route::Forward {
                    proxy: proxy.uri().clone(),
                    http,
                }
            }
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(route);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        HttpClient {
            client,
            proxy_authorization,
        }
    }

    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        if let Some(auth) = &self.proxy_authorization {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
        }
        self.client.request(request).await
    }
}

/// rustls with the system's trust anchors (or `SSL_CERT_FILE`'s). A store that cannot be
/// read leaves only HTTPS endpoints failing, each handshake naming the certificate, so an
/// HTTP endpoint (a test, a local emulator) still works on a machine without CA certificates.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        warn!(%error, "reading the trusted CA certificates for GetRecords");
    }
    let (_, unparsable) = roots.add_parsable_certificates(loaded.certs);
    if unparsable > 0 {
        warn!(
            unparsable,
            "some trusted CA certificates could not be parsed and are not used for GetRecords"
        );
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// How a connection to the endpoint is opened.
#[derive(Clone)]
enum Route {
    Direct(HttpConnector),
    /// An HTTPS endpoint behind a proxy: TLS inside a CONNECT tunnel.
    Tunnel(Tunnel<HttpConnector>),
    /// An HTTP endpoint behind a proxy: a connection to the proxy, which is sent each request
    /// in absolute form.
    Forward {
        proxy: Uri,
        http: HttpConnector,
    },
}

impl tower_service::Service<Uri> for Route {
    type Response = RouteStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Neither connector has a limit to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self.clone() {
            Route::Direct(mut http) => Box::pin(async move {
                Ok(RouteStream {
                    io: http.call(dst).await?,
                    forwarded: false,
                })
            }),
            Route::Tunnel(mut tunnel) => Box::pin(async move {
                Ok(RouteStream {
                    io: tunnel.call(dst).await?,
                    forwarded: false,
                })
            }),
            Route::Forward { proxy, mut http } => Box::pin(async move {
                Ok(RouteStream {
                    io: http.call(proxy).await?,
                    forwarded: true,
                })
            }),
        }
    }
}

/// A TCP connection of a [`Route`]; `forwarded` tells hyper's client to send requests in
/// absolute form.
pub struct RouteStream {
    io: TokioIo<TcpStream>,
    forwarded: bool,
}

impl Connection for RouteStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forwarded)
    }
}

impl Read for RouteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for RouteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
