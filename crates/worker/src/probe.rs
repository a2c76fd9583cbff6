//! The probe server: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1
//! (hyper).
//!
//! - `/healthz`: the process is alive (always 200 while it serves).
//! - `/readyz`: 200 once the model is loaded and the queues answered, until
//!   shutdown begins; 503 otherwise, so a rolling deploy stops routing work
//!   to a draining pod.
//! - `/metrics`: Prometheus text ([`crate::metrics::Metrics::render`]).

use crate::metrics::SharedMetrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use scorefleet_aws::ApiCounters;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// The model is loaded and the queues answered at start-up.
    pub ready: AtomicBool,
    /// Shutdown has begun: not ready for new work (still alive).
    pub draining: AtomicBool,
}

/// What the server reads.
#[derive(Debug, Clone)]
pub struct State {
    /// Readiness flags.
    pub health: Arc<Health>,
    /// The worker's counters.
    pub metrics: SharedMetrics,
    /// AWS requests per API.
    pub aws: Arc<ApiCounters>,
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: State, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((sock, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let resp = route(req.uri().path(), &state);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}

/// The response for a path.
pub fn route(path: &str, state: &State) -> Response<Full<Bytes>> {
    let ready = state.health.ready.load(Ordering::Relaxed) && !state.health.draining.load(Ordering::Relaxed);
    let (status, ctype, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if ready => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_owned()),
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render(&state.aws)),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn readiness_follows_the_flags() {
        let state = State { health: Arc::default(), metrics: Arc::new(Metrics::default()), aws: Arc::default() };
        assert_eq!(route("/healthz", &state).status(), StatusCode::OK);
        assert_eq!(route("/readyz", &state).status(), StatusCode::SERVICE_UNAVAILABLE);
        state.health.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", &state).status(), StatusCode::OK);
        state.health.draining.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", &state).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(route("/metrics", &state).status(), StatusCode::OK);
        assert_eq!(route("/nope", &state).status(), StatusCode::NOT_FOUND);
    }
}
