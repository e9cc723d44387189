//! The schema, embedded in the binary, applied at start-up by sqlx's migrator: it records
//! each migration with a checksum in `_sqlx_migrations`, refuses a changed or unknown one,
//! and holds an advisory lock while it works, so replicas starting at the same moment apply
//! each migration once.

use sqlx::PgPool;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;

/// The migrations: version, description, SQL. Append-only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "replicas",
        include_str!("../../../migrations/postgres/0002_replicas.sql"),
    ),
];

/// The migrations above, as sqlx's migrator takes them.
#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// Brings the schema up to date; refuses a database changed behind Baton's back or written
/// by a newer version.
pub(super) async fn run(pool: &PgPool) -> anyhow::Result<()> {
    Migrator::new(Embedded).await?.run(pool).await?;
    Ok(())
}
