//! A throwaway PostgreSQL server from Debian's `postgresql` package, for the tests of
//! the PostgreSQL store and of several coordinators on one database: `initdb` into a
//! temporary directory (as the `postgres` user: initdb refuses root), listening only
//! on a Unix socket in a directory of its own (no TCP port to collide with another
//! test run), stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;

/// The password of the `shoal` role the server is made with: tests pass it through
/// the URL and check it never reaches a log.
pub const PASSWORD: &str = "pg-test-secret-7f3a";

/// A running PostgreSQL server, stopped and deleted when dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
}

/// The directory of the newest PostgreSQL server binaries Debian installed
/// (`/usr/lib/postgresql/N/bin`): Debian keeps initdb and pg_ctl off PATH.
pub fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// Panics (failing the test) unless this process can start a PostgreSQL server.
pub fn require_postgres() {
    crate::require_privileges(&["runuser", "psql"]);
    assert!(
        server_bin().is_some(),
        "this test needs PostgreSQL's server binaries (/usr/lib/postgresql/N/bin): scripts/install-deps installs Debian's postgresql"
    );
}

impl Postgres {
    /// Makes and starts a server. Panics if that fails (the test fails with the
    /// server's log).
    pub fn start() -> Postgres {
        require_postgres();
        let bin = server_bin().expect("checked by require_postgres");
        let dir =
            std::env::temp_dir().join(format!("shoal-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("make the server's directory");
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        let pg = Postgres { dir, bin };
        let pwfile = pg.dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        run(Command::new("chown").arg("postgres").arg(&pwfile));
        pg.as_postgres(&pg.bin.join("initdb"))
            .args([
                "--auth-local=scram-sha-256",
                "--username=shoal",
                "--locale=C",
            ])
            .args(["--encoding=UTF8", "--no-sync", "--pwfile"])
            .arg(&pwfile)
            .arg("-D")
            .arg(pg.data())
            .output()
            .map(|o| {
                assert!(
                    o.status.success(),
                    "initdb: {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .expect("run initdb");
        let _ = std::fs::remove_file(&pwfile);
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=200",
            pg.dir.display()
        );
        let out = pg
            .as_postgres(&pg.bin.join("pg_ctl"))
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(pg.log())
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            pg.log_text()
        );
        pg
    }

    fn as_postgres(&self, program: &Path) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c.current_dir(&self.dir);
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` as the `shoal` role, password included.
    pub fn url(&self, db: &str) -> String {
        // A Unix socket's directory goes percent-encoded where the host would be.
        let host = self.dir.display().to_string().replace('/', "%2F");
        format!("postgresql://shoal:{PASSWORD}@{host}/{db}")
    }

    /// Runs `sql` in database `db` with psql; returns what it printed (unaligned,
    /// tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(Command::new("psql")
            .env("PGPASSWORD", PASSWORD)
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-U",
                "shoal",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
