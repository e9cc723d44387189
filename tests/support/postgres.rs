//! A PostgreSQL schema of a test's own on the development server (127.0.0.1:5432, user
//! `postgres`, database `test`, or `BATON_TEST_POSTGRES_URL`), dropped when the test ends,
//! passed or failed. A server that cannot be reached fails the test with a message saying
//! so: the PostgreSQL tests are never skipped.
#![allow(dead_code)]

use sqlx::{Connection as _, Executor as _, PgConnection};
use std::sync::atomic::{AtomicU32, Ordering};

fn server_url() -> String {
    std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}). The PostgreSQL tests need a server: \
             start one there (trust auth, user postgres, database test) or set \
             BATON_TEST_POSTGRES_URL to another"
        )
    })
}

/// A fresh schema; `url` points a store at it.
pub struct Schema {
    pub name: String,
    pub url: String,
    server: String,
}

impl Schema {
    pub async fn new() -> Schema {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = server_url();
        let name = format!(
            "baton_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let mut c = connect(&server).await;
        c.execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .expect("a schema of the test's own");
        let _ = c.close().await;
        let sep = if server.contains('?') { '&' } else { '?' };
        // Every connection of the store works in that schema, and is named after it so the
        // clean-up can end those still open.
        let url = format!("{server}{sep}options=-c%20search_path%3D{name}&application_name={name}");
        Schema { name, url, server }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs outside any runtime that could still be polled: clean up on a thread of
        // its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&server).await {
                    // An app still running in this process (its runtime blocked by this
                    // very drop) may hold locks in the schema: end its connections first.
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                    )
                    .bind(&name)
                    .execute(&mut c)
                    .await;
                    let _ = c
                        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}
