//! TLS for every link that crosses a network (docs/design/tls.md): PEM
//! files turned into rustls configurations that are re-read when the files
//! change, an acceptor stream for servers and a connector for gRPC clients.
//!
//! Each handshake reads the configuration current at that moment, so a
//! rotated certificate is used by the next connection; open connections keep
//! the one they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// How often certificate files are checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a TLS handshake may take before the connection is dropped: a
/// client that opens a connection and sends nothing must not hold a task.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN for gRPC: HTTP/2 only.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP API: HTTP/2 preferred, HTTP/1.1 accepted.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    #[error("{path}: {source}")]
    Rustls {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client CA {path}: {message}")]
    Verifier { path: PathBuf, message: String },
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|source| TlsError::Rustls {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Logs certificates of `chain` that are expired or not yet valid: the
/// peer will refuse them, and the log says why before it does.
fn check_validity(path: &Path, chain: &[CertificateDer<'_>]) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            tracing::warn!(path = %path.display(), index = i, "certificate not parsed for its validity dates");
            continue;
        };
        let validity = cert.validity();
        let (from, to) = (validity.not_before, validity.not_after);
        if now < from.timestamp() {
            tracing::error!(path = %path.display(), index = i, not_before = %from,
                "certificate is not valid yet: peers will refuse it");
        } else if now > to.timestamp() {
            tracing::error!(path = %path.display(), index = i, not_after = %to,
                "certificate has expired: peers will refuse it");
        } else {
            tracing::debug!(path = %path.display(), index = i, not_after = %to, "certificate valid");
        }
    }
}

/// (modification time, length) of each file, to notice a change.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[&Path]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A configuration built from files, rebuilt when they change.
struct Reloading<C> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<C, TlsError> + Send + Sync>,
    current: RwLock<Arc<C>>,
    stamp: Mutex<Stamp>,
}

impl<C> Reloading<C> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: Box<dyn Fn() -> Result<C, TlsError> + Send + Sync>,
    ) -> Result<Self, TlsError> {
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let stamp = stamp(&refs);
        let config = build()?;
        Ok(Self {
            what,
            paths,
            build,
            current: RwLock::new(Arc::new(config)),
            stamp: Mutex::new(stamp),
        })
    }

    fn current(&self) -> Arc<C> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds from the files if any changed since the last (attempted)
    /// load; keeps the current configuration when the new files are bad.
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let refs: Vec<&Path> = self.paths.iter().map(PathBuf::as_path).collect();
        let now = stamp(&refs);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return Ok(false);
            }
            // A bad file is reported once per change, not every interval.
            *last = now;
        }
        let config = (self.build)()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        tracing::info!(what = self.what, files = ?self.paths, "TLS files changed: reloaded");
        Ok(true)
    }
}

/// Files of a TLS server: its certificate chain and key, and optionally
/// the CA that client certificates must chain to (then they are required).
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A TLS server configuration that follows its files.
pub struct ServerTls {
    inner: Reloading<ServerConfig>,
}

impl ServerTls {
    pub fn load(files: ServerFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let build = move || -> Result<ServerConfig, TlsError> {
            let chain = certs(&files.cert)?;
            check_validity(&files.cert, &chain);
            let key = key(&files.key)?;
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::Rustls {
                    path: files.cert.clone(),
                    source,
                })?;
            let builder = match &files.client_ca {
                Some(ca) => {
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots(ca)?),
                        provider(),
                    )
                    .build()
                    .map_err(|e| TlsError::Verifier {
                        path: ca.clone(),
                        message: e.to_string(),
                    })?;
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut config =
                builder
                    .with_single_cert(chain, key)
                    .map_err(|source| TlsError::Rustls {
                        path: files.key.clone(),
                        source,
                    })?;
            config.alpn_protocols = alpn.clone();
            Ok(config)
        };
        Ok(Arc::new(Self {
            inner: Reloading::new("server", paths, Box::new(build))?,
        }))
    }

    /// The configuration for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.inner.current())
    }

    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.inner.reload_if_changed()
    }
}

/// Files of a TLS client: the CA that servers' certificates must chain to,
/// and optionally its own certificate and key (for servers that require
/// one).
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name servers' certificates must carry, whatever address they
    /// are reached at (containers found by DNS are reached by IP); `None`:
    /// the host of the address.
    pub server_name: Option<String>,
}

/// A TLS client configuration that follows its files.
pub struct ClientTls {
    inner: Reloading<ClientConfig>,
    server_name: Option<String>,
}

impl ClientTls {
    pub fn load(files: ClientFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = files.server_name.clone();
        let mut paths = vec![files.ca.clone()];
        if let Some((c, k)) = &files.identity {
            paths.extend([c.clone(), k.clone()]);
        }
        let build = move || -> Result<ClientConfig, TlsError> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::Rustls {
                    path: files.ca.clone(),
                    source,
                })?
                .with_root_certificates(roots(&files.ca)?);
            let mut config = match &files.identity {
                Some((cert, key_path)) => {
                    let chain = certs(cert)?;
                    check_validity(cert, &chain);
                    builder
                        .with_client_auth_cert(chain, key(key_path)?)
                        .map_err(|source| TlsError::Rustls {
                            path: key_path.clone(),
                            source,
                        })?
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = alpn.clone();
            Ok(config)
        };
        Ok(Arc::new(Self {
            inner: Reloading::new("client", paths, Box::new(build))?,
            server_name,
        }))
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.inner.current())
    }

    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.inner.reload_if_changed()
    }

    /// Connects to `host:port` over TCP and TLS, verifying the server's
    /// certificate for `host` (a DNS name or an IP address), or for the
    /// configured server name.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = server_name(self.server_name.as_deref().unwrap_or(host))?;
        let tcp = TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port)).await?;
        tcp.set_nodelay(true)?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector().connect(name, tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
    }
}

