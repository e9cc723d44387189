//! How this replica shares a database's work with others. It claims an outbox lane before it
//! delivers in it, so a conversation's messages go out from one replica at a time and in
//! order; the attempts it starts are its own from the start; one replica at a time holds each
//! role (the clock, which fires due timers and schedule slots; the Discord gateway). Every third of a lease it renews what it still
//! uses (a lane left idle lapses, and any replica may take it next; an attempt its workers no
//! longer run lapses too), and it takes over the attempts of replicas that stopped renewing
//! theirs. What it can no longer renew it stops using before the lease runs out, so nothing
//! is delivered by two replicas at once.

use super::Engine;
use crate::core::engine::Command;
use crate::store::{AttemptKey, Lane};
use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::watch;

/// Most lost attempts taken over in one look.
pub(crate) const TAKE_OVER_BATCH: u32 = 100;

/// What this replica holds, as far as it knows.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Lanes it holds, until when.
    lanes: HashMap<Lane, DateTime<Utc>>,
    /// Lanes it delivered in since the last renewal: only these are renewed.
    used: HashSet<Lane>,
    /// Lanes other replicas hold, until when: not asked for again before then.
    theirs: HashMap<Lane, DateTime<Utc>>,
    /// Attempts its workers run or have queued.
    local: HashSet<AttemptKey>,
    /// Roles it holds (one replica at a time holds each), until when.
    roles: HashMap<&'static str, DateTime<Utc>>,
    /// Roles it wants: each is claimed whenever nobody holds it.
    wanted: HashSet<&'static str>,
    /// Since when renewals have gone through without a break; `None` while they fail.
    renewing_since: Option<DateTime<Utc>>,
}

/// The role of the replica that fires due timers and schedule slots; every replica wants it.
pub(crate) const CLOCK: &str = "clock";

/// A lane's name among the leases.
fn lease_name(lane: &Lane) -> String {
    match lane {
        Lane::Conversation { platform, channel } => format!("lane:{platform}:{channel}"),
        Lane::Urgent(id) => format!("urgent:{id}"),
    }
}

impl Engine {
    fn lease(&self) -> Duration {
        self.settings.replica.lease
    }

    fn me(&self) -> &str {
        &self.settings.replica.name
    }

    /// A lease is used only while a quarter of it is left, so a replica cut off from the
    /// database stops before another may take over what it held (clocks a little apart
    /// included).
    fn margin(&self) -> Duration {
        self.lease() / 4
    }

    /// Whether this replica may take over what another let lapse: only once its own
    /// renewals have gone through for a whole lease. After the database was out of reach,
    /// every live replica has renewed what it holds by then (and recorded what it delivered
    /// meanwhile), so only a dead one's lanes, roles and attempts are taken.
    fn may_steal(&self, now: DateTime<Utc>) -> bool {
        let since = self.held.lock().expect("leases lock").renewing_since;
        since.is_some_and(|t| now - t >= self.lease())
    }

    /// Whether this replica may still deliver in `lane`: it holds it with time to spare.
    pub(crate) fn holds_lane(&self, lane: &Lane) -> bool {
        let now = self.clock.now();
        let held = self.held.lock().expect("leases lock");
        held.lanes
            .get(lane)
            .is_some_and(|u| *u - self.margin() > now)
    }

