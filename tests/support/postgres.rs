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

/// A PostgreSQL server of a test's own (Debian's postgresql package: `initdb` and `pg_ctl`),
/// in a temporary directory on a free port, so a test may stop and restart it without
/// disturbing the tests that share the machine's server. Stopped when dropped.
pub struct Server {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

impl Server {
    pub fn start() -> Server {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .flatten()
                    .map(|v| v.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            })
            .expect(
                "PostgreSQL's initdb and pg_ctl are not installed: run ./scripts/test, which installs Debian's postgresql package",
            );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Server { dir, bin, port };
        // initdb and the server refuse to run as root; as root they run as `postgres`.
        if server.as_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(server.dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "could not hand the data directory to the postgres user");
        }
        server.run(
            "initdb",
            &["-D", &server.data(), "-U", "postgres", "--auth=trust", "-N"],
        );
        server.start_again();
        server
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut c = if self.as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server, ending every connection (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if self.as_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&path).args(args).output()
        };
    }
}
