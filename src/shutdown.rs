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
