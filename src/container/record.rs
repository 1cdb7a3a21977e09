//! Container records: one row per container in the state root's SQLite database.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::isolation::IsolationKind;

/// Lifecycle state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Record written, process not started yet.
    Created,
    /// The main process runs.
    Running,
    /// The main process ended (or its supervisor died and it was cleaned up).
    Exited,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Exited => "exited",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "created" => State::Created,
            "running" => State::Running,
            _ => State::Exited,
        }
    }
}

/// One container.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 64 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The image's ID.
    pub image_id: String,
    /// The resolved argv.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// The isolation mode that runs it.
    pub isolation: IsolationKind,
    /// Lifecycle state.
    pub state: State,
    /// Host PID of the main process while it runs (container mode).
    pub pid: Option<i32>,
    /// PID of the vessel process supervising the container.
    pub supervisor_pid: Option<i32>,
    /// Start time (clock ticks after boot) of the supervisor, so a reused PID is not mistaken for it.
    pub supervisor_start: Option<u64>,
    /// Exit code (128+N for a signal); `None` while running or when unknown.
    pub exit_code: Option<i32>,
    /// The OOM killer ended it.
    pub oom_killed: bool,
    /// Remove when the process ends (`--rm`).
    pub auto_remove: bool,
    /// End time, seconds since the epoch.
    pub finished: Option<i64>,
    /// When the process started, seconds since the epoch.
    pub started: Option<i64>,
}

/// Failures of the record store.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// SQLite failed.
    #[error("container database: {0}")]
    Db(#[from] rusqlite::Error),
    /// No container matches.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An ID prefix matches several containers.
    #[error("container reference {0:?} is ambiguous")]
    Ambiguous(String),
    /// The name is taken.
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
}

/// The `containers` table, in the same database file as the image store's tables.
pub struct Records {
    conn: Connection,
}

const COLUMNS: &str = "id, name, image, image_id, command, created, isolation, state, pid, \
     supervisor_pid, supervisor_start, exit_code, oom_killed, auto_remove, finished, started";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Record> {
    let command: String = r.get(4)?;
    let state: String = r.get(7)?;
    let isolation: String = r.get(6)?;
    // Never guessed: a record whose mode vessel does not know is reported, not run as one.
    let isolation = IsolationKind::parse(&isolation).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            6,
            rusqlite::types::Type::Text,
            format!(
                "unknown isolation {isolation:?} in the record of container {}",
                r.get::<_, String>(0).unwrap_or_default()
            )
            .into(),
        )
    })?;
    Ok(Record {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        image_id: r.get(3)?,
        command: serde_json::from_str(&command).unwrap_or_default(),
        created: r.get(5)?,
        isolation,
        state: State::parse(&state),
        pid: r.get(8)?,
        supervisor_pid: r.get(9)?,
        supervisor_start: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        exit_code: r.get(11)?,
        oom_killed: r.get(12)?,
        auto_remove: r.get(13)?,
        finished: r.get(14)?,
        started: r.get(15)?,
    })
}

