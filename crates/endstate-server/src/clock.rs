//! The server's clock: the system's, or a paused one a test holds still and moves by hand, so
//! what depends on time (wave deadlines and minimum healthy times, silences and alerts,
//! keepalives and evacuation, retention) is tested without sleeping. Everything that decides
//! reads the time from [`AppState::now_ms`](crate::AppState::now_ms). Identities use the
//! system's clock directly (certificates and their renewal, join tokens, signed requests and
//! webhook signatures), since the other side checks them against its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The system's clock (the default), or a paused one.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's clock.
    #[must_use]
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that stands still at `at_ms` (ms since the Unix epoch) until [`Clock::advance`]
    /// or [`Clock::set`] moves it.
    #[must_use]
    pub fn paused_at(at_ms: i64) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(at_ms))))
    }

    /// A clock paused at the system's time now.
    #[must_use]
    pub fn paused() -> Clock {
        Clock::paused_at(system_now_ms())
    }

    /// Whether it is a paused clock.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.0.is_some()
    }

    /// The time in milliseconds since the Unix epoch.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(at) => at.load(Ordering::SeqCst),
            None => system_now_ms(),
        }
    }

    /// Moves a paused clock forward by `by`; the system's clock cannot be moved (nothing happens).
    pub fn advance(&self, by: Duration) {
        if let Some(at) = &self.0 {
            at.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::SeqCst);
        }
    }

    /// Sets a paused clock to `at_ms`; the system's clock cannot be set (nothing happens).
    pub fn set(&self, at_ms: i64) {
        if let Some(at) = &self.0 {
            at.store(at_ms, Ordering::SeqCst);
        }
    }
}

/// The system's time in milliseconds since the Unix epoch.
pub(crate) fn system_now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_clock_moves_only_when_told_and_its_clones_move_with_it() {
        let clock = Clock::paused_at(1_000);
        let seen_by_the_server = clock.clone();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(seen_by_the_server.now_ms(), 1_000);
        clock.advance(Duration::from_secs(90));
        assert_eq!(seen_by_the_server.now_ms(), 91_000);
        clock.set(5);
        assert_eq!(seen_by_the_server.now_ms(), 5);
        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        assert!(
            (system.now_ms() - system_now_ms()).abs() < 60_000,
            "the system's clock is not moved"
        );
    }
}
