//! The storage seam: every byte the log reads or writes goes through [`Storage`], so tests can
//! substitute [`MemStorage`](crate::MemStorage) and inject faults. [`FileStorage`] is the real
//! thing: one directory on a local filesystem.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// A flat directory of files, named by plain strings (no separators).
///
/// Semantics follow POSIX: writes and directory changes may be lost in a crash until
/// [`Storage::sync`] (file data and size) or [`Storage::sync_dir`] (names: create, remove,
/// rename) succeeds. A method that fails may still have had part of its effect (a short write
/// before the error); the log accounts for that.
pub trait Storage: fmt::Debug {
    /// Where `name` lives, for error messages (the full path for a real directory).
    fn describe(&self, name: &str) -> String;
    /// Names of all files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if `name` exists.
    fn create(&mut self, name: &str) -> io::Result<()>;
    /// Writes a prefix of `buf` at the end of `name` and returns its length, like `write(2)` on
    /// a file opened with `O_APPEND`: it may be shorter than `buf` (a short write).
    fn append(&mut self, name: &str, buf: &[u8]) -> io::Result<usize>;
    /// Creates `name` or replaces its content with `data` (not synced).
    fn write_file(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Reads from `offset` into `buf`, returning the bytes read (0 at end of file).
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Length of `name` in bytes.
    fn file_len(&self, name: &str) -> io::Result<u64>;
    /// Makes the data and length of `name` durable (`fdatasync(2)`).
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Cuts `name` to `len` bytes.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Deletes `name`.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync(2)` on the directory).
    fn sync_dir(&mut self) -> io::Result<()>;

    /// Reads all of `name`.
    fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.file_len(name)?).map_err(io::Error::other)?;
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match self.read_at(name, done as u64, &mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}

/// File holding the advisory lock that keeps two processes out of one log directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// A log directory on a real filesystem.
///
/// [`FileStorage::open`] takes an exclusive advisory lock (`flock`) on `DIR/LOCK`, held until
/// the value is dropped, so two processes never append to the same log.
pub struct FileStorage {
    dir: PathBuf,
    /// Open handles for files written through this value (read + append).
    handles: HashMap<String, File>,
    _lock: File,
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStorage")
            .field("dir", &self.dir)
            .field("open_files", &self.handles.len())
            .finish()
    }
}

impl FileStorage {
    /// Opens (creating it and its parents if needed, mode 0700) the log directory `dir` and
    /// locks it. Files it creates are mode 0600: a log holds what other local users must not
    /// read.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "log directory {} is locked by another process (or another open log in \
                         this one); stop it or use another directory",
                        dir.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
        Ok(FileStorage { dir, handles: HashMap::new(), _lock: lock })
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn handle(&mut self, name: &str) -> io::Result<&File> {
        if !self.handles.contains_key(name) {
            let f = OpenOptions::new().read(true).append(true).open(self.dir.join(name))?;
            self.handles.insert(name.to_owned(), f);
        }
        Ok(&self.handles[name])
    }
}

impl Storage for FileStorage {
    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(name))?;
        self.handles.insert(name.to_owned(), f);
        Ok(())
    }

    fn append(&mut self, name: &str, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.handle(name)?;
        f.write(buf)
    }

    fn write_file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.handles.remove(name);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.dir.join(name))?;
        f.write_all(data)?;
        self.handles.insert(name.to_owned(), f);
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self.handles.get(name) {
            Some(f) => f.read_at(buf, offset),
            None => File::open(self.dir.join(name))?.read_at(buf, offset),
        }
    }

    fn file_len(&self, name: &str) -> io::Result<u64> {
        match self.handles.get(name) {
            Some(f) => Ok(f.metadata()?.len()),
            None => Ok(fs::metadata(self.dir.join(name))?.len()),
        }
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.handle(name)?.set_len(len)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.handles.remove(name);
        fs::remove_file(self.dir.join(name))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))?;
        self.handles.remove(to);
        if let Some(f) = self.handles.remove(from) {
            self.handles.insert(to.to_owned(), f);
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}
