//! Leases on PostgreSQL: how replicas share one database's work. Each statement decides who
//! holds what by itself (an upsert that only takes a lapsed or own lease; `FOR UPDATE SKIP
//! LOCKED` for attempts), so replicas asking at the same moment never both win.

use super::super::tx;
use super::{PostgresStore, each, get, write_tx};
use crate::store::*;
use sqlx::postgres::PgRow;

fn attempt_key(r: &PgRow) -> StoreResult<(RunId, String, u32)> {
    Ok((
        RunId(get(r, "run_id")?),
        get(r, "step_id")?,
        get::<i64>(r, "attempt")? as u32,
    ))
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn lease_claim(
        &self,
        names: &[String],
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<Lease>> {
        let mut names = names.to_vec();
        // An upsert may touch a row once per statement.
        names.sort();
        names.dedup();
        let holder = holder.to_owned();
        let rows = write_tx!(self, |c, _rules| {
            // Those taken, then the others as this statement found them. One that another
            // replica took while this statement waited for it may be in neither list: its
            // holder is not known yet, and it is not this replica's.
            let rows = sqlx::query(
                "WITH taken AS (
                   INSERT INTO leases (name, holder, until) SELECT n, $2, $3 FROM unnest($1::text[]) AS n
                   ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                   WHERE leases.until < $4 OR leases.holder = excluded.holder
                   RETURNING name, holder, until)
                 SELECT name, holder, until FROM taken
                 UNION ALL
                 SELECT l.name, l.holder, l.until FROM leases l
                 WHERE l.name = ANY($1) AND NOT EXISTS (SELECT 1 FROM taken t WHERE t.name = l.name)",
            )
            .bind(&names)
            .bind(&holder)
            .bind(tx::ms(until))
            .bind(tx::ms(now))
            .fetch_all(&mut **c)
            .await?;
            Ok(rows)
        })?;
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
        holder: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, Vec<(RunId, String, u32)>)> {
        let (names, holder) = (names.to_vec(), holder.to_owned());
        let (held, attempts) = write_tx!(self, |c, _rules| {
            let held: Vec<String> = sqlx::query_scalar(
                "UPDATE leases SET until = $1 WHERE holder = $2 AND name = ANY($3) RETURNING name",
            )
            .bind(tx::ms(until))
            .bind(&holder)
            .bind(&names)
            .fetch_all(&mut **c)
            .await?;
            let attempts = sqlx::query(
                "UPDATE attempts SET lease_until = $1 WHERE status = 'running' AND owner = $2
                 RETURNING run_id, step_id, attempt",
            )
            .bind(tx::ms(until))
            .bind(&holder)
            .fetch_all(&mut **c)
            .await?;
            Ok((held, attempts))
        })?;
        Ok((held, each(attempts, attempt_key)?))
    }

    async fn lease_release(&self, holder: &str) -> StoreResult<()> {
        let holder = holder.to_owned();
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "WITH gone AS (DELETE FROM leases WHERE holder = $1 AND data IS NULL),
                 kept AS (UPDATE leases SET until = 0 WHERE holder = $1 AND data IS NOT NULL)
                 UPDATE attempts SET lease_until = 0 WHERE status = 'running' AND owner = $1",
            )
            .bind(&holder)
            .execute(&mut **c)
            .await?;
            Ok(())
        })
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
        let (name, holder, data) = (name.to_owned(), holder.to_owned(), data.to_owned());
        write_tx!(self, |c, _rules| {
            let done = sqlx::query("UPDATE leases SET data = $1 WHERE name = $2 AND holder = $3")
                .bind(&data)
                .bind(&name)
                .bind(&holder)
                .execute(&mut **c)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn attempts_take_over(
        &self,
        holder: &str,
        mine: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(RunId, String, u32)>> {
        let holder = holder.to_owned();
        let rows = write_tx!(self, |c, _rules| {
            // Rows another replica is taking at this moment are passed by (SKIP LOCKED), and
            // one it took meanwhile no longer matches when its lock is let go.
            let rows = sqlx::query(
                "UPDATE attempts a SET owner = $1, lease_until = $2
                 FROM (SELECT run_id, step_id, attempt FROM attempts
                       WHERE status = 'running'
                         AND (($4 AND owner = $1)
                              OR ((lease_until IS NULL OR lease_until < $3) AND owner IS DISTINCT FROM $1))
                       ORDER BY run_id, step_id LIMIT $5
                       FOR UPDATE SKIP LOCKED) t
                 WHERE a.run_id = t.run_id AND a.step_id = t.step_id AND a.attempt = t.attempt
                 RETURNING a.run_id, a.step_id, a.attempt",
            )
            .bind(&holder)
            .bind(tx::ms(until))
            .bind(tx::ms(now))
            .bind(mine)
            .bind(i64::from(limit))
            .fetch_all(&mut **c)
            .await?;
            Ok(rows)
        })?;
        each(rows, attempt_key)
    }
}
