//! The two layers every HTTP request meets, written as plain tower services
//! with named futures: admission (at most `limit` requests in flight, an
//! immediate 503 beyond it) and, on the key routes, request metrics.
//!
//! Why not tower's `LoadShed` + `GlobalConcurrencyLimit` behind axum's
//! `HandleError`, and `axum::middleware::from_fn` for the metrics: that is
//! four layers, a semaphore and a boxed future per request for what an
//! atomic counter and a timer do. Measured with `bench/compare.sh` (5
//! alternating rounds): without any of the four, GET c16 / POST c16 / GET
//! c64 went 1.06x / 1.05x / 1.05x; with these two in their place, 1.06x /
//! 1.03x / 1.02x: small, but the same direction in every comparison.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// The requests in flight, HTTP's and RESP's alike (`--max-concurrent-requests`
/// bounds them together): a request beyond the limit is refused at once, so
/// overload costs neither memory nor queueing delay.
#[derive(Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    limit: usize,
}

impl InFlight {
    pub fn new(limit: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            limit: limit.max(1),
        }
    }

    /// A place among the requests in flight, or None when they are all taken.
    pub fn enter(&self) -> Option<Slot> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.count.clone()))
    }
}

/// At most [`InFlight`]'s limit of requests over every route it wraps (one
/// counter shared by all of them); beyond it, 503 with `Retry-After`.
#[derive(Clone)]
pub struct AdmitLayer(pub InFlight);

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            in_flight: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    in_flight: InFlight,
}

/// A request's place among those in flight, given back when its response
/// is complete or the request is dropped (client gone).
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn overloaded() -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later\n").into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

impl<S> Service<Request> for Admit<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Admitted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(slot) = self.in_flight.enter() else {
            return Admitted::Refused;
        };
        Admitted::Running {
            fut: self.inner.call(req),
            _slot: slot,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an admitted request, or the refusal.
    #[project = AdmittedProj]
    pub enum Admitted<F> {
        Running { #[pin] fut: F, _slot: Slot },
        Refused,
    }
}

impl<F> Future for Admitted<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmittedProj::Running { fut, .. } => fut.poll(cx),
            AdmittedProj::Refused => Poll::Ready(Ok(overloaded())),
        }
    }
}

/// Records each request's method, status and duration in [`Metrics`].
#[derive(Clone)]
pub struct TrackLayer(pub Arc<Metrics>);

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Tracked {
            method: req.method().clone(),
            start: Instant::now(),
            metrics: self.metrics.clone(),
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Tracked<F> {
        #[pin]
        fut: F,
        method: Method,
        start: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = ready!(this.fut.poll(cx));
        this.metrics
            .record(this.method, resp.status().as_u16(), this.start.elapsed());
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn stuck() -> impl Service<Request, Response = Response, Error = Infallible, Future: Unpin> {
        tower::service_fn(|_: Request| std::future::pending::<Result<Response, Infallible>>())
    }

    #[tokio::test]
    async fn beyond_the_limit_requests_are_refused_until_a_slot_is_given_back() {
        let mut svc = AdmitLayer(InFlight::new(1)).layer(stuck());
        let first = svc.call(Request::new(Body::empty()));
        assert!(matches!(first, Admitted::Running { .. }));
        let refused = svc.call(Request::new(Body::empty())).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        // A request dropped unfinished (its client went away) frees its slot.
        drop(first);
        let again = svc.call(Request::new(Body::empty()));
        assert!(matches!(again, Admitted::Running { .. }));
    }
}
