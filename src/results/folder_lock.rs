//! One writer per folder: an exclusive OS lock (`File::try_lock`, an `flock` on Unix) on a lock
//! file inside it (`run.lock` in a run folder, `sweep.lock` in a sweep's results).
//!
//! The OS releases the lock when its holder exits, however it exits (SIGKILL included), so a
//! killed writer never leaves a stale lock behind, and of two processes that start at the same
//! moment only one gets it, which checking a recorded process id could not guarantee. The file
//! holds the holder's process id, for messages only. It stays after release: removing it would
//! let a third process lock a fresh file while a second still holds the old one.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// A held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

/// What [`FolderLock::try_acquire`] found.
#[derive(Debug)]
pub enum Attempt {
    Acquired(FolderLock),
    /// Another process holds the lock; its process id when the file names one.
    Held {
        pid: Option<u32>,
    },
}

impl FolderLock {
    /// Takes the lock at `path` (creating the file) without waiting.
    pub fn try_acquire(path: &Path) -> Result<Attempt> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Attempt::Held { pid: holder(path) }),
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Attempt::Acquired(FolderLock { _file: file }))
    }
}

/// Whether another process holds the lock at `path` now (no file: nobody). (It probes by taking the lock for an
/// instant, so call it only where no writer is expected to start at that moment.)
pub fn is_held(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| matches!(file.try_lock(), Err(TryLockError::WouldBlock)))
}

fn holder(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(path: &Path) -> Attempt {
        FolderLock::try_acquire(path).unwrap()
    }

    #[test]
    fn only_one_holder_at_a_time_and_a_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        assert!(!is_held(&path), "no file, no holder");
        let Attempt::Acquired(lock) = acquire(&path) else {
            panic!("a free lock is taken")
        };
        assert!(is_held(&path));
        match acquire(&path) {
            Attempt::Held { pid } => assert_eq!(pid, Some(std::process::id())),
            Attempt::Acquired(_) => panic!("a held lock was taken twice"),
        }
        drop(lock);
        assert!(!is_held(&path));
        assert!(matches!(acquire(&path), Attempt::Acquired(_)));
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        // What a killed holder leaves: the file with its (now meaningless) pid.
        fs::write(&path, "4294967295\n").unwrap();
        assert!(!is_held(&path));
        assert!(matches!(acquire(&path), Attempt::Acquired(_)));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
