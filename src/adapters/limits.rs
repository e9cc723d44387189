//! Rate-limit buckets a platform has closed, and until when, on the injected clock.
//!
//! A platform's 429 is about a bucket, not about the one request that got it: Slack limits a
//! method (per channel for posts), Discord a route bucket (or every route, for the global
//! limit). Once a bucket is known to be closed, no call in it is sent before it opens again,
//! so nothing goes early and nothing counts towards Discord's invalid-request limit.

use crate::core::clock::Clock;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The closed buckets of one platform connection.
pub struct Buckets {
    clock: Arc<dyn Clock>,
    until: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Buckets {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            until: Mutex::new(HashMap::new()),
        }
    }

    /// How long the longest-closed of `keys` stays closed, when one is.
    pub fn wait(&self, keys: &[&str]) -> Option<Duration> {
        let now = self.clock.now();
        let until = self.until.lock().expect("bucket lock");
        keys.iter()
            .filter_map(|k| until.get(*k).copied())
            .filter(|t| *t > now)
            .max()
            .map(|t| (t - now).to_std().unwrap_or_default())
    }

    /// Closes `key` for `wait` from now. A longer wait already known is kept: an answer that
    /// arrives late must not open a bucket early.
    pub fn close(&self, key: &str, wait: Duration) {
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
        let mut map = self.until.lock().expect("bucket lock");
        // Buckets that opened again are forgotten, so the map stays as small as the set of
        // buckets closed right now.
        map.retain(|_, t| *t > now);
        let entry = map.entry(key.to_owned()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    #[test]
    fn a_closed_bucket_stays_closed_for_its_longest_wait_and_opens_on_time() {
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        ));
        let buckets = Buckets::new(clock.clone());
        assert_eq!(buckets.wait(&["a"]), None);
        buckets.close("a", Duration::from_secs(5));
        buckets.close("a", Duration::from_secs(2));
        assert_eq!(buckets.wait(&["a", "b"]), Some(Duration::from_secs(5)));
        assert_eq!(buckets.wait(&["b"]), None, "other buckets stay open");
        clock.advance(chrono::Duration::seconds(5));
        assert_eq!(buckets.wait(&["a"]), None);
    }
}
