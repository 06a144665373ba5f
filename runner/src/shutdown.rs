//! A stop request shared by every stage: set on SIGTERM/SIGINT, read between lines and batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Requests a stop on the first SIGTERM or SIGINT; a second SIGINT ends the process at once.
    pub fn on_signals(&self) {
        let stop = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                tracing::warn!("cannot install signal handlers; SIGTERM will not checkpoint");
                return;
            };
            let mut interrupts = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {
                        interrupts += 1;
                        if interrupts > 1 {
                            std::process::exit(130);
                        }
                    }
                }
                tracing::warn!("stop requested: finishing the batch in flight and checkpointing");
                stop.request();
            }
        });
    }
}
