//! The schema, embedded in the binary so it runs anywhere, applied at start-up.
//!
//! Applied migrations are recorded in `_sqlx_migrations`, the table and checksums (SHA-384 of
//! the text) sqlx's migrator keeps, so databases created by earlier versions, which used it,
//! carry on as they are. A migration is applied with its record in one transaction that
//! holds the write lock, so two processes starting at once apply it once.

use super::super::{StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha384};

/// The migrations: version, description, SQL. Append-only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../../../migrations/sqlite/0002_agents.sql"),
    ),
    (
        3,
        "governance",
        include_str!("../../../migrations/sqlite/0003_governance.sql"),
    ),
    (
        4,
        "reliability",
        include_str!("../../../migrations/sqlite/0004_reliability.sql"),
    ),
    (
        5,
        "store v2",
        include_str!("../../../migrations/sqlite/0005_store_v2.sql"),
    ),
    (
        6,
        "replicas",
        include_str!("../../../migrations/sqlite/0006_replicas.sql"),
    ),
];

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Brings the schema up to date; refuses a database changed behind Baton's back or written
/// by a newer version.
pub(super) fn run(c: &Connection) -> StoreResult<()> {
    c.execute_batch(LEDGER)?;
    let known: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
    let newest_applied: Option<i64> =
        c.query_row("SELECT MAX(version) FROM _sqlx_migrations", [], |r| {
            r.get(0)
        })?;
    if let Some(v) = newest_applied.filter(|v| !known.contains(v)) {
        return Err(StoreError::Corrupt(format!(
            "the database has migration {v}, which this version of Baton does not know: it was written by a newer version"
        )));
    }
    for (version, description, sql) in MIGRATIONS {
        let checksum = Sha384::digest(sql.as_bytes()).to_vec();
        // The check and the change in one transaction that holds the write lock: whoever
        // comes second sees the first one's record.
        c.execute_batch("BEGIN IMMEDIATE")?;
        let applied = apply(c, *version, description, sql, &checksum);
        match applied {
            Ok(()) => c.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
}

fn apply(
    c: &Connection,
    version: i64,
    description: &str,
    sql: &str,
    checksum: &[u8],
) -> StoreResult<()> {
    let recorded: Option<(bool, Vec<u8>)> = c
        .query_row(
            "SELECT success, checksum FROM _sqlx_migrations WHERE version = ?",
            [version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match recorded {
        Some((false, _)) => Err(StoreError::Corrupt(format!(
            "migration {version} ({description}) was left half applied; restore the database from a backup"
        ))),
        Some((true, stored)) if stored != checksum => Err(StoreError::Corrupt(format!(
            "migration {version} ({description}) was applied from a different text than this version's"
        ))),
        Some(_) => Ok(()),
        None => {
            let started = std::time::Instant::now();
            c.execute_batch(sql)?;
            c.execute(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES (?, ?, TRUE, ?, ?)",
                params![
                    version,
                    description,
                    checksum,
                    started.elapsed().as_nanos() as i64
                ],
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let c = Connection::open(&path).unwrap();
        run(&c).unwrap();
        run(&c).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM _sqlx_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
        c.execute(
            "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2",
            [],
        )
        .unwrap();
        let e = run(&c).unwrap_err().to_string();
        assert!(e.contains("migration 2 (agents)"), "{e}");
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let c = Connection::open_in_memory().unwrap();
        run(&c).unwrap();
        c.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'later', TRUE, x'00', 0)",
            [],
        )
        .unwrap();
        let e = run(&c).unwrap_err().to_string();
        assert!(e.contains("newer version"), "{e}");
    }
}
