//! The shutdown signal. Kubernetes sends SIGTERM when it stops a pod (rolling deploys, node
//! drains) and SIGKILL after `terminationGracePeriodSeconds`; SIGINT is Ctrl-C at a terminal.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signal_received() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining"),
        _ = int.recv() => tracing::info!("SIGINT received; draining"),
    }
}

/// A token cancelled at the first SIGTERM or SIGINT, for loops that take a token (`redrive`,
/// `snapshot`).
pub fn token_cancelled_on_signal() -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            signal_received().await;
            stop.cancel();
        }
    });
    stop
}
