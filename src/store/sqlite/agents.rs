//! Agents' turns and shared memory on SQLite.

use super::super::tx;
use super::{SqliteStore, all, exec, get, json, number, one, time, write_tx};
use crate::store::*;
use rusqlite::{Row, params};

fn memory_from_row(r: &Row<'_>) -> StoreResult<MemoryEntry> {
    Ok(MemoryEntry {
        namespace: get(r, "namespace")?,
        key: get(r, "key")?,
        value: json(r, "value")?,
        run: get::<Option<i64>>(r, "run_id")?.map(RunId),
        step: get(r, "step_id")?,
        agent: get(r, "agent")?,
        written_at: time(r, "written_at")?,
    })
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn agent_turns(&self, run: RunId, step: &str) -> StoreResult<Vec<Value>> {
        self.read(|c| {
            all(
                c,
                "SELECT message FROM agent_turns WHERE run_id = ? AND step_id = ? ORDER BY seq",
                params![run.0, step],
                |r| json(r, "message"),
            )
        })
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
            exec(
                c,
                "INSERT INTO agent_turns (run_id, step_id, seq, message, created_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
                params![run.0, step, i64::from(seq), text, tx::ms(when)],
            )
            .map(drop)
        })
    }

    async fn agent_turns_clear(&self, run: RunId, step: &str) -> StoreResult<()> {
        let step = step.to_owned();
        write_tx!(self, |c, _rules| {
            exec(
                c,
                "DELETE FROM agent_turns WHERE run_id = ? AND step_id = ?",
                params![run.0, step],
            )
            .map(drop)
        })
    }

    async fn agent_tokens(&self, run: RunId) -> StoreResult<u64> {
        let n = self.read(|c| {
            number(
                c,
                "SELECT COALESCE(SUM(COALESCE(json_extract(message, '$.tokens_in'), 0)
                   + COALESCE(json_extract(message, '$.tokens_out'), 0)), 0) FROM agent_turns WHERE run_id = ?",
                [run.0],
            )
        })?;
        Ok(n.max(0) as u64)
    }

    async fn memory_read(&self, namespace: &str, key: &str) -> StoreResult<Option<MemoryEntry>> {
        self.read(|c| {
            one(
                c,
                "SELECT * FROM memory WHERE namespace = ? AND key = ?",
                [namespace, key],
                memory_from_row,
            )
        })
    }

    async fn memory_list(
        &self,
        namespace: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<MemoryEntry>> {
        self.read(|c| {
            all(
                c,
                "SELECT * FROM memory WHERE ?1 IS NULL OR namespace = ?1
                 ORDER BY written_at DESC, namespace, key LIMIT ?2",
                params![namespace, i64::from(limit)],
                memory_from_row,
            )
        })
    }

    async fn memory_write(&self, e: &MemoryEntry) -> StoreResult<()> {
        let value = self.rules.json(&e.value);
        let e = e.clone();
        write_tx!(self, |c, _rules| {
            exec(
                c,
                "INSERT INTO memory (namespace, key, value, run_id, step_id, agent, written_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, run_id = excluded.run_id,
                   step_id = excluded.step_id, agent = excluded.agent, written_at = excluded.written_at",
                params![
                    e.namespace,
                    e.key,
                    value,
                    e.run.map(|r| r.0),
                    e.step,
                    e.agent,
                    tx::ms(e.written_at)
                ],
            )
            .map(drop)
        })
    }
}
