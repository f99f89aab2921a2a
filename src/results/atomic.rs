//! Atomic file writes: readers see the old file or the new one, never a half-written one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temporary path next to `path` (same folder, so the rename cannot cross file systems),
/// keeping the extension (some writers choose the format from it) and unique per process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}{ext}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    finish(&tmp, path, written)
}

/// Renames a fully written temporary file over `path` (or removes it if writing failed), then
/// syncs the folder so the rename itself survives a crash.
pub fn finish(tmp: &Path, path: &Path, written: std::io::Result<()>) -> Result<()> {
    let renamed = written.and_then(|()| fs::rename(tmp, path));
    if let Err(err) = renamed {
        let _ = fs::remove_file(tmp);
        return Err(err).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_parent(path);
    Ok(())
}

/// Removes the temporary files (`temp_path`) that a writer killed mid-write left in `dir`;
/// returns how many. Only for a folder that no live process writes into.
pub fn remove_leftovers(dir: &Path) -> Result<usize> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0); // no folder, nothing left over
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") && entry.path().is_file() {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Best effort: some file systems refuse to open or sync a directory, and the data itself is
/// already safe in the renamed file.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn leftovers_of_a_killed_writer_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latest.safetensors");
        write_atomic(&path, b"good").unwrap();
        fs::write(temp_path(&path), b"half").unwrap();
        fs::write(dir.path().join(".hidden"), b"keep").unwrap();
        assert_eq!(remove_leftovers(dir.path()).unwrap(), 1);
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, [".hidden", "latest.safetensors"]);
        assert_eq!(remove_leftovers(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn temporary_path_keeps_the_extension() {
        let tmp = temp_path(Path::new("out/loss.png"));
        assert_eq!(tmp.parent(), Some(Path::new("out")));
        assert_eq!(tmp.extension().unwrap(), "png");
    }
}
