//! Agents' turns and shared memory on PostgreSQL.

use super::super::tx;
use super::{PostgresStore, each, get, json, time, write_tx};
use crate::store::*;
use sqlx::postgres::PgRow;

fn memory_from_row(r: &PgRow) -> StoreResult<MemoryEntry> {
    let run: Option<i64> = get(r, "run_id")?;
    Ok(MemoryEntry {
        namespace: get(r, "namespace")?,
        key: get(r, "key")?,
        value: json(r, "value")?,
        run: run.map(RunId),
        step: get(r, "step_id")?,
        agent: get(r, "agent")?,
        written_at: time(r, "written_at")?,
    })
}

#[async_trait]
impl AgentStore for PostgresStore {
    async fn agent_turns(&self, run: RunId, step: &str) -> StoreResult<Vec<Value>> {
        let rows = sqlx::query(
            "SELECT message FROM agent_turns WHERE run_id = $1 AND step_id = $2 ORDER BY seq",
        )
        .bind(run.0)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| json(r, "message"))
    }

    async fn agent_turn_append(
        &self,
        run: RunId,
        step: &str,
        seq: u32,
        message: &Value,
        when: DateTime<Utc>,
    ) -> StoreResult<()> {
        let text = self.rules.json(message);
        let step = step.to_owned();
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "INSERT INTO agent_turns (run_id, step_id, seq, message, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
            )
            .bind(run.0)
            .bind(step)
            .bind(i64::from(seq))
            .bind(text)
            .bind(tx::ms(when))
            .execute(&mut **c)
            .await?;
            Ok(())
        })
    }

    async fn agent_turns_clear(&self, run: RunId, step: &str) -> StoreResult<()> {
        let step = step.to_owned();
        write_tx!(self, |c, _rules| {
            sqlx::query("DELETE FROM agent_turns WHERE run_id = $1 AND step_id = $2")
                .bind(run.0)
                .bind(step)
                .execute(&mut **c)
                .await?;
            Ok(())
        })
    }

    async fn agent_tokens(&self, run: RunId) -> StoreResult<u64> {
        // PostgreSQL refuses to read JSON holding an escaped NUL (`\u0000`, which its text
        // cannot hold; a tool's output may have one), so each is made `\u0001` first: still
        // valid JSON, the counts untouched. Summed as numeric: a bigint sum is numeric anyway.
        let r = sqlx::query(
            r"SELECT COALESCE(SUM(COALESCE((j ->> 'tokens_in')::numeric, 0)
                 + COALESCE((j ->> 'tokens_out')::numeric, 0)), 0)::bigint AS n
             FROM (SELECT replace(message, E'\\u0000', E'\\u0001')::jsonb AS j
                   FROM agent_turns WHERE run_id = $1) AS turns",
        )
        .bind(run.0)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = get(&r, "n")?;
        Ok(n.max(0) as u64)
    }

    async fn memory_read(&self, namespace: &str, key: &str) -> StoreResult<Option<MemoryEntry>> {
        sqlx::query("SELECT * FROM memory WHERE namespace = $1 AND key = $2")
            .bind(namespace)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| memory_from_row(&r))
            .transpose()
    }

    async fn memory_list(
        &self,
        namespace: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<MemoryEntry>> {
        // Ties in byte order, as SQLite sorts text, whatever the database's collation.
        let rows = sqlx::query(
            r#"SELECT * FROM memory WHERE $1::text IS NULL OR namespace = $1
             ORDER BY written_at DESC, namespace COLLATE "C", key COLLATE "C" LIMIT $2"#,
        )
        .bind(namespace)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        each(rows, memory_from_row)
    }

    async fn memory_write(&self, e: &MemoryEntry) -> StoreResult<()> {
        let value = self.rules.json(&e.value);
        let e = e.clone();
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "INSERT INTO memory (namespace, key, value, run_id, step_id, agent, written_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, run_id = excluded.run_id,
                   step_id = excluded.step_id, agent = excluded.agent, written_at = excluded.written_at",
            )
            .bind(e.namespace)
            .bind(e.key)
            .bind(value)
            .bind(e.run.map(|r| r.0))
            .bind(e.step)
            .bind(e.agent)
            .bind(tx::ms(e.written_at))
            .execute(&mut **c)
            .await?;
            Ok(())
        })
    }
}
