//! The HTTP accept loop: hyper-util's connection builder instead of
//! `axum::serve`, because `axum::serve` can set neither a header-read nor an
//! idle timeout, and has no bound on open connections.
//!
//! - At most `max_connections` connections are served at once: past it the
//!   loop stops accepting, so extra clients wait in the kernel's backlog
//!   (their requests are answered once a connection closes) instead of each
//!   costing a task, buffers and a file descriptor.
//! - An HTTP/1 request whose head is not complete after `header_read_timeout`
//!   closes its connection (slowloris).
//! - A connection with no request in flight for `idle_timeout` is closed
//!   (HTTP/1 keep-alive and HTTP/2 alike, and a connection that never sends
//!   anything): gracefully, and cut `idle_timeout` later if the client does
//!   not let it close. On HTTP/1, waiting for the next request counts as
//!   reading its head too (hyper starts that timer when it starts waiting),
//!   so idle HTTP/1 connections close after the shorter of the two.
//! - With `--tls-cert`, each connection is a TLS one (HTTP/2 or HTTP/1.1
//!   by ALPN), its handshake bounded by the header-read timeout.
//! - At shutdown every connection is shut down gracefully (in-flight requests
//!   finish, HTTP/2 gets GOAWAY); `stop_now` drops whatever is left.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ringcache_common::tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Pause after a failed `accept` (out of file descriptors, say), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `stopping` is cancelled, then shuts every
/// connection down gracefully and returns once they are all closed.
/// Connections still open when `stop_now` is cancelled are dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tls: Option<Arc<ServerTls>>,
    stopping: CancellationToken,
    stop_now: CancellationToken,
) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        // The slot is taken before accepting: at the cap, new connections
        // stay in the backlog rather than being accepted and then starved.
        let permit = tokio::select! {
            _ = stopping.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stopping.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small responses must not wait for Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (builder, app) = (builder.clone(), app.clone());
        let (stopping, stop_now) = (stopping.clone(), stop_now.clone());
        let idle = limits.idle_timeout;
        match &tls {
            None => {
                let conn = serve_connection(builder, stream, app, idle, stopping, stop_now);
                tokio::spawn(async move {
                    conn.await;
                    drop(permit);
                });
            }
            Some(tls) => {
                // The handshake counts as reading the request head: a
                // client that connects and sends nothing is dropped then.
                let acceptor = tls.acceptor();
                let handshake = limits.header_read_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(builder, stream, app, idle, stopping, stop_now).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    // Every connection holds a slot until it closes: all slots back means
    // all connections are done.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// What a connection's idle timer looks at: requests in flight and when the
/// last one ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` at the last request's start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle if nothing happens until then;
    /// `None` while a request is in flight.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.start + last + idle)
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.touch();
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_connection<S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: S,
    app: Router,
    idle: Duration,
    stopping: CancellationToken,
    stop_now: CancellationToken,
) -> impl Future<Output = ()> + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        start: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let tracked = activity.clone();
    let service = tower::service_fn(move |req: axum::http::Request<Incoming>| {
        let guard = InFlight::new(&tracked);
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            drop(guard);
            resp
        }
    });
    let service = TowerToHyperService::new(service);
    async move {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut closing = false;
        // A client that ignores a graceful close (an HTTP/2 peer that never
        // answers the GOAWAY's PING, say) is cut this much later.
        let mut cut_at: Option<Instant> = None;
        loop {
            // Polled again after every wake-up, so a request that started
            // meanwhile pushes the deadline away.
            let idle_at = activity.idle_at(idle);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop_now.cancelled() => return,
                _ = sleep_until(cut_at) => {
                    tracing::debug!("closing an idle connection that ignored a graceful close");
                    return;
                }
                _ = stopping.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = sleep_until(idle_at), if !closing => {
                    if activity.idle_at(idle).is_some_and(|t| t <= Instant::now()) {
                        tracing::debug!(?idle, "closing an idle connection");
                        closing = true;
                        cut_at = Some(Instant::now() + idle);
                        conn.as_mut().graceful_shutdown();
                    }
                }
                // While a request is in flight nothing else can wake us;
                // look again now and then.
                _ = tokio::time::sleep(idle), if idle_at.is_none() && !closing => {}
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
