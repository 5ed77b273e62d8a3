//! SQLite pools: one database file per service (ARCHITECTURE.md §1), or memory for
//! `--in-memory`.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlitePool, migrate::Migrator};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Opens (creating if needed) the database at `path`, or a private in-memory database when
/// `path` is `None`, and applies `migrator`.
pub async fn open(path: Option<&Path>, migrator: &Migrator) -> Result<SqlitePool, sqlx::Error> {
    let pool = match path {
        Some(path) => {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            SqlitePoolOptions::new()
                .max_connections(4)
                .min_connections(1)
                .connect_with(options)
                .await?
        }
        None => {
            // Every connection to `:memory:` is its own database, so the pool holds exactly one
            // connection that never expires.
            let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        }
    };
    migrator.run(&pool).await?;
    Ok(pool)
}

/// Whether `error` is a UNIQUE or PRIMARY KEY violation (SQLite reports no constraint names).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}
