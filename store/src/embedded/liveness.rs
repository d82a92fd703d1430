//! Which embedded-store instances are alive (docs/adr/035): each opened store holds an exclusive
//! lock on a file of its own, `instances/<id>.lock` beside the database, for as long as it is
//! open. The operating system releases the lock when the process ends, however it ends, so a
//! lock that can be taken names a dead instance. More than one process may have the store open
//! (the operator CLI beside the server), and a lock is per open file, so two stores opened by
//! one process (tests) are told apart too.

use crate::error::{Result, StoreError};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The folder of instance lock files beside `events.db`.
pub(crate) fn folder(dir: &Path) -> PathBuf {
    dir.join("instances")
}

fn file_of(folder: &Path, instance: Uuid) -> PathBuf {
    folder.join(format!("{}.lock", instance.simple()))
}

/// Take `instance`'s lock, to hold until the store is closed (dropping the file releases it).
/// The lock files of dead instances found on the way are removed.
pub(crate) fn hold(folder: &Path, instance: Uuid) -> Result<File> {
    std::fs::create_dir_all(folder)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", folder.display())))?;
    sweep(folder);
    let path = file_of(folder, instance);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock()
        .map_err(|e| StoreError::Backend(format!("cannot lock {}: {e}", path.display())))?;
    Ok(file)
}

/// Whether `instance` still holds its lock. An instance whose file is gone is dead (files are
/// made before an instance begins any key and removed only once dead). When the answer cannot
/// be known (an IO error), the instance is presumed alive: its keys then wait for the timeout.
pub(crate) fn alive(folder: &Path, instance: Uuid) -> bool {
    let path = file_of(folder, instance);
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match file.try_lock_shared() {
        Ok(()) => {
            // Dead: nobody comes back under this id, so its file can go.
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

/// Remove the lock files of dead instances (each one's process ended without its store closed).
fn sweep(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        alive(folder, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_alive_and_a_released_one_is_dead_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(dir.path());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let held = hold(&folder, a).unwrap();
        let other = hold(&folder, b).unwrap();
        assert!(
            alive(&folder, a),
            "a lock held by this very process is seen"
        );
        assert!(alive(&folder, b));
        drop(other);
        assert!(!alive(&folder, b));
        assert!(
            !file_of(&folder, b).exists(),
            "a dead instance's file is removed"
        );
        assert!(
            !alive(&folder, Uuid::new_v4()),
            "an unknown instance is dead"
        );
        drop(held);
        let _c = hold(&folder, Uuid::new_v4()).unwrap();
        assert!(
            !file_of(&folder, a).exists(),
            "opening sweeps dead instances"
        );
    }
}