/// The name a server's certificate must carry: `host` as a DNS name, or as
/// an IP address (brackets of an IPv6 literal removed).
pub fn server_name(host: &str) -> std::io::Result<ServerName<'static>> {
    let bare = host.trim_matches(|c| c == '[' || c == ']');
    ServerName::try_from(bare.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))
}

/// A server configuration from optional flags: `None` without a
/// certificate (plain text).
pub fn load_server(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<ServerTls>>, TlsError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let files = ServerFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: client_ca.cloned(),
    };
    ServerTls::load(files, alpn).map(Some)
}

/// A client configuration from optional flags: `None` without a CA.
pub fn load_client(
    ca: Option<&PathBuf>,
    identity: Option<(&PathBuf, &PathBuf)>,
    server_name: Option<String>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<ClientTls>>, TlsError> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    let files = ClientFiles {
        ca: ca.clone(),
        identity: identity.map(|(c, k)| (c.clone(), k.clone())),
        server_name,
    };
    ClientTls::load(files, alpn).map(Some)
}

/// The configurations among `server` and `clients` that are on, to re-read.
pub fn reloadable(
    server: Option<&Arc<ServerTls>>,
    clients: &[Option<&Arc<ClientTls>>],
) -> Vec<Arc<dyn Reload>> {
    let mut out: Vec<Arc<dyn Reload>> = Vec::new();
    if let Some(s) = server {
        out.push(s.clone());
    }
    out.extend(
        clients
            .iter()
            .flatten()
            .map(|c| (*c).clone() as Arc<dyn Reload>),
    );
    out
}

/// Something whose TLS files are re-read now and then.
pub trait Reload: Send + Sync {
    fn reload_if_changed(&self) -> Result<bool, TlsError>;
}

impl Reload for ServerTls {
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        ServerTls::reload_if_changed(self)
    }
}

impl Reload for ClientTls {
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        ClientTls::reload_if_changed(self)
    }
}

/// Checks `items`' files every `every` until `stop`; a failed reload keeps
/// the previous configuration and is logged.
pub fn spawn_reloader(items: Vec<Arc<dyn Reload>>, every: Duration, stop: CancellationToken) {
    if items.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for item in &items {
                if let Err(e) = item.reload_if_changed() {
                    tracing::error!(error = %e, "TLS files changed but could not be loaded; keeping the previous ones");
                }
            }
        }
    });
}

/// TLS connections accepted on `listener`, handshakes done concurrently
/// (each within [`HANDSHAKE_TIMEOUT`]) so that one slow client does not
/// hold up the others. Failed handshakes are logged and skipped. Ends when
/// `stop` is cancelled.
pub fn accept(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A gRPC channel connector over TLS (`Endpoint::connect_with_connector`):
/// each (re)connection handshakes with the configuration current then,
/// verifying the server's certificate for the host it connects to.
#[derive(Clone)]
pub struct GrpcConnector {
    tls: Arc<ClientTls>,
    /// Hosts tried in turn instead of the endpoint's URI, from the one that
    /// answered last (tonic balances only with its own connector).
    failover: Option<Arc<Failover>>,
}

/// The targets of [`GrpcConnector::failover`].
struct Failover {
    targets: Vec<(String, u16)>,
    /// The one that answered last.
    next: std::sync::atomic::AtomicUsize,
    /// Longest a target may take to connect before the next is tried.
    each: Duration,
}

impl GrpcConnector {
    /// Connects to the endpoint's host and port.
    pub fn new(tls: Arc<ClientTls>) -> Self {
        Self {
            tls,
            failover: None,
        }
    }

    /// Connects to the first of `targets` that answers within `each`,
    /// starting with the one that answered last; the endpoint's URI is
    /// ignored.
    pub fn failover(tls: Arc<ClientTls>, targets: Vec<(String, u16)>, each: Duration) -> Self {
        Self {
            tls,
            failover: Some(Arc::new(Failover {
                targets,
                next: std::sync::atomic::AtomicUsize::new(0),
                each,
            })),
        }
    }
}

type Connected = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Connected>> + Send>>;

impl tower::Service<http::Uri> for GrpcConnector {
    type Response = Connected;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        use std::sync::atomic::Ordering;
        let (tls, failover) = (self.tls.clone(), self.failover.clone());
        Box::pin(async move {
            let Some(failover) = failover else {
                let host = uri.host().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: no host"))
                })?;
                let port = uri.port_u16().unwrap_or(443);
                return Ok(hyper_util::rt::TokioIo::new(tls.connect(host, port).await?));
            };
            let Failover {
                targets,
                next,
                each,
            } = &*failover;
            let start = next.load(Ordering::Relaxed);
            let mut last = None;
            for k in 0..targets.len() {
                let i = (start + k) % targets.len();
                let (host, port) = &targets[i];
                match tokio::time::timeout(*each, tls.connect(host, *port)).await {
                    Ok(Ok(stream)) => {
                        next.store(i, Ordering::Relaxed);
                        return Ok(hyper_util::rt::TokioIo::new(stream));
                    }
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {
                        last = Some(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("{host}:{port}: no TLS connection within {each:?}"),
                        ))
                    }
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no target to connect to")))
        })
    }
}

/// `addr` with an `https://` scheme written as `http://`: the connector
/// does TLS itself, and tonic's own connector would refuse an https URI
/// without its TLS features.
pub fn plain_scheme(addr: &str) -> String {
    match addr.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => addr.to_string(),
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.inner.paths)
            .finish()
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.inner.paths)
            .finish()
    }
}
