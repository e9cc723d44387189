//! Pacing posts per channel to Slack's documented limit for `chat.postMessage`: about one
//! message per second per channel, with short bursts allowed. A token bucket per channel on the
//! injected clock; when it is empty the outbox is told to come back later, which holds back
//! that channel only.

use crate::core::clock::Clock;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Messages a channel may take at once before pacing starts.
pub const BURST: f64 = 4.0;
/// Sustained messages per second per channel.
pub const PER_SECOND: f64 = 1.0;

pub struct Pacer {
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<String, (f64, DateTime<Utc>)>>,
}

impl Pacer {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `channel`, or says how long until one is there.
    pub fn take(&self, channel: &str) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut buckets = self.buckets.lock().expect("pacer lock poisoned");
        let (tokens, last) = buckets.entry(channel.to_owned()).or_insert((BURST, now));
        let elapsed = (now - *last).num_milliseconds().max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * PER_SECOND).min(BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / PER_SECOND))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    #[test]
    fn a_burst_passes_then_one_per_second_per_channel() {
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        ));
        let pacer = Pacer::new(clock.clone());
        for _ in 0..4 {
            assert!(pacer.take("C1").is_ok());
        }
        let wait = pacer.take("C1").unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(pacer.take("C2").is_ok(), "other channels are not held back");
        clock.advance(chrono::Duration::milliseconds(1000));
        assert!(pacer.take("C1").is_ok());
        assert!(pacer.take("C1").is_err());
    }
}
