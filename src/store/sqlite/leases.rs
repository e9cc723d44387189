//! Leases on SQLite. One process serves a SQLite database at a time (the serving lock), so
//! these rows only ever name it; they are kept all the same, so both backends share the
//! engine's one way of sharing work.

use super::super::tx;
use super::{SqliteStore, all, exec, get, one, write_tx};
use crate::store::*;
use rusqlite::params;

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn lease_claim(
        &self,
        names: &[String],
        holder: &str,
        steal: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<Lease>> {
        let (names, holder) = (names.to_vec(), holder.to_owned());
        write_tx!(self, |c, _rules| {
            let mut out = Vec::with_capacity(names.len());
            for name in &names {
                exec(
                    c,
                    "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                     WHERE leases.holder IN (excluded.holder, '') OR (?5 AND leases.until < ?4)",
                    params![name, holder, tx::ms(until), tx::ms(now), steal],
                )?;
                let lease = one(
                    c,
                    "SELECT holder, until FROM leases WHERE name = ?",
                    [name],
                    |r| {
                        Ok(Lease {
                            name: name.clone(),
                            holder: get(r, "holder")?,
                            until: tx::at(get(r, "until")?),
                        })
                    },
                )?;
                out.extend(lease);
            }
            Ok(out)
        })
    }

    async fn lease_renew(
        &self,
        names: &[String],
        attempts: &[AttemptKey],
        holder: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, Vec<AttemptKey>)> {
        let (names, attempts, holder) = (names.to_vec(), attempts.to_vec(), holder.to_owned());
        write_tx!(self, |c, _rules| {
            let mut held = Vec::with_capacity(names.len());
            for name in names {
                let n = exec(
                    c,
                    "UPDATE leases SET until = ? WHERE name = ? AND holder = ?",
                    params![tx::ms(until), name, holder],
                )?;
                if n == 1 {
                    held.push(name);
                }
            }
            let mut lost = Vec::new();
            for (run, step, attempt) in attempts {
                let n = exec(
                    c,
                    "UPDATE attempts SET lease_until = ? WHERE run_id = ? AND step_id = ? AND attempt = ?
                       AND status = 'running' AND owner = ?",
                    params![tx::ms(until), run.0, step, attempt, holder],
                )?;
                // Not renewed: ended (its result is in), or another replica's now.
                let theirs = n == 0
                    && one(
                        c,
                        "SELECT 1 FROM attempts WHERE run_id = ? AND step_id = ? AND attempt = ?
                           AND status = 'running'",
                        params![run.0, step, attempt],
                        |_| Ok(()),
                    )?
                    .is_some();
                if theirs {
                    lost.push((run, step, attempt));
                }
            }
            Ok((held, lost))
        })
    }

    async fn lease_release(&self, holder: &str) -> StoreResult<()> {
        let holder = holder.to_owned();
        write_tx!(self, |c, _rules| {
            exec(
                c,
                "DELETE FROM leases WHERE holder = ? AND data IS NULL",
                [&holder],
            )?;
            exec(
                c,
                "UPDATE leases SET holder = '', until = 0 WHERE holder = ?",
                [&holder],
            )?;
            exec(
                c,
                "UPDATE attempts SET lease_until = 0 WHERE status = 'running' AND owner = ?",
                [&holder],
            )?;
            Ok(())
        })
    }

    async fn lease_data(&self, name: &str) -> StoreResult<Option<String>> {
        self.read(|c| {
            Ok(
                one(c, "SELECT data FROM leases WHERE name = ?", [name], |r| {
                    get::<Option<String>>(r, "data")
                })?
                .flatten(),
            )
        })
    }

    async fn lease_set_data(&self, name: &str, holder: &str, data: &str) -> StoreResult<bool> {
        let (name, holder, data) = (name.to_owned(), holder.to_owned(), data.to_owned());
        write_tx!(self, |c, _rules| {
            let n = exec(
                c,
                "UPDATE leases SET data = ? WHERE name = ? AND holder = ?",
                params![data, name, holder],
            )?;
            Ok(n == 1)
        })
    }

    async fn attempts_take_over(
        &self,
        holder: &str,
        mine: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<AttemptKey>> {
        let holder = holder.to_owned();
        write_tx!(self, |c, _rules| {
            // The writer holds SQLite's write lock, so what this reads nobody takes meanwhile.
            let taken = all(
                c,
                "SELECT run_id, step_id, attempt FROM attempts WHERE status = 'running'
                     AND ((?2 AND owner = ?3) OR lease_until IS NULL OR lease_until < ?1)
                 ORDER BY run_id, step_id LIMIT ?4",
                params![tx::ms(now), mine, holder, i64::from(limit)],
                attempt_key,
            )?;
            for (run, step, attempt) in &taken {
                exec(
                    c,
                    "UPDATE attempts SET owner = ?, lease_until = ? WHERE run_id = ? AND step_id = ? AND attempt = ?",
                    params![holder, tx::ms(until), run.0, step, attempt],
                )?;
            }
            Ok(taken)
        })
    }
}

fn attempt_key(r: &rusqlite::Row<'_>) -> StoreResult<AttemptKey> {
    Ok((
        RunId(get(r, "run_id")?),
        get(r, "step_id")?,
        get::<i64>(r, "attempt")? as u32,
    ))
}
