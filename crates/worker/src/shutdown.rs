//! Shutdown: one root [`CancellationToken`], cancelled by SIGTERM/SIGINT
//! (or by the supervisor on a fault, [`crate::supervise`]).
//!
//! On cancel the receivers stop polling (a long poll in flight is let finish,
//! and what it brought is returned at once, see [`crate::receive`]). Messages
//! received but not claimed, and jobs claimed but not yet fetched, are
//! returned: their claims released and their visibility set to 0, so another
//! worker takes them immediately. Everything already fetched drains through
//! batch → infer → record → emit, which flushes results and deletes when its
//! input closes. The stages are awaited for at most the drain limit;
//! whatever is still claimed then is released and returned the same way.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT. The handlers are
/// installed when this is called, not when the future is first polled, so a
/// signal that arrives before the spawned task runs is not the default
/// action (exit by signal) but a drain. Call it inside the runtime.
pub fn on_signal(token: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    let signals = Signals::install();
    async move {
        signals.wait().await;
        tracing::info!("signal received: stopping receives and draining");
        token.cancel();
    }
}

/// SIGTERM and SIGINT, once installed.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
