//! The store contract: one set of stories every backend tells the same way, told through the
//! store traits only. Each story runs against every backend (`contract!` at the bottom).

use baton::core::audit::{AuditEvent, AuditKind, Redactor, Verification};
use baton::core::engine::{
    Approval, ApprovalStatus, AttemptOutcome, Effect, Job, RunState, RunStatus, StepState,
    StepStatus, Transition, Work,
};
use baton::core::event::{Actor, ConversationRef};
use baton::core::ids::{MessageKey, RunId};
use baton::core::message::{Destination, OutMessage, Outgoing};
use baton::store::{
    ApplyFn, ConsoleDelivery, ConsolePost, ConsoleRef, Definition, Lane, MemoryEntry, NewRun,
    OutboxEntry, OutboxOp, Store, verify_ledger,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[path = "support/postgres.rs"]
mod postgres_schema;

/// A store on a backend of its own, gone when dropped.
struct Backend {
    store: Arc<dyn Store>,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<postgres_schema::Schema>,
}

impl std::ops::Deref for Backend {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

async fn sqlite(redactor: Redactor) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    let store = baton::store::open(
        &url,
        baton::store::Options {
            redactor,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Backend {
        store,
        url,
        _dir: Some(dir),
        _schema: None,
    }
}

/// A store in a PostgreSQL schema of its own, dropped with it.
async fn postgres(redactor: Redactor) -> Backend {
    let schema = postgres_schema::Schema::new().await;
    let store = baton::store::open(
        &schema.url,
        baton::store::Options {
            redactor,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Backend {
        store,
        url: schema.url.clone(),
        _dir: None,
        _schema: Some(schema),
    }
}

impl Backend {
    /// Another process on the same database, as replica `name`.
    async fn replica(&self, name: &str) -> Arc<dyn Store> {
        let options = baton::store::Options {
            replica: baton::store::Replica {
                name: name.into(),
                lease: Duration::seconds(30),
            },
            ..Default::default()
        };
        baton::store::open(&self.url, options).await.unwrap()
    }
}

fn t0() -> DateTime<Utc> {
    // Not on a millisecond: the store keeps milliseconds, and must say so consistently.
    Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap() + Duration::nanoseconds(1_234_567)
}

fn ben() -> Actor {
    Actor {
        platform: "console".into(),
        id: "ben".into(),
        display: "Ben".into(),
        is_bot: false,
        groups: vec![],
    }
}

fn new_run(event: &str) -> NewRun {
    NewRun {
        workflow: "deploy".into(),
        event_id: event.into(),
        conversation: ConversationRef {
            platform: "console".into(),
            channel: "general".into(),
            thread: None,
        },
        requested_by: ben(),
        inputs: json!({"service": "api"}).as_object().unwrap().clone(),
        late: false,
        title: "deploy api".into(),
        file: "commands/deploy.toml".into(),
        definition: Arc::from("name = \"deploy\""),
        received: None,
    }
}

/// A run started for event `ev-1` with nothing applied.
async fn a_run(store: &Backend) -> RunId {
    store
        .create_run(new_run("ev-1"), t0(), nothing())
        .await
        .unwrap()
        .run
}

/// No lane is busy.
fn none() -> HashSet<Lane> {
    HashSet::new()
}

fn nothing() -> ApplyFn {
    Box::new(|_, _| Transition::default())
}

fn post(run: RunId, key: &str, channel: &str, thread: Option<&str>, text: &str) -> Effect {
    Effect::Send(Outgoing::Post {
        run: Some(run),
        key: MessageKey(key.into()),
        to: Destination {
            platform: "console".into(),
            channel: channel.into(),
            thread: thread.map(|k| MessageKey(k.into())),
            private_to: None,
        },
        message: OutMessage {
            text: text.into(),
            ..Default::default()
        },
        urgent: false,
    })
}

fn edit(run: RunId, key: &str, text: &str) -> Effect {
    Effect::Send(Outgoing::Edit {
        run: Some(run),
        key: MessageKey(key.into()),
        message: OutMessage {
            text: text.into(),
            ..Default::default()
        },
    })
}

/// An outbox entry as a story looks at it: key, op, thread reference, target reference, text.
type Shown = (String, OutboxOp, Option<String>, Option<String>, String);

fn audit(run: Option<RunId>, n: u32) -> AuditEvent {
    AuditEvent::new(t0(), AuditKind::ScheduleFired, run, json!({"n": n}))
}

/// Applies `effects` to a run, moving it on to `now`.
async fn emit(store: &dyn Store, run: RunId, now: DateTime<Utc>, effects: Vec<Effect>) {
    store
        .apply(
            run,
            None,
            Box::new(move |s, _| {
                s.run.updated_at = now;
                Transition {
                    effects,
                    notice: None,
                }
            }),
        )
        .await
        .unwrap()
        .expect("the run exists");
}

fn received(event: &str) -> NewRun {
    NewRun {
        received: Some(AuditEvent::new(
            t0(),
            AuditKind::TriggerReceived,
            None,
            json!({"event_id": event}),
        )),
        ..new_run(event)
    }
}

async fn a_run_is_created_once_per_event_id_and_each_receipt_is_in_the_ledger(store: Backend) {
    let first = store
        .create_run(
            received("ev-1"),
            t0(),
            Box::new(|s, _| Transition {
                effects: vec![Effect::Audit(AuditEvent::new(
                    t0(),
                    AuditKind::RunStarted,
                    Some(s.run.id),
                    json!({}),
                ))],
                notice: None,
            }),
        )
        .await
        .unwrap();
    assert!(first.new);
    let started = Arc::new(Mutex::new(false));
    let seen = started.clone();
    let again = store
        .create_run(
            received("ev-1"),
            t0(),
            Box::new(move |_, _| {
                *seen.lock().unwrap() = true;
                Transition::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(again.run, first.run);
    assert!(!again.new, "a second start of the same event is not new");
    assert!(
        !*started.lock().unwrap(),
        "nothing is applied the second time"
    );
    let kinds: Vec<String> = store
        .audit_page(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["trigger.received", "run.started", "trigger.received"],
        "the receipt goes first, in the run's transaction, and again for the repeat"
    );
    let other = store
        .create_run(new_run("ev-2"), t0(), nothing())
        .await
        .unwrap();
    assert_ne!(other.run, first.run);
    assert_eq!(store.list_runs(None, 10).await.unwrap().len(), 2);
}

async fn a_new_run_starts_from_exactly_the_state_that_is_read_back(store: Backend) {
    let seen: Arc<Mutex<Option<(RunState, Definition)>>> = Arc::default();
    let keep = seen.clone();
    let created = store
        .create_run(
            new_run("ev-1"),
            t0(),
            Box::new(move |s, d| {
                *keep.lock().unwrap() = Some((s.clone(), d.clone()));
                Transition::default()
            }),
        )
        .await
        .unwrap();
    let (started_from, def) = seen.lock().unwrap().take().unwrap();
    let read_back = store.load_run(created.run).await.unwrap().unwrap();
    assert_eq!(started_from, read_back);
    assert_eq!(read_back.run.status, RunStatus::Running);
    assert_eq!(
        read_back.run.created_at,
        t0() - Duration::nanoseconds(234_567),
        "kept to the millisecond"
    );
    assert_eq!(def.file, "commands/deploy.toml");
    assert_eq!(&*def.source, "name = \"deploy\"");
}

async fn what_an_apply_changes_is_what_is_read_back(store: Backend) {
    let run = a_run(&store).await;
    let later = t0() + Duration::seconds(5);
    let after: Arc<Mutex<Option<RunState>>> = Arc::default();
    let keep = after.clone();
    store
        .apply(
            run,
            None,
            Box::new(move |s, _| {
                s.run.updated_at = later;
                s.run.status = RunStatus::WaitingApproval;
                s.steps.insert(
                    "build".into(),
                    StepState {
                        status: StepStatus::Succeeded,
                        attempt: 1,
                        output: Some(json!({"image": "api:7"})),
                        started_at: Some(later),
                        finished_at: Some(later),
                        ..Default::default()
                    },
                );
                s.steps.insert("ship".into(), StepState::default());
                s.timers.insert("expire:ship".into(), later);
                *keep.lock().unwrap() = Some(s.clone());
                Transition::default()
            }),
        )
        .await
        .unwrap()
        .unwrap();
    let read = store.load_run(run).await.unwrap().unwrap();
    let wrote = after.lock().unwrap().take().unwrap();
    assert_eq!(read.run.status, RunStatus::WaitingApproval);
    assert_eq!(read.steps.len(), 2);
    assert_eq!(
        read.steps["build"].output,
        Some(json!({"image": "api:7"})),
        "outputs come back as written"
    );
    assert_eq!(read.steps["ship"].status, StepStatus::Pending);
    assert_eq!(read.timers.len(), 1);
    assert_eq!(
        read.run.updated_at.timestamp_millis(),
        wrote.run.updated_at.timestamp_millis()
    );
    // A timer that is gone from the state is gone from the store.
    store
        .apply(
            run,
            None,
            Box::new(|s, _| {
                s.timers.clear();
                s.steps.get_mut("ship").unwrap().status = StepStatus::Skipped;
                Transition::default()
            }),
        )
        .await
        .unwrap();
    let read = store.load_run(run).await.unwrap().unwrap();
    assert!(read.timers.is_empty());
    assert_eq!(read.steps["ship"].status, StepStatus::Skipped);
    assert!(
        store
            .apply(RunId(999), None, nothing())
            .await
            .unwrap()
            .is_none()
    );
}

async fn an_event_applied_twice_changes_the_run_once(store: Backend) {
    let run = a_run(&store).await;
    let bump = || -> ApplyFn {
        Box::new(|s, _| {
            s.steps.entry("count".into()).or_default().attempt += 1;
            Transition {
                effects: vec![Effect::Audit(audit(Some(s.run.id), 1))],
                notice: None,
            }
        })
    };
    let first = store.apply(run, Some("click-1"), bump()).await.unwrap();
    assert_eq!(first.unwrap().effects.len(), 1);
    let second = store.apply(run, Some("click-1"), bump()).await.unwrap();
    assert_eq!(
        second.unwrap(),
        Transition::default(),
        "seen before: nothing"
    );
    store.apply(run, Some("click-2"), bump()).await.unwrap();
    let read = store.load_run(run).await.unwrap().unwrap();
    assert_eq!(read.steps["count"].attempt, 2);
    assert_eq!(store.audit_recent(Some(run), 10).await.unwrap().len(), 2);
}

async fn concurrent_applies_to_one_run_all_count(store: Backend) {
    let store = Arc::new(store);
    let run = a_run(&store).await;
    let writes = (0..50).map(|_| {
        let store = store.clone();
        async move {
            store
                .apply(
                    run,
                    None,
                    Box::new(|s, _| {
                        s.steps.entry("count".into()).or_default().attempt += 1;
                        Transition::default()
                    }),
                )
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(writes).await;
    let read = store.load_run(run).await.unwrap().unwrap();
    assert_eq!(read.steps["count"].attempt, 50, "no write lost another's");
}

fn pending_approval(now: DateTime<Utc>) -> Approval {
    Approval {
        status: ApprovalStatus::Pending,
        approvers: vec!["ops".into()],
        summary: "ship api:7 to prod".into(),
        requested_at: now,
        expires_at: now + Duration::hours(1),
        decided_by: None,
        decided_at: None,
        reason: None,
        payload: Some(json!({"call_id": "c1"})),
        quorum: 2,
        votes: vec![],
        reminded_at: None,
        escalated_at: None,
        content: Some("api:7".into()),
        editors: vec![ben()],
        round: 1,
    }
}

async fn parked_approvals_are_listed_oldest_first_until_decided(store: Backend) {
    let mut runs = vec![];
    for i in 0..3 {
        let now = t0() + Duration::minutes(i);
        let created = store
            .create_run(
                new_run(&format!("ev-{i}")),
                now,
                Box::new(move |s, _| {
                    s.run.status = RunStatus::WaitingApproval;
                    s.approvals.insert("ship".into(), pending_approval(now));
                    Transition::default()
                }),
            )
            .await
            .unwrap();
        runs.push(created.run);
    }
    let (listed, total) = store.pending_approvals(2).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(
        listed.iter().map(|a| a.run).collect::<Vec<_>>(),
        runs[..2].to_vec()
    );
    assert_eq!(listed[0].summary, "ship api:7 to prod");
    let read = store.load_run(runs[0]).await.unwrap().unwrap();
    let a = &read.approvals["ship"];
    assert_eq!((a.quorum, a.round, a.editors.len()), (2, 1, 1));
    assert_eq!(a.payload, Some(json!({"call_id": "c1"})));
    store
        .apply(
            runs[0],
            None,
            Box::new(|s, _| {
                let a = s.approvals.get_mut("ship").unwrap();
                a.status = ApprovalStatus::Approved;
                a.decided_by = Some(ben());
                a.decided_at = Some(s.run.updated_at);
                Transition::default()
            }),
        )
        .await
        .unwrap();
    let (listed, total) = store.pending_approvals(10).await.unwrap();
    assert_eq!(total, 2);
    assert!(listed.iter().all(|a| a.run != runs[0]));
    let read = store.load_run(runs[0]).await.unwrap().unwrap();
    assert_eq!(read.approvals["ship"].decided_by, Some(ben()));
}

async fn timers_come_due_in_order_at_their_instant(store: Backend) {
    let run = store
        .create_run(
            new_run("ev-1"),
            t0(),
            Box::new(|s, _| {
                s.timers
                    .insert("remind:ship".into(), t0() + Duration::minutes(10));
                s.timers
                    .insert("expire:ship".into(), t0() + Duration::hours(1));
                Transition::default()
            }),
        )
        .await
        .unwrap()
        .run;
    assert!(store.due_timers(t0(), 10).await.unwrap().is_empty());
    let due = store
        .due_timers(t0() + Duration::minutes(10), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].0, due[0].1.as_str()), (run, "remind:ship"));
    // The instant reported is the one stored, which is what the state holds when read.
    let read = store.load_run(run).await.unwrap().unwrap();
    assert_eq!(read.timers["remind:ship"], due[0].2);
    let due = store
        .due_timers(t0() + Duration::days(1), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 2);
}

async fn attempts_are_recorded_from_start_to_end(store: Backend) {
    let run = a_run(&store).await;
    let job = |attempt| {
        Effect::Run(Job {
            run,
            step: "build".into(),
            attempt,
            timeout: Duration::seconds(30),
            work: Work::Tool {
                tool: "http".into(),
                args: json!({"url": "https://example.test", "token": "hunter22"}),
                declared: vec![],
            },
        })
    };
    emit(&*store.store, run, t0(), vec![job(1)]).await;
    assert_eq!(
        store.unfinished_attempts().await.unwrap(),
        vec![(run, "build".into(), 1)]
    );
    let ended = |attempt, outcome| Effect::AttemptEnded {
        run,
        step: "build".into(),
        attempt,
        outcome,
        detail: json!({"error": "timed out"}),
        at: t0() + Duration::seconds(30),
    };
    // One change may end an attempt and start the next.
    emit(
        &*store.store,
        run,
        t0() + Duration::seconds(30),
        vec![ended(1, AttemptOutcome::Failed), job(2)],
    )
    .await;
    emit(
        &*store.store,
        run,
        t0() + Duration::seconds(31),
        vec![job(3), ended(3, AttemptOutcome::Cancelled)],
    )
    .await;
    let attempts = store.attempts(run).await.unwrap();
    let got: Vec<(u32, &str)> = attempts
        .iter()
        .map(|a| (a.attempt, a.status.as_str()))
        .collect();
    assert_eq!(got, vec![(1, "failed"), (2, "running"), (3, "cancelled")]);
    assert_eq!(attempts[0].detail, json!({"error": "timed out"}));
    assert_eq!(
        attempts[0].input["args"]["token"], "[redacted]",
        "a field named for a secret is not kept"
    );
    assert_eq!(
        store.unfinished_attempts().await.unwrap(),
        vec![(run, "build".into(), 2)]
    );
}

async fn the_outbox_keeps_each_conversation_in_order_and_sends_only_the_latest_edit(
    store: Backend,
) {
    let run = a_run(&store).await;
    emit(
        &*store.store,
        run,
        t0(),
        vec![
            post(run, "root", "general", None, "deploy api"),
            post(run, "reply", "general", Some("root"), "build done"),
            edit(run, "root", "deploy api: running"),
            edit(run, "root", "deploy api: done"),
            post(run, "other", "ops", None, "heads up"),
            edit(
                run,
                "nowhere",
                "an edit of a post that does not exist is dropped",
            ),
        ],
    )
    .await;
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    let shown = |ready: &[OutboxEntry]| -> Vec<Shown> {
        ready
            .iter()
            .map(|e| {
                (
                    e.key.0.clone(),
                    e.op,
                    e.thread_ref.clone(),
                    e.target_ref.clone(),
                    e.message.text.clone(),
                )
            })
            .collect()
    };
    // The root goes first; the reply and the latest edit come right behind it in the same
    // conversation, without the root's reference (its deliverer has it by then); the earlier
    // edit is superseded, the edit of no post dropped; #ops is not held up by #general.
    let s = |t: &str| t.to_owned();
    assert_eq!(
        shown(&ready),
        vec![
            (s("root"), OutboxOp::Post, None, None, s("deploy api")),
            (s("reply"), OutboxOp::Post, None, None, s("build done")),
            (s("root"), OutboxOp::Edit, None, None, s("deploy api: done")),
            (s("other"), OutboxOp::Post, None, None, s("heads up")),
        ]
    );
    assert_eq!(ready[1].thread_key, Some(MessageKey("root".into())));
    store
        .outbox_delivered(ready[0].id, "ts-1", t0())
        .await
        .unwrap();
    store
        .outbox_delivered(ready[3].id, "ts-2", t0())
        .await
        .unwrap();
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    assert_eq!(
        shown(&ready),
        vec![
            (
                s("reply"),
                OutboxOp::Post,
                Some(s("ts-1")),
                None,
                s("build done")
            ),
            (
                s("root"),
                OutboxOp::Edit,
                None,
                Some(s("ts-1")),
                s("deploy api: done")
            ),
        ],
        "once the root is out, what follows it carries its reference"
    );
    assert_eq!(
        store.message_ref(&MessageKey("root".into())).await.unwrap(),
        Some("ts-1".into())
    );
    let rows = store.outbox_of_run(run).await.unwrap();
    let statuses: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.key.as_str(), r.op.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("root", "post", "delivered"),
            ("reply", "post", "pending"),
            ("root", "edit", "superseded"),
            ("root", "edit", "pending"),
            ("other", "post", "delivered"),
        ]
    );
    // An edit in a later change goes where its post went.
    emit(
        &*store.store,
        run,
        t0(),
        vec![edit(run, "other", "heads up (edited)")],
    )
    .await;
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    let other = ready.iter().find(|e| e.key.0 == "other").unwrap();
    assert_eq!((other.channel.as_str(), other.op), ("ops", OutboxOp::Edit));
}

async fn a_post_given_up_on_takes_what_depends_on_it_along_and_redelivery_brings_it_back(
    store: Backend,
) {
    let run = a_run(&store).await;
    emit(
        &*store.store,
        run,
        t0(),
        vec![
            post(run, "root", "general", None, "deploy api"),
            post(run, "reply", "general", Some("root"), "build done"),
            edit(run, "root", "deploy api: done"),
        ],
    )
    .await;
    let root = store
        .outbox_ready(t0(), 10, &none())
        .await
        .unwrap()
        .remove(0);
    // A transient failure waits, and holds the conversation.
    let later = t0() + Duration::seconds(30);
    store
        .outbox_failed(root.id, "HTTP 503", Some(later), t0())
        .await
        .unwrap();
    assert!(
        store
            .outbox_ready(t0(), 10, &none())
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.outbox_ready(later, 10, &none()).await.unwrap();
    let keys: Vec<(&str, OutboxOp)> = again.iter().map(|e| (e.key.0.as_str(), e.op)).collect();
    assert_eq!(
        keys,
        vec![
            ("root", OutboxOp::Post),
            ("reply", OutboxOp::Post),
            ("root", OutboxOp::Edit)
        ],
        "due again, the root first and what depends on it behind it"
    );
    assert_eq!(
        (again[0].attempts, again[0].failing_since),
        (1, Some(t0() - Duration::nanoseconds(234_567)))
    );
    store
        .outbox_failed(root.id, "channel_not_found", None, later)
        .await
        .unwrap();
    assert!(
        store
            .outbox_ready(later, 10, &none())
            .await
            .unwrap()
            .is_empty()
    );
    let failed = store.failed_deliveries(10).await.unwrap();
    assert_eq!(
        failed.len(),
        3,
        "the reply and the edit fail with their root"
    );
    assert!(
        store
            .audit_recent(Some(run), 10)
            .await
            .unwrap()
            .iter()
            .any(|e| e.kind == "post.failed"),
        "giving up is in the ledger"
    );
    emit(&*store.store, run, later, vec![Effect::Redeliver(run)]).await;
    let back = store.outbox_ready(later, 10, &none()).await.unwrap();
    let keys: Vec<(&str, u32)> = back
        .iter()
        .map(|e| (e.key.0.as_str(), e.attempts))
        .collect();
    assert_eq!(
        keys,
        vec![("root", 0), ("reply", 0), ("root", 0)],
        "the root first, the rest behind it, as if new"
    );
    assert!(store.failed_deliveries(10).await.unwrap().is_empty());
}

async fn the_ledger_is_one_chain_that_verifies_and_holds_no_secret(store: Backend) {
    let run = a_run(&store).await;
    store
        .audit_append(vec![audit(None, 1), audit(None, 2)])
        .await
        .unwrap();
    emit(
        &*store.store,
        run,
        t0(),
        vec![
            Effect::Audit(AuditEvent::new(
                t0(),
                AuditKind::RunStarted,
                Some(run),
                json!({"said": "the key is s3cr3t-value-9", "api_key": "sk-abc123"}),
            )),
            Effect::Audit(audit(Some(run), 3)),
        ],
    )
    .await;
    let page = store.audit_page(0, 100).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for pair in page.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "each entry chains onto the one before"
        );
    }
    assert!(
        !page[2].data.contains("s3cr3t-value-9"),
        "a configured secret is not kept"
    );
    assert!(
        !page[2].data.contains("sk-abc123"),
        "a field named for a secret is not kept"
    );
    match verify_ledger(&*store.store, None, vec![]).await.unwrap() {
        Verification::Intact { entries, .. } => assert_eq!(entries, 4),
        broken => panic!("{broken:?}"),
    }
    let recent = store.audit_recent(Some(run), 10).await.unwrap();
    assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 3]);
}

async fn schedule_cursors_remember_the_last_slot(store: Backend) {
    assert_eq!(
        store.schedule_cursor("digest", "0 9 * * *").await.unwrap(),
        None
    );
    store
        .set_schedule_cursor("digest", "0 9 * * *", t0())
        .await
        .unwrap();
    store
        .set_schedule_cursor("digest", "0 9 * * *", t0() + Duration::days(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .schedule_cursor("digest", "0 9 * * *")
            .await
            .unwrap()
            .map(|t| t.timestamp_millis()),
        Some((t0() + Duration::days(1)).timestamp_millis())
    );
    assert_eq!(
        store.schedule_cursor("digest", "other").await.unwrap(),
        None
    );
}

async fn console_history_keeps_threads_and_posts_an_outbox_entry_once(store: Backend) {
    let hello = OutMessage {
        text: "hello".into(),
        ..Default::default()
    };
    let p = |outbox_id, client_id, thread_id| ConsolePost {
        channel: "general",
        thread_id,
        author: "ben",
        is_bot: false,
        message: &hello,
        outbox_id,
        client_id,
    };
    let (root, new) = store
        .console_post(p(None, Some("c-1"), None), t0())
        .await
        .unwrap();
    assert!(new);
    let (same, new) = store
        .console_post(p(None, Some("c-1"), None), t0())
        .await
        .unwrap();
    assert!(!new, "the author's same message is posted once");
    assert_eq!(same.id, root.id);
    let (bot, _) = store
        .console_post(p(Some(7), None, Some(root.id)), t0())
        .await
        .unwrap();
    let (bot_again, new) = store
        .console_post(p(Some(7), None, Some(root.id)), t0())
        .await
        .unwrap();
    assert!(!new, "an outbox entry delivered twice is one message");
    assert_eq!(bot.id, bot_again.id);
    let edited = OutMessage {
        text: "hello, edited".into(),
        ..Default::default()
    };
    let after_edit = store
        .console_edit(root.id, &edited, None, t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after_edit.message.text.as_str(), after_edit.replies),
        ("hello, edited", 1)
    );
    assert!(
        store
            .console_edit(9999, &edited, None, t0())
            .await
            .unwrap()
            .is_none()
    );
    let channel = store.console_channel("general", 10).await.unwrap();
    assert_eq!(channel.len(), 1, "replies stay in their thread");
    assert_eq!(
        (channel[0].message.text.as_str(), channel[0].replies),
        ("hello, edited", 1)
    );
    let thread = store.console_thread(root.id).await.unwrap();
    assert_eq!(
        thread.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![root.id, bot.id]
    );
    assert_eq!(
        store
            .console_member_of("ben", &["general".into(), "ops".into()])
            .await
            .unwrap(),
        vec!["general".to_owned()]
    );
    assert_eq!(
        store.console_channel_names().await.unwrap(),
        vec!["general".to_owned()]
    );
}

async fn posting_an_outbox_entry_in_the_console_records_its_delivery_once(store: Backend) {
    let run = a_run(&store).await;
    emit(
        &*store.store,
        run,
        t0(),
        vec![
            post(run, "root", "general", None, "deploy api"),
            edit(run, "root", "deploy api: done"),
        ],
    )
    .await;
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    let (root, edit) = (&ready[0], &ready[1]);
    let deliver = |id| ConsolePost {
        channel: "general",
        thread_id: None,
        author: "baton",
        is_bot: true,
        message: &root.message,
        outbox_id: Some(id),
        client_id: None,
    };
    let (m, _) = store.console_post(deliver(root.id), t0()).await.unwrap();
    // Delivered twice (a crash before the engine heard of it): one message, one record.
    let (again, new) = store.console_post(deliver(root.id), t0()).await.unwrap();
    assert_eq!((again.id, new), (m.id, false));
    store
        .console_edit(m.id, &edit.message, Some(edit.id), t0())
        .await
        .unwrap()
        .unwrap();
    let rows = store.outbox_of_run(run).await.unwrap();
    let got: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.op.as_str(), r.status.as_str(), r.platform_ref.as_deref()))
        .collect();
    let id = m.id.to_string();
    assert_eq!(
        got,
        vec![
            ("post", "delivered", Some(id.as_str())),
            ("edit", "delivered", Some(id.as_str()))
        ]
    );
    let delivered = store
        .audit_recent(Some(run), 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "post.delivered")
        .count();
    assert_eq!(delivered, 2, "each delivery is in the ledger once");
    assert!(
        store
            .outbox_ready(t0(), 10, &none())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_console_batch_delivers_a_thread_in_one_write_once(store: Backend) {
    let run = a_run(&store).await;
    emit(
        &*store.store,
        run,
        t0(),
        vec![
            post(run, "root", "general", None, "deploy api"),
            post(run, "reply", "general", Some("root"), "build done"),
            edit(run, "root", "deploy api: done"),
        ],
    )
    .await;
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    let delivery = |i: usize, about: Option<ConsoleRef>| ConsoleDelivery {
        outbox_id: ready[i].id,
        author: "baton",
        key: ready[i].key.clone(),
        op: ready[i].op,
        channel: "general".into(),
        about,
        message: ready[i].message.clone(),
    };
    let root = || Some(ConsoleRef::Post(MessageKey("root".into())));
    let batch = vec![delivery(0, None), delivery(1, root()), delivery(2, root())];
    let out = store.console_deliver(batch.clone(), t0()).await.unwrap();
    let messages: Vec<_> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(messages.len(), 3);
    let (first, reply, edited) = (&messages[0], &messages[1], &messages[2]);
    assert_eq!(
        reply.thread_id,
        Some(first.id),
        "the reply is in the root's thread"
    );
    assert_eq!(
        (edited.id, edited.message.text.as_str()),
        (first.id, "deploy api: done")
    );
    assert_eq!(edited.replies, 1);
    let rows = store.outbox_of_run(run).await.unwrap();
    assert!(rows.iter().all(|r| r.status == "delivered"), "{rows:?}");
    let ledger = || async {
        store
            .audit_recent(Some(run), 20)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "post.delivered")
            .count()
    };
    assert_eq!(ledger().await, 3);
    // The same batch again (a crash before the engine heard of it): nothing new.
    let again = store.console_deliver(batch, t0()).await.unwrap();
    let ids: Vec<i64> = again.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids, vec![first.id, reply.id, first.id]);
    assert_eq!(ledger().await, 3, "each delivery is in the ledger once");
    assert_eq!(store.console_thread(first.id).await.unwrap().len(), 2);
    // A reply about a post that is not out stops the batch without a result; an edit of a
    // message that is gone ends it with the reason.
    let orphan = vec![delivery(
        1,
        Some(ConsoleRef::Post(MessageKey("nowhere".into()))),
    )];
    assert!(
        store
            .console_deliver(orphan, t0())
            .await
            .unwrap()
            .is_empty()
    );
    let gone = vec![delivery(2, Some(ConsoleRef::Id(9999)))];
    let out = store.console_deliver(gone, t0()).await.unwrap();
    let reasons: Vec<&str> = out
        .iter()
        .map(|r| r.as_ref().unwrap_err().as_str())
        .collect();
    assert_eq!(reasons, vec!["message 9999 no longer exists"]);
}

async fn agent_turns_and_memory_are_kept_and_a_repeated_turn_is_the_same_turn(store: Backend) {
    let run = a_run(&store).await;
    for (seq, text) in [(0, "first"), (1, "second"), (1, "second, after a crash")] {
        store
            .agent_turn_append(
                run,
                "triage",
                seq,
                &json!({"role": "assistant", "content": text}),
                t0(),
            )
            .await
            .unwrap();
    }
    let turns = store.agent_turns(run, "triage").await.unwrap();
    let texts: Vec<&str> = turns
        .iter()
        .map(|t| t["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["first", "second"]);
    store.agent_turns_clear(run, "triage").await.unwrap();
    assert!(store.agent_turns(run, "triage").await.unwrap().is_empty());
    let entry = |value: Value| MemoryEntry {
        namespace: "leads".into(),
        key: "acme".into(),
        value,
        run: Some(run),
        step: Some("triage".into()),
        agent: Some("scout".into()),
        written_at: t0(),
    };
    store
        .memory_write(&entry(json!({"stage": "new"})))
        .await
        .unwrap();
    store
        .memory_write(&entry(json!({"stage": "qualified"})))
        .await
        .unwrap();
    let read = store.memory_read("leads", "acme").await.unwrap().unwrap();
    assert_eq!(
        read.value,
        json!({"stage": "qualified"}),
        "the last write wins"
    );
    assert_eq!(read.agent.as_deref(), Some("scout"));
    assert_eq!(store.memory_list(Some("leads"), 10).await.unwrap().len(), 1);
    assert!(
        store
            .memory_read("leads", "nobody")
            .await
            .unwrap()
            .is_none()
    );
}

async fn secrets_are_taken_out_of_everything_stored(store: Backend) {
    let mut new = new_run("ev-1");
    new.title = "deploy with s3cr3t-value-9".into();
    new.inputs.insert("note".into(), json!("s3cr3t-value-9"));
    let run = store
        .create_run(
            new,
            t0(),
            Box::new(|s, _| {
                s.steps.insert(
                    "fetch".into(),
                    StepState {
                        output: Some(json!({"body": "got s3cr3t-value-9"})),
                        error: Some("s3cr3t-value-9 refused".into()),
                        ..Default::default()
                    },
                );
                Transition {
                    effects: vec![post(s.run.id, "root", "general", None, "s3cr3t-value-9")],
                    notice: None,
                }
            }),
        )
        .await
        .unwrap()
        .run;
    let read = store.load_run(run).await.unwrap().unwrap();
    let shown = serde_json::to_string(&(
        &read.run.title,
        &read.run.inputs,
        &read.steps["fetch"].output,
        &read.steps["fetch"].error,
    ))
    .unwrap();
    assert!(!shown.contains("s3cr3t-value-9"), "{shown}");
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    assert!(!ready[0].message.text.contains("s3cr3t-value-9"));
}

async fn a_conversation_that_waits_hides_no_other_and_a_busy_lane_is_passed_by(store: Backend) {
    let run = a_run(&store).await;
    // A hundred posts in #storm, older than the rest: a read of the oldest waiting entries
    // alone would never reach the others.
    let storm: Vec<Effect> = (0..100)
        .map(|i| post(run, &format!("storm-{i}"), "storm", None, "wave"))
        .collect();
    emit(&*store.store, run, t0(), storm).await;
    // Conversations after #storm, on this platform and on others before and after it.
    let on = |platform: &str, channel: &str| {
        let mut effect = post(run, &format!("{platform}-{channel}"), channel, None, "hi");
        if let Effect::Send(Outgoing::Post { to, .. }) = &mut effect {
            to.platform = platform.into();
        }
        effect
    };
    let others = vec![
        on("console", "calm"),
        on("slack", "a"),
        on("discord", "z"),
        on("slack", "b"),
    ];
    emit(&*store.store, run, t0(), others).await;
    let keys =
        |ready: &[OutboxEntry]| -> Vec<String> { ready.iter().map(|e| e.key.0.clone()).collect() };
    let head = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    assert_eq!(
        head.len(),
        14,
        "ten of #storm's, one of each other: {:?}",
        keys(&head)
    );
    assert_eq!(head[0].key.0, "storm-0");
    assert_eq!(
        keys(&head)[10..],
        ["console-calm", "slack-a", "discord-z", "slack-b"],
        "oldest first"
    );
    // #storm is rate-limited: its head waits, and the others still go.
    let later = t0() + Duration::seconds(30);
    store.outbox_defer(head[0].id, later).await.unwrap();
    let ready = store.outbox_ready(t0(), 10, &none()).await.unwrap();
    assert_eq!(
        keys(&ready),
        ["console-calm", "slack-a", "discord-z", "slack-b"]
    );
    // Lanes with a delivery under way are passed by.
    let busy: HashSet<Lane> = ready.iter().map(|e| e.lane()).collect();
    let passed = store.outbox_ready(t0(), 10, &busy).await.unwrap();
    assert!(passed.is_empty(), "{:?}", keys(&passed));
    let ready = store.outbox_ready(later, 10, &busy).await.unwrap();
    assert_eq!(keys(&ready)[..3], ["storm-0", "storm-1", "storm-2"]);
    assert!(ready.iter().all(|e| e.channel == "storm"));
}

macro_rules! contract {
    ($($backend:ident),+ : $stories:tt) => {
        $( contract!(@one $backend $stories); )+
    };
    (@one $backend:ident { $($story:ident),* $(,)? }) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $story() {
                    let redactor = baton::core::audit::Redactor::new(["s3cr3t-value-9".to_owned()]);
                    super::$story(super::$backend(redactor).await).await
                }
            )*
        }
    };
}

async fn a_lease_is_one_replicas_until_it_lapses_and_only_its_holder_renews_it(store: Backend) {
    let b = store.replica("b").await;
    let (c1, c2) = ("lane:slack:C1".to_owned(), "lane:slack:C2".to_owned());
    let both = [c1.clone(), c2.clone()];
    let at = |s| t0() + Duration::seconds(s);
    let mut got = store
        .lease_claim(&both, "a", true, at(0), at(30))
        .await
        .unwrap();
    got.sort_by(|x, y| x.name.cmp(&y.name));
    let holders: Vec<(&str, &str)> = got
        .iter()
        .map(|l| (l.name.as_str(), l.holder.as_str()))
        .collect();
    assert_eq!(holders, vec![(c1.as_str(), "a"), (c2.as_str(), "a")]);
    // Another replica is told whose it is, and until when.
    let theirs = b
        .lease_claim(std::slice::from_ref(&c1), "b", true, at(1), at(31))
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].holder, "a");
    assert_eq!(
        theirs[0].until.timestamp_millis(),
        at(30).timestamp_millis()
    );
    // Its holder renews it; nobody else can.
    let (kept, _) = store
        .lease_renew(std::slice::from_ref(&c1), &[], "a", at(40))
        .await
        .unwrap();
    assert_eq!(kept, vec![c1.clone()]);
    let (kept, _) = b.lease_renew(&both, &[], "b", at(45)).await.unwrap();
    assert!(kept.is_empty(), "{kept:?}");
    // Not renewed, C2 lapsed: another replica takes it, and the first finds it gone.
    // Lapsed, it is taken only by a replica that may take over what others let lapse.
    let left = b
        .lease_claim(std::slice::from_ref(&c2), "b", false, at(31), at(61))
        .await
        .unwrap();
    assert_eq!(left[0].holder, "a");
    let taken = b
        .lease_claim(std::slice::from_ref(&c2), "b", true, at(31), at(61))
        .await
        .unwrap();
    assert_eq!(taken[0].holder, "b");
    let (kept, _) = store.lease_renew(&both, &[], "a", at(70)).await.unwrap();
    assert_eq!(kept, vec![c1.clone()]);
    // What a holder leaves for the next stays when it lets go, and the lease is free at once,
    // even for a replica that may not take over lapsed ones.
    assert!(b.lease_set_data(&c2, "b", "session-7").await.unwrap());
    assert!(!store.lease_set_data(&c2, "a", "mine").await.unwrap());
    b.lease_release("b").await.unwrap();
    assert_eq!(
        store.lease_data(&c2).await.unwrap().as_deref(),
        Some("session-7")
    );
    let again = store
        .lease_claim(std::slice::from_ref(&c2), "a", false, at(32), at(62))
        .await
        .unwrap();
    assert_eq!(again[0].holder, "a");
    b.close().await;
}

