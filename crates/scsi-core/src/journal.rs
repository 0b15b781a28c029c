//! Where a logical unit's long operation (sanitize, format) is recorded across restarts: the
//! [`OpJournal`] a LU is given, and [`FileOpJournal`], one file written atomically. The records
//! themselves (what runs, what failed) are written and read by `medium`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::durable::{remove_durably, write_durably};

/// Where a LU's running or failed operation is recorded (the record's format is `medium`'s).
pub trait OpJournal: Send + Sync + fmt::Debug {
    /// The saved record, `None` if there is none.
    fn load(&self) -> io::Result<Option<String>>;
    /// Make `rec` the saved record, or remove it (`None`); durable when it returns `Ok`.
    fn save(&self, rec: Option<&str>) -> io::Result<()>;
    /// For logs and error messages.
    fn describe(&self) -> String;
}

/// A journal in one file, written atomically (temporary file, fsync, rename, fsync the
/// directory).
#[derive(Debug)]
pub struct FileOpJournal {
    path: PathBuf,
}

impl FileOpJournal {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl OpJournal for FileOpJournal {
    fn load(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.path.display()),
            )),
        }
    }

    fn save(&self, rec: Option<&str>) -> io::Result<()> {
        match rec {
            Some(text) => write_durably(&self.path, text.as_bytes()),
            None => remove_durably(&self.path),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
