//! The server: its configuration, its thread and runtime, TLS, and the connection loop.

use crate::auth::{ForbiddenRule, User};
use crate::http::{self, Ctx};
use crate::store::Store;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

/// TLS material for the server (PEM text).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert_pem: String,
    /// Server private key.
    pub key_pem: String,
    /// CA that signs client certificates; `None` disables client-certificate authentication.
    pub client_ca_pem: Option<String>,
}

/// How the server behaves. `ServerConfig::default()` is plain HTTP with anonymous access.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Serve HTTPS with this material (plain HTTP when `None`).
    pub tls: Option<TlsConfig>,
    /// Bearer tokens and the user each one authenticates.
    pub tokens: Vec<(String, String)>,
    /// Serve requests without credentials as `system:anonymous`.
    pub anonymous: bool,
    /// Requests these rules match get 403.
    pub forbidden: Vec<ForbiddenRule>,
    /// BOOKMARK period for watches that allow bookmarks (`None`: no periodic bookmarks).
    pub bookmark_interval: Option<Duration>,
    /// Caps every list page at this many items, even without `limit` (kube-apiserver does not
    /// do this; it lets tests force clients through pagination). `None`: no cap.
    pub page_size_cap: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tls: None,
            tokens: Vec::new(),
            anonymous: true,
            forbidden: Vec::new(),
            bookmark_interval: Some(Duration::from_secs(60)),
            page_size_cap: None,
        }
    }
}

impl ServerConfig {
    /// Serves HTTPS.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Accepts `token` for `user`; the first token also turns anonymous access off.
    pub fn with_token(mut self, token: &str, user: &str) -> Self {
        self.tokens.push((token.into(), user.into()));
        self.anonymous = false;
        self
    }

    /// Allows or refuses requests without credentials.
    pub fn with_anonymous(mut self, allowed: bool) -> Self {
        self.anonymous = allowed;
        self
    }

    /// Adds a forbidden rule.
    pub fn with_forbidden(mut self, rule: ForbiddenRule) -> Self {
        self.forbidden.push(rule);
        self
    }

    /// Sets the bookmark period.
    pub fn with_bookmark_interval(mut self, every: Option<Duration>) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Caps list pages (see [`ServerConfig::page_size_cap`]).
    pub fn with_page_size_cap(mut self, cap: usize) -> Self {
        self.page_size_cap = Some(cap);
        self
    }
}

/// A running test API server. Dropping it stops it too.
pub struct ApiServer {
    addr: SocketAddr,
    tls: bool,
    store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves a new, empty store on `listener` from a thread of its own.
    pub fn start(listener: std::net::TcpListener, cfg: ServerConfig) -> io::Result<ApiServer> {
        Self::start_with_store(listener, cfg, Store::new())
    }

    /// Serves an existing store (objects and resourceVersions carry over: a restart).
    /// The configuration's tokens, anonymous flag and forbidden rules replace the store's.
    pub fn start_with_store(
        listener: std::net::TcpListener,
        cfg: ServerConfig,
        store: Store,
    ) -> io::Result<ApiServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let acceptor = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
        {
            let mut c = store.control();
            c.tokens = cfg.tokens.iter().cloned().collect();
            c.anonymous = cfg.anonymous;
            c.forbidden = cfg.forbidden.clone();
        }
        let ctx = Arc::new(Ctx {
            store: store.clone(),
            bookmark_interval: cfg.bookmark_interval,
            page_size_cap: cfg.page_size_cap,
            addr,
        });
        let (tx, rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("test-apiserver-{addr}"))
            .spawn(move || {
                rt.block_on(serve(listener, acceptor, ctx, rx));
                // Dropping the runtime drops every connection and watch task: sockets close.
                drop(rt);
            })?;
        Ok(ApiServer {
            addr,
            tls: acceptor_flag(&cfg),
            store,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (or `http://`; IPv6 in brackets).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The store this server serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the server: closes the listener and every connection and watch, then returns the
    /// store (give it to [`ApiServer::start_with_store`] to restart).
    pub fn stop(mut self) -> Store {
        self.shutdown_now();
        self.store.clone()
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn acceptor_flag(cfg: &ServerConfig) -> bool {
    cfg.tls.is_some()
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

fn tls_acceptor(cfg: &TlsConfig) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cfg.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("server certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes())
        .map_err(|e| io::Error::other(format!("server key PEM: {e}")))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &cfg.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let c = c.map_err(|e| io::Error::other(format!("client CA PEM: {e}")))?;
                roots.add(c).map_err(io::Error::other)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(io::Error::other)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(io::Error::other)?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(sc)))
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Ctx>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("test-apiserver: cannot use the listener: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(tcp, tls.clone(), ctx.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

async fn connection(tcp: tokio::net::TcpStream, tls: Option<TlsAcceptor>, ctx: Arc<Ctx>) {
    match tls {
        None => serve_http(TokioIo::new(tcp), ctx, None).await,
        Some(acceptor) => {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| cert_user(c.as_ref()));
            serve_http(TokioIo::new(stream), ctx, user).await
        }
    }
}

async fn serve_http<I>(io: TokioIo<I>, ctx: Arc<Ctx>, user: Option<User>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| http::handle(req, ctx.clone(), user.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// The user a verified client certificate names: CN is the user, each O a group.
fn cert_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User { name, groups })
}

/// A response body: a whole buffer, or a stream of chunks (watches).
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, io::Error>>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
