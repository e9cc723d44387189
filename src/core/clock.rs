//! Time as a dependency. Every timer, expiry and schedule reads the time through [`Clock`], so
//! tests can move it forward by hours in a millisecond.

use chrono::{DateTime, Duration, Utc};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The source of "now" for the engine, its timers and the scheduler.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
    /// Resolves when the clock was moved by hand; a real clock never resolves it, so callers
    /// combine it with their polling interval.
    fn changed(&self) -> Arc<Notify>;
}

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock {
    never: Arc<Notify>,
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn changed(&self) -> Arc<Notify> {
        self.never.clone()
    }
}

/// A clock that only moves when told to; used by tests to fire timers and schedule slots.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    changed: Arc<Notify>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Moves the clock forward and wakes everything waiting on it.
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock().expect("clock lock poisoned");
            *now += by;
        }
        self.changed.notify_waiters();
    }

    /// Sets the clock to an instant and wakes everything waiting on it.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().expect("clock lock poisoned") = to;
        self.changed.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock poisoned")
    }
    fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }
}