async fn an_attempt_is_its_starters_until_its_lease_lapses_then_one_replica_takes_it_over(
    store: Backend,
) {
    // The store under test is replica `baton`, leases of 30 s.
    let run = a_run(&store).await;
    let job = |attempt| {
        Effect::Run(Job {
            run,
            step: "build".into(),
            attempt,
            timeout: Duration::seconds(300),
            work: Work::Tool {
                tool: "http".into(),
                args: json!({}),
                declared: vec![],
            },
        })
    };
    let at = |s| t0() + Duration::seconds(s);
    emit(&*store.store, run, at(0), vec![job(1)]).await;
    let (b, c) = (store.replica("b").await, store.replica("c").await);
    let key = (run, "build".to_owned(), 1);
    assert!(
        b.attempts_take_over("b", false, at(10), at(40), 10)
            .await
            .unwrap()
            .is_empty(),
        "held while its lease lasts"
    );
    let (_, lost) = store
        .lease_renew(&[], std::slice::from_ref(&key), "baton", at(60))
        .await
        .unwrap();
    assert!(lost.is_empty());
    assert!(
        b.attempts_take_over("b", false, at(45), at(75), 10)
            .await
            .unwrap()
            .is_empty(),
        "renewed"
    );
    // Lapsed: two replicas look at once, and one of them takes it.
    let (x, y) = tokio::join!(
        b.attempts_take_over("b", false, at(61), at(91), 10),
        c.attempts_take_over("c", false, at(61), at(91), 10),
    );
    let mut taken = x.unwrap();
    taken.extend(y.unwrap());
    assert_eq!(taken, vec![key.clone()]);
    let (_, lost) = store
        .lease_renew(&[], std::slice::from_ref(&key), "baton", at(62))
        .await
        .unwrap();
    assert_eq!(lost, vec![key.clone()], "the first holder hears it is gone");
    // Ended, it is nobody's to take over.
    emit(
        &*store.store,
        run,
        at(63),
        vec![Effect::AttemptEnded {
            run,
            step: "build".into(),
            attempt: 1,
            outcome: AttemptOutcome::Lost,
            detail: json!({}),
            at: at(63),
        }],
    )
    .await;
    assert!(
        c.attempts_take_over("c", false, at(500), at(530), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A replica starting again under its name takes back what its previous life held, at
    // once; one that stops lets go of what it held, which another takes at once.
    emit(&*store.store, run, at(64), vec![job(2)]).await;
    let key = (run, "build".to_owned(), 2);
    assert_eq!(
        store
            .attempts_take_over("baton", true, at(65), at(95), 10)
            .await
            .unwrap(),
        vec![key.clone()]
    );
    store.lease_release("baton").await.unwrap();
    assert_eq!(
        b.attempts_take_over("b", false, at(66), at(96), 10)
            .await
            .unwrap(),
        vec![key]
    );
    b.close().await;
    c.close().await;
}

async fn replicas_claiming_a_lapsed_lease_at_once_leave_it_with_exactly_one(store: Backend) {
    let (b, c) = (store.replica("b").await, store.replica("c").await);
    let at = |s| t0() + Duration::seconds(s);
    for i in 0..20 {
        let name = vec![format!("lane:slack:C{i}")];
        store
            .lease_claim(&name, "a", true, at(0), at(1))
            .await
            .unwrap();
        // Lapsed: its holder and two others ask at the same moment.
        let (x, y, z) = tokio::join!(
            store.lease_claim(&name, "a", true, at(2), at(3)),
            b.lease_claim(&name, "b", true, at(2), at(3)),
            c.lease_claim(&name, "c", true, at(2), at(3)),
        );
        let winners: Vec<&str> = [(x, "a"), (y, "b"), (z, "c")]
            .into_iter()
            .filter(|(got, me)| got.as_ref().unwrap().iter().any(|l| l.holder == *me))
            .map(|(_, me)| me)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {i}: {winners:?} each think they hold it"
        );
    }
    b.close().await;
    c.close().await;
}

contract!(sqlite, postgres: {
    a_run_is_created_once_per_event_id_and_each_receipt_is_in_the_ledger,
    a_new_run_starts_from_exactly_the_state_that_is_read_back,
    what_an_apply_changes_is_what_is_read_back,
    an_event_applied_twice_changes_the_run_once,
    concurrent_applies_to_one_run_all_count,
    parked_approvals_are_listed_oldest_first_until_decided,
    timers_come_due_in_order_at_their_instant,
    attempts_are_recorded_from_start_to_end,
    the_outbox_keeps_each_conversation_in_order_and_sends_only_the_latest_edit,
    a_conversation_that_waits_hides_no_other_and_a_busy_lane_is_passed_by,
    a_post_given_up_on_takes_what_depends_on_it_along_and_redelivery_brings_it_back,
    the_ledger_is_one_chain_that_verifies_and_holds_no_secret,
    schedule_cursors_remember_the_last_slot,
    console_history_keeps_threads_and_posts_an_outbox_entry_once,
    posting_an_outbox_entry_in_the_console_records_its_delivery_once,
    a_console_batch_delivers_a_thread_in_one_write_once,
    agent_turns_and_memory_are_kept_and_a_repeated_turn_is_the_same_turn,
    secrets_are_taken_out_of_everything_stored,
    a_lease_is_one_replicas_until_it_lapses_and_only_its_holder_renews_it,
    an_attempt_is_its_starters_until_its_lease_lapses_then_one_replica_takes_it_over,
    replicas_claiming_a_lapsed_lease_at_once_leave_it_with_exactly_one,
});

/// Replicas starting at the same moment on one new database: every one opens it, and each
/// migration is applied once.
#[tokio::test]
async fn replicas_starting_at_once_on_postgres_apply_each_migration_once() {
    use sqlx::Connection as _;
    let schema = postgres_schema::Schema::new().await;
    let opening = (0..4).map(|_| baton::store::open(&schema.url, Default::default()));
    let stores: Vec<_> = futures_util::future::join_all(opening).await;
    for s in &stores {
        assert!(s.is_ok(), "{:?}", s.as_ref().err());
    }
    let mut c = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(applied, vec![(1, true), (2, true)]);
    // The ledger refuses changes there too.
    let store = stores.into_iter().next().unwrap().unwrap();
    store
        .audit_append(vec![AuditEvent::new(
            t0(),
            AuditKind::ScheduleFired,
            None,
            json!({"slot": 1}),
        )])
        .await
        .unwrap();
    for sql in [
        "UPDATE audit SET data = '{}'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let refused = sqlx::query(sql).execute(&mut c).await.unwrap_err();
        assert!(
            refused.to_string().contains("append-only"),
            "{sql}: {refused}"
        );
    }
}
