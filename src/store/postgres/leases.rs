//! Leases on PostgreSQL: how replicas share one database's work. Each operation is one
//! statement of its own, outside the writer's batches: a batch holds the rows of the runs it
//! changes until it commits, and a lease taken in the same transaction would make two
//! replicas' batches wait on each other. Each statement decides who holds what by itself (an
//! upsert that only takes a lapsed or own lease; `FOR UPDATE SKIP LOCKED` for attempts), so
//! replicas asking at the same moment never both win, and none waits for rows another is
//! changing.

use super::super::tx;
use super::{PostgresStore, each, get};
use crate::store::*;
use sqlx::postgres::PgRow;

fn attempt_key(r: &PgRow) -> StoreResult<AttemptKey> {
    Ok((
        RunId(get(r, "run_id")?),
        get(r, "step_id")?,
        get::<i64>(r, "attempt")? as u32,
    ))
}

/// Attempts as three arrays, for `unnest`.
fn columns(attempts: &[AttemptKey]) -> (Vec<i64>, Vec<String>, Vec<i64>) {
    let runs = attempts.iter().map(|a| a.0.0).collect();
    let steps = attempts.iter().map(|a| a.1.clone()).collect();
    let numbers = attempts.iter().map(|a| i64::from(a.2)).collect();
    (runs, steps, numbers)
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn lease_claim(
        &self,
        names: &[String],
        holder: &str,
        steal: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<Lease>> {
        let mut names = names.to_vec();
        // An upsert may touch a row once per statement, and rows taken in one order by
        // everyone never wait on each other in a circle.
        names.sort();
        names.dedup();
        // Those taken, then the others as this statement's snapshot has them. A lease another
        // replica took while this statement waited for it shows in that snapshot as it was
        // before; so one that was this replica's there and was not taken now is left out (its
        // holder is not known yet, and it is not this replica's any more).
        let rows = sqlx::query(
            "WITH taken AS (
               INSERT INTO leases (name, holder, until) SELECT n, $2, $3 FROM unnest($1::text[]) AS n
               ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
               WHERE leases.holder IN (excluded.holder, '') OR ($5 AND leases.until < $4)
               RETURNING name, holder, until)
             SELECT name, holder, until FROM taken
             UNION ALL
             SELECT l.name, l.holder, l.until FROM leases l
             WHERE l.name = ANY($1) AND l.holder <> $2
               AND NOT EXISTS (SELECT 1 FROM taken t WHERE t.name = l.name)",
        )
        .bind(&names)
        .bind(holder)
        .bind(tx::ms(until))
        .bind(tx::ms(now))
        .bind(steal)
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| {
            Ok(Lease {
                name: get(r, "name")?,
                holder: get(r, "holder")?,
                until: tx::at(get(r, "until")?),
            })
        })
    }

    async fn lease_renew(
        &self,
        names: &[String],
        attempts: &[AttemptKey],
        holder: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, Vec<AttemptKey>)> {
        // A lease someone is taking at this moment is passed by: it is being lost.
        let held: Vec<String> = sqlx::query_scalar(
            "UPDATE leases SET until = $1 WHERE name IN (
               SELECT name FROM leases WHERE holder = $2 AND name = ANY($3) FOR UPDATE SKIP LOCKED)
             RETURNING name",
        )
        .bind(tx::ms(until))
        .bind(holder)
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        let (runs, steps, numbers) = columns(attempts);
        // An attempt a batch is changing is passed by (its run is moving on, or its lease is
        // being set); of the rest, those still running under another holder were taken over.
        let lost = sqlx::query(
            "WITH mine AS (SELECT * FROM unnest($3::bigint[], $4::text[], $5::bigint[]) AS m(run_id, step_id, attempt)),
             renewed AS (
               UPDATE attempts a SET lease_until = $1 FROM (
                 SELECT a.run_id, a.step_id, a.attempt FROM attempts a JOIN mine USING (run_id, step_id, attempt)
                 WHERE a.status = 'running' AND a.owner = $2 FOR UPDATE OF a SKIP LOCKED) t
               WHERE a.run_id = t.run_id AND a.step_id = t.step_id AND a.attempt = t.attempt)
             SELECT a.run_id, a.step_id, a.attempt FROM attempts a JOIN mine USING (run_id, step_id, attempt)
             WHERE a.status = 'running' AND a.owner IS DISTINCT FROM $2",
        )
        .bind(tx::ms(until))
        .bind(holder)
        .bind(&runs)
        .bind(&steps)
        .bind(&numbers)
        .fetch_all(&self.pool)
        .await?;
        Ok((held, each(lost, attempt_key)?))
    }

    async fn lease_release(&self, holder: &str) -> StoreResult<()> {
        // A lease with something left for the next holder stays, free.
        sqlx::query(
            "WITH gone AS (DELETE FROM leases WHERE holder = $1 AND data IS NULL),
             kept AS (UPDATE leases SET holder = '', until = 0 WHERE holder = $1 AND data IS NOT NULL)
             UPDATE attempts SET lease_until = 0 WHERE status = 'running' AND owner = $1",
        )
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn lease_data(&self, name: &str) -> StoreResult<Option<String>> {
        let data: Option<Option<String>> =
            sqlx::query_scalar("SELECT data FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(data.flatten())
    }

    async fn lease_set_data(&self, name: &str, holder: &str, data: &str) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE leases SET data = $1 WHERE name = $2 AND holder = $3")
            .bind(data)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn attempts_take_over(
        &self,
        holder: &str,
        mine: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<AttemptKey>> {
        // Rows another replica is taking, or a batch is changing, at this moment are passed
        // by (SKIP LOCKED); one taken meanwhile no longer matches when its lock is let go.
        let rows = sqlx::query(
            "UPDATE attempts a SET owner = $1, lease_until = $2
             FROM (SELECT run_id, step_id, attempt FROM attempts
                   WHERE status = 'running'
                     AND (($4 AND owner = $1) OR lease_until IS NULL OR lease_until < $3)
                   ORDER BY run_id, step_id LIMIT $5
                   FOR UPDATE SKIP LOCKED) t
             WHERE a.run_id = t.run_id AND a.step_id = t.step_id AND a.attempt = t.attempt
             RETURNING a.run_id, a.step_id, a.attempt",
        )
        .bind(holder)
        .bind(tx::ms(until))
        .bind(tx::ms(now))
        .bind(mine)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        each(rows, attempt_key)
    }
}