    /// Lanes other replicas hold now, for the outbox read to pass by.
    pub(crate) fn lanes_of_others(&self) -> HashSet<Lane> {
        let now = self.clock.now();
        let held = self.held.lock().expect("leases lock");
        held.theirs
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(lane, _)| lane.clone())
            .collect()
    }

    /// Of `lanes`, those this replica may deliver in now: held already, or claimed now.
    /// Lanes another replica holds are left to it.
    pub(crate) async fn claim_lanes(&self, lanes: Vec<Lane>) -> HashSet<Lane> {
        let now = self.clock.now();
        let mut ours = HashSet::new();
        let mut ask: HashMap<String, Lane> = HashMap::new();
        {
            let mut held = self.held.lock().expect("leases lock");
            for lane in lanes {
                if held
                    .lanes
                    .get(&lane)
                    .is_some_and(|u| *u - self.margin() > now)
                {
                    held.used.insert(lane.clone());
                    ours.insert(lane);
                } else if held.theirs.get(&lane).is_none_or(|u| *u <= now) {
                    ask.insert(lease_name(&lane), lane);
                }
            }
        }
        if ask.is_empty() {
            return ours;
        }
        let names: Vec<String> = ask.keys().cloned().collect();
        let until = now + self.lease();
        let steal = self.may_steal(now);
        let leases = match self
            .store
            .lease_claim(&names, self.me(), steal, now, until)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim conversations to deliver in");
                return ours;
            }
        };
        let mut held = self.held.lock().expect("leases lock");
        for lease in leases {
            let Some(lane) = ask.remove(&lease.name) else {
                continue;
            };
            if lease.holder == self.me() {
                self.metrics.claimed();
                held.theirs.remove(&lane);
                held.lanes.insert(lane.clone(), lease.until);
                held.used.insert(lane.clone());
                ours.insert(lane);
            } else {
                held.lanes.remove(&lane);
                held.theirs.insert(lane, lease.until);
            }
        }
        // Taken by another replica while this one asked: whose it is shows on the next look.
        for lane in ask.into_values() {
            held.theirs.insert(lane, now + self.margin());
        }
        ours
    }

    /// Whether this replica fires due timers and schedule slots now: it holds the clock.
    pub(crate) fn holds_clock(&self) -> bool {
        self.holds(CLOCK)
    }

    /// Whether this replica holds `role` now, with time to spare.
    pub fn holds(&self, role: &str) -> bool {
        let now = self.clock.now();
        let held = self.held.lock().expect("leases lock");
        held.roles
            .get(role)
            .is_some_and(|u| *u - self.margin() > now)
    }

    /// Asks for `role` (held by one replica at a time): claimed now when free, and from then
    /// on renewed while held and claimed again whenever nobody holds it. Says whether this
    /// replica holds it now.
    pub async fn want(&self, role: &'static str) -> bool {
        self.held.lock().expect("leases lock").wanted.insert(role);
        let now = self.clock.now();
        self.claim_role(role, now, now + self.lease()).await;
        self.holds(role)
    }

    /// What the last holder of `role` left for the next one.
    pub async fn left_by_last(&self, role: &str) -> Option<String> {
        match self.store.lease_data(role).await {
            Ok(data) => data,
            Err(e) => {
                tracing::warn!(error = %e, role, "could not read what the last holder left");
                None
            }
        }
    }

    /// Leaves `data` for whoever holds `role` next (while this replica holds it).
    pub async fn leave_for_next(&self, role: &str, data: &str) {
        if let Err(e) = self.store.lease_set_data(role, self.me(), data).await {
            tracing::warn!(error = %e, role, "could not leave word for the next holder");
        }
    }

    /// Notes an attempt handed to this replica's workers: renewed while they have it.
    pub(crate) fn hold(&self, key: AttemptKey) {
        self.held.lock().expect("leases lock").local.insert(key);
    }

    /// Forgets an attempt this replica's workers no longer have.
    pub(crate) fn let_go(&self, key: &AttemptKey) {
        self.held.lock().expect("leases lock").local.remove(key);
    }

    /// Forgets the attempt when the returned guard is dropped (its worker is done with it).
    pub(crate) fn running(self: &Arc<Self>, key: AttemptKey) -> Running {
        Running {
            engine: self.clone(),
            key,
        }
    }

    /// Renews the lanes used since the last renewal, the roles and every attempt this
    /// replica's workers have; notes what it lost (another replica took it over), and claims
    /// the roles it wants that nobody holds.
    pub(crate) async fn renew(&self) {
        let now = self.clock.now();
        let under_way = self.in_flight.lock().expect("lanes lock").clone();
        let (used, attempts, roles): (Vec<Lane>, Vec<AttemptKey>, Vec<&'static str>) = {
            let mut held = self.held.lock().expect("leases lock");
            let mut used = std::mem::take(&mut held.used);
            // A delivery that takes long keeps its lane.
            used.extend(under_way.into_iter().filter(|l| held.lanes.contains_key(l)));
            // An idle lane lapses: not renewed, and forgotten here.
            held.lanes.retain(|lane, _| used.contains(lane));
            held.theirs.retain(|_, until| *until > now);
            let attempts = held.local.iter().cloned().collect();
            let roles = held.roles.keys().copied().collect();
            (used.into_iter().collect(), attempts, roles)
        };
        let mut names: Vec<String> = used.iter().map(lease_name).collect();
        names.extend(roles.iter().map(|r| r.to_string()));
        let until = now + self.lease();
        let (kept, lost) = match self
            .store
            .lease_renew(&names, &attempts, self.me(), until)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.held.lock().expect("leases lock").renewing_since = None;
                tracing::warn!(error = %e, "could not renew this replica's leases; trying again");
                return;
            }
        };
        let kept: HashSet<String> = kept.into_iter().collect();
        let unheld: Vec<&'static str> = {
            let mut held = self.held.lock().expect("leases lock");
            held.renewing_since.get_or_insert(now);
            for lane in used {
                if kept.contains(&lease_name(&lane)) {
                    held.lanes.insert(lane, until);
                } else if held.lanes.remove(&lane).is_some() {
                    self.metrics.lease_lost();
                    tracing::warn!(
                        ?lane,
                        "another replica took over a conversation this one was delivering in"
                    );
                }
            }
            for key in lost {
                // Told once: it is no longer this replica's to renew.
                if held.local.remove(&key) {
                    self.metrics.lease_lost();
                    tracing::warn!(run = %key.0, step = %key.1, attempt = key.2, "another replica took over an attempt this one still runs; the first result to arrive counts");
                }
            }
            for role in roles {
                if kept.contains(role) {
                    held.roles.insert(role, until);
                } else if held.roles.remove(role).is_some() {
                    self.metrics.lease_lost();
                    tracing::warn!(role, "another replica took over a role this one held");
                }
            }
            held.wanted.insert(CLOCK);
            let wanted: Vec<&'static str> = held.wanted.iter().copied().collect();
            wanted
                .into_iter()
                .filter(|r| !held.roles.contains_key(r))
                .collect()
        };
        for role in unheld {
            self.claim_role(role, now, until).await;
        }
    }

    /// Takes `role` when it is free or lapsed.
    async fn claim_role(&self, role: &'static str, now: DateTime<Utc>, until: DateTime<Utc>) {
        match self
            .store
            .lease_claim(
                &[role.to_owned()],
                self.me(),
                self.may_steal(now),
                now,
                until,
            )
            .await
        {
            Ok(leases) => {
                if leases.iter().any(|l| l.holder == self.me()) {
                    self.metrics.claimed();
                    tracing::info!(role, "this replica holds a role now");
                    self.held
                        .lock()
                        .expect("leases lock")
                        .roles
                        .insert(role, until);
                }
            }
            Err(e) => tracing::warn!(error = %e, role, "could not claim a role; trying again"),
        }
    }

    /// Takes over attempts whose replica stopped renewing them and reports each lost to its
    /// run, which runs it again. With `mine` (at start-up), also those held under this
    /// replica's own name, by its previous life. At other times only once renewals have gone
    /// through for a whole lease: after the database was out of reach, every live replica
    /// has renewed what it holds by then, so only the dead ones' attempts are taken.
    pub(crate) async fn take_over(self: &Arc<Self>, mine: bool) -> anyhow::Result<usize> {
        let now = self.clock.now();
        if !mine && !self.may_steal(now) {
            return Ok(0);
        }
        let lost = self
            .store
            .attempts_take_over(self.me(), mine, now, now + self.lease(), TAKE_OVER_BATCH)
            .await?;
        let ours = self.held.lock().expect("leases lock").local.clone();
        let mut reported = 0;
        for (run, step, attempt) in lost {
            // Its lease lapsed while this replica's workers still have it (the clock moved on
            // past it): taking it renewed it, and it goes on.
            if ours.contains(&(run, step.clone(), attempt)) {
                continue;
            }
            self.metrics.taken_over();
            tracing::info!(run = %run, step = %step, attempt, "running again an attempt whose replica stopped");
            let cmd = Command::AttemptLost {
                step: step.clone(),
                attempt,
            };
            // One that cannot be reported now lapses again, and is taken over again.
            match self.submit(run, cmd).await {
                Ok(_) => reported += 1,
                Err(e) => {
                    tracing::warn!(run = %run, step = %step, error = %e, "could not report an attempt lost; it is taken over again later")
                }
            }
        }
        Ok(reported)
    }

    /// Renews every third of a lease (and when the clock is moved), then takes over what
    /// others lost.
    pub(crate) async fn lease_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = (self.lease() / 3).to_std().unwrap_or_default();
        let changed = self.clock.changed();
        while !*shutdown.borrow() {
            // Listening before renewing: a clock moved meanwhile is renewed for at once.
            let moved = changed.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            self.renew().await;
            if let Err(e) = self.take_over(false).await {
                tracing::warn!(error = %format!("{e:#}"), "could not take over lost attempts; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = moved => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    }

    /// Lets go of everything this replica holds, so others take it over at once.
    pub(crate) async fn release(&self) {
        if let Err(e) = self.store.lease_release(self.me()).await {
            tracing::warn!(error = %e, "could not let go of this replica's leases; others take them over when they lapse");
        }
    }
}

/// An attempt this replica's workers run, forgotten when dropped.
pub(crate) struct Running {
    engine: Arc<Engine>,
    key: AttemptKey,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.engine.let_go(&self.key);
    }
}
