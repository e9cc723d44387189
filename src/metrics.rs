//! Process-wide counters for `/metrics`. Metric names are defined here and nowhere else.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds, in seconds, of the step duration histogram.
pub const STEP_BUCKETS: [f64; 8] = [0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0];

pub const RUNS: &str = "baton_runs";
pub const STEP_DURATION: &str = "baton_step_duration_seconds";
pub const APPROVALS_PENDING: &str = "baton_approvals_pending";
pub const OUTBOX_DEPTH: &str = "baton_outbox_depth";
pub const OUTBOX_FAILED: &str = "baton_outbox_failed_total";
pub const DELIVERY_ALERTS_OPEN: &str = "baton_delivery_alerts_open";
pub const RUNS_UNREACHABLE: &str = "baton_runs_unreachable";
pub const DELIVERIES: &str = "baton_deliveries_total";
pub const DELIVERY_FAILURES: &str = "baton_delivery_failures_total";
pub const RATE_LIMITED: &str = "baton_rate_limited_total";
pub const AUDIT_ENTRIES: &str = "baton_audit_entries";
pub const STORE_BATCHES: &str = "baton_store_batches_total";
pub const STORE_WRITES: &str = "baton_store_writes_total";
pub const STORE_BUSY: &str = "baton_store_busy_seconds_total";
pub const STORE_COMMIT: &str = "baton_store_commit_seconds_total";
pub const CLAIMS: &str = "baton_claims_total";
pub const LEASES_LOST: &str = "baton_leases_lost_total";
pub const TAKEN_OVER: &str = "baton_attempts_taken_over_total";
pub const REPLICA: &str = "baton_replica_info";

/// Counters kept in memory since start-up.
#[derive(Debug, Default)]
pub struct Metrics {
    steps: Mutex<Histogram>,
    pub deliveries: AtomicU64,
    pub delivery_failures: AtomicU64,
    /// Deliveries put off because the platform rate-limited them (not failures).
    pub rate_limited: AtomicU64,
    /// Conversations this replica claimed to deliver in.
    pub claims: AtomicU64,
    /// Claims another replica took over while this one still counted on them.
    pub leases_lost: AtomicU64,
    /// Attempts of stopped replicas (or of this one's previous life) this one ran again.
    pub taken_over: AtomicU64,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; STEP_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn observe_step(&self, seconds: f64) {
        let mut h = self.steps.lock().expect("metrics lock poisoned");
        for (i, bound) in STEP_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn delivered(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn delivery_failed(&self) {
        self.delivery_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn claimed(&self) {
        self.claims.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lease_lost(&self) {
        self.leases_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub fn taken_over(&self) {
        self.taken_over.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the in-memory series in Prometheus text format; those about sharing the work
    /// with other replicas carry this one's name.
    pub fn render(&self, out: &mut String, replica: &str) {
        use std::fmt::Write;
        let label = replica.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP {REPLICA} The replica these figures come from.\n# TYPE {REPLICA} gauge\n{REPLICA}{{replica=\"{label}\"}} 1"
        );
        for (name, help, counter) in [
            (
                CLAIMS,
                "Conversations this replica claimed to deliver in.",
                &self.claims,
            ),
            (
                LEASES_LOST,
                "Claims another replica took over while this one still counted on them.",
                &self.leases_lost,
            ),
            (
                TAKEN_OVER,
                "Attempts of stopped replicas this one ran again.",
                &self.taken_over,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{replica=\"{label}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let h = self.steps.lock().expect("metrics lock poisoned");
        let _ = writeln!(out, "# HELP {STEP_DURATION} How long step attempts took.");
        let _ = writeln!(out, "# TYPE {STEP_DURATION} histogram");
        for (i, bound) in STEP_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{STEP_DURATION}_bucket{{le=\"{bound}\"}} {}",
                h.buckets[i]
            );
        }
        let _ = writeln!(out, "{STEP_DURATION}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{STEP_DURATION}_sum {}", h.sum);
        let _ = writeln!(out, "{STEP_DURATION}_count {}", h.count);
        let _ = writeln!(
            out,
            "# HELP {DELIVERIES} Outbox entries delivered since start-up."
        );
        let _ = writeln!(out, "# TYPE {DELIVERIES} counter");
        let _ = writeln!(
            out,
            "{DELIVERIES} {}",
            self.deliveries.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {DELIVERY_FAILURES} Failed delivery attempts since start-up."
        );
        let _ = writeln!(out, "# TYPE {DELIVERY_FAILURES} counter");
        let _ = writeln!(
            out,
            "{DELIVERY_FAILURES} {}",
            self.delivery_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {RATE_LIMITED} Deliveries put off by a platform's rate limit since start-up (waits, not failures)."
        );
        let _ = writeln!(out, "# TYPE {RATE_LIMITED} counter");
        let _ = writeln!(
            out,
            "{RATE_LIMITED} {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
    }
}
