//! Cancelling a run from outside it (the service's API, its shutdown): a flag the run's epoch callback checks at
//! every tick (so a guest spinning in wasm stops within one tick) and a notification the run's call is raced against
//! (so a guest waiting in a host call stops too). A cancelled run ends as `cancelled` and is recorded like any other
//! ending. Cancelling never touches the guest's store from another thread.

use std::sync::atomic::{AtomicBool, Ordering};

/// One run's cancellation switch.
#[derive(Debug, Default)]
pub struct Cancel {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

/// The error a cancelled guest is stopped with (told apart from traps by type, never by message).
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

impl Cancel {
    /// Asks the run to stop. Idempotent.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once [`Cancel::cancel`] has been called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_wakes_a_waiter_and_stays_cancelled() {
        let c = std::sync::Arc::new(Cancel::default());
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        tokio::task::yield_now().await;
        assert!(!c.is_cancelled());
        c.cancel();
        waiter.await.unwrap();
        c.cancelled().await;
        assert!(c.is_cancelled());
    }
}