impl Records {
    /// Opens (creating if needed) the database file and the `containers` table.
    pub fn open(db: &Path) -> Result<Records, RecordError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // With WAL, NORMAL syncs at checkpoints rather than at every commit: a record
        // survives a crash of vessel, and at worst its last changes are lost with a power
        // failure, which recovery then treats like a crashed supervisor.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS containers (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                image TEXT NOT NULL,
                image_id TEXT NOT NULL,
                command TEXT NOT NULL,
                created INTEGER NOT NULL,
                isolation TEXT NOT NULL,
                state TEXT NOT NULL,
                pid INTEGER,
                supervisor_pid INTEGER,
                supervisor_start INTEGER,
                exit_code INTEGER,
                oom_killed INTEGER NOT NULL DEFAULT 0,
                auto_remove INTEGER NOT NULL DEFAULT 0,
                finished INTEGER,
                started INTEGER
            );",
        )?;
        // Databases made before `started` existed.
        let has_started = conn
            .prepare("SELECT 1 FROM pragma_table_info('containers') WHERE name = 'started'")?
            .exists([])?;
        if !has_started {
            conn.execute_batch("ALTER TABLE containers ADD COLUMN started INTEGER")?;
        }
        Ok(Records { conn })
    }

    /// Adds a new record.
    pub fn insert(&self, r: &Record) -> Result<(), RecordError> {
        let res = self.conn.execute(
            &format!(
                "INSERT INTO containers ({COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ),
            params![
                r.id,
                r.name,
                r.image,
                r.image_id,
                serde_json::to_string(&r.command).unwrap_or_default(),
                r.created,
                r.isolation.as_str(),
                r.state.as_str(),
                r.pid,
                r.supervisor_pid,
                r.supervisor_start.map(|v| v as i64),
                r.exit_code,
                r.oom_killed,
                r.auto_remove,
                r.finished,
                r.started,
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(RecordError::NameInUse(r.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records which vessel process supervises the container.
    pub fn set_supervisor(&self, id: &str, pid: i32, start: u64) -> Result<(), RecordError> {
        self.conn.execute(
            "UPDATE containers SET supervisor_pid = ?2, supervisor_start = ?3 WHERE id = ?1",
            params![id, pid, start as i64],
        )?;
        Ok(())
    }

    /// Marks the container running with its main process's host PID.
    pub fn set_running(&self, id: &str, pid: Option<i32>) -> Result<(), RecordError> {
        self.conn.execute(
            "UPDATE containers SET state = 'running', pid = ?2, started = ?3 WHERE id = ?1",
            params![id, pid, super::now()],
        )?;
        Ok(())
    }

    /// Marks the container exited.
    pub fn set_exited(
        &self,
        id: &str,
        exit_code: Option<i32>,
        oom_killed: bool,
        now: i64,
    ) -> Result<(), RecordError> {
        self.conn.execute(
            "UPDATE containers SET state = 'exited', pid = NULL, supervisor_pid = NULL, \
             supervisor_start = NULL, exit_code = ?2, oom_killed = ?3, finished = ?4 WHERE id = ?1",
            params![id, exit_code, oom_killed, now],
        )?;
        Ok(())
    }

    /// Every container, newest first.
    pub fn list(&self) -> Result<Vec<Record>, RecordError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM containers ORDER BY created DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The container with this exact ID.
    pub fn get(&self, id: &str) -> Result<Option<Record>, RecordError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM containers WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?)
    }

    /// Finds a container by full ID, name, or unique ID prefix (docker's rules).
    pub fn find(&self, reference: &str) -> Result<Record, RecordError> {
        if reference.is_empty() {
            return Err(RecordError::NotFound(reference.to_string()));
        }
        if let Some(r) = self.get(reference)? {
            return Ok(r);
        }
        let by_name = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM containers WHERE name = ?1"),
                [reference],
                from_row,
            )
            .optional()?;
        if let Some(r) = by_name {
            return Ok(r);
        }
        if !reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RecordError::NotFound(reference.to_string()));
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM containers WHERE substr(id, 1, ?2) = ?1"
        ))?;
        let matches: Vec<Record> = stmt
            .query_map(params![reference, reference.len() as i64], from_row)?
            .collect::<Result<_, _>>()?;
        match matches.len() {
            0 => Err(RecordError::NotFound(reference.to_string())),
            1 => Ok(matches.into_iter().next().expect("one element")),
            _ => Err(RecordError::Ambiguous(reference.to_string())),
        }
    }

    /// Deletes the record.
    pub fn delete(&self, id: &str) -> Result<(), RecordError> {
        self.conn
            .execute("DELETE FROM containers WHERE id = ?1", [id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> Record {
        Record {
            id: id.into(),
            name: name.into(),
            image: "img".into(),
            image_id: "sha".into(),
            command: vec!["true".into()],
            created: 1,
            isolation: IsolationKind::Container,
            state: State::Created,
            pid: None,
            supervisor_pid: None,
            supervisor_start: None,
            exit_code: None,
            oom_killed: false,
            auto_remove: false,
            finished: None,
            started: None,
        }
    }

    #[test]
    fn find_by_id_name_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = Records::open(&dir.path().join("db")).unwrap();
        db.insert(&record("abc123", "one")).unwrap();
        db.insert(&record("abd456", "two")).unwrap();
        assert_eq!(db.find("one").unwrap().id, "abc123");
        assert_eq!(db.find("abd").unwrap().name, "two");
        assert!(matches!(db.find("ab"), Err(RecordError::Ambiguous(_))));
        assert!(matches!(db.find("zz"), Err(RecordError::NotFound(_))));
        assert!(matches!(
            db.insert(&record("fff", "one")),
            Err(RecordError::NameInUse(_))
        ));
        db.set_running("abc123", Some(42)).unwrap();
        db.set_exited("abc123", Some(3), true, 5).unwrap();
        let r = db.find("abc123").unwrap();
        assert_eq!(
            (r.state, r.exit_code, r.oom_killed),
            (State::Exited, Some(3), true)
        );
        db.delete("abc123").unwrap();
        assert!(db.get("abc123").unwrap().is_none());
        // A record with a mode vessel does not know is an error, not a guess.
        db.conn
            .execute(
                "UPDATE containers SET isolation = 'jail' WHERE id = 'abd456'",
                [],
            )
            .unwrap();
        let err = db.find("two").unwrap_err().to_string();
        assert!(err.contains("unknown isolation \"jail\""), "{err}");
        assert!(db.list().is_err());
    }
}
