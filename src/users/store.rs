//! Persistence of the manifest file: read, exclusive lock, and atomic rewrite (temp file
//! 0600 in the same directory, fsync, rename, fsync the directory, previous version kept
//! as `.bak`), with fallbacks for a bind-mounted single file and a read-only mount.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    /// Written atomically (rename).
    Saved,
    /// Written in place: the manifest is a bind-mounted single file that cannot be renamed
    /// over. The previous version is in the `.bak` file.
    SavedInPlace,
    /// Not written: the manifest is on a read-only mount (e.g. a Kubernetes Secret).
    ReadOnly,
}

/// The manifest file and its neighbours.
#[derive(Debug, Clone)]
pub struct Store {
    pub path: PathBuf,
}

/// An exclusive lock serializing every read-modify-write of users (released on drop).
pub struct Lock {
    _flock: nix::fcntl::Flock<File>,
}

fn is_read_only(e: &io::Error) -> bool {
    // By kind, not errno: tempfile wraps errors with the path and drops the raw code.
    matches!(
        e.kind(),
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
    )
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Store {
        Store { path: path.into() }
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "users.toml".into());
        name.push(suffix);
        self.dir().join(name)
    }

    pub fn backup_path(&self) -> PathBuf {
        self.sibling(".bak")
    }

    /// The manifest text, or `None` when the file does not exist. The directory is not
    /// trusted: the open never blocks (a FIFO), and only a regular file of at most
    /// [`crate::manifest::MAX_BYTES`] is read (not `/dev/zero`, not 5 MiB). Symlinks are
    /// followed: a Kubernetes Secret's files are symlinks.
    pub fn read(&self) -> io::Result<Option<String>> {
        use std::io::Read;
        let limit = crate::manifest::MAX_BYTES;
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the manifest is not a regular file (a FIFO, a device or a directory?)",
            ));
        }
        if meta.len() > limit as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the manifest is {} bytes; the limit is {limit}", meta.len()),
            ));
        }
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
        if bytes.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the manifest is larger than {limit} bytes"),
            ));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "manifest is not UTF-8"))
    }

    /// Take the users lock: a lock file beside the manifest, or under /run when that
    /// directory is read-only.
    pub fn lock(&self) -> io::Result<Lock> {
        let beside = self.dir().join(".occ-users.lock");
        let file = match open_lock(&beside) {
            Ok(f) => f,
            Err(e) if is_read_only(&e) || e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all("/run/occ")?;
                open_lock(Path::new("/run/occ/users.lock"))?
            }
            Err(e) => return Err(e),
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(|flock| Lock { _flock: flock })
            .map_err(|(_, e)| io::Error::from(e))
    }

    /// Replace the manifest with `text` (see the module doc for how).
    pub fn write(&self, text: &str) -> io::Result<Persisted> {
        std::fs::create_dir_all(self.dir()).or_else(|e| {
            if is_read_only(&e) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        if let Some(old) = self.read()? {
            if old == text {
                return Ok(Persisted::Saved);
            }
            match atomic_write(&self.backup_path(), old.as_bytes()) {
                Ok(_) => {}
                Err(e) if is_read_only(&e) => return Ok(Persisted::ReadOnly),
                Err(e) => return Err(e),
            }
        }
        match atomic_write(&self.path, text.as_bytes()) {
            Ok(()) => Ok(Persisted::Saved),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ResourceBusy | io::ErrorKind::CrossesDevices
                ) =>
            {
                write_in_place(&self.path, text.as_bytes()).map(|_| Persisted::SavedInPlace)
            }
            Err(e) if is_read_only(&e) => match write_in_place(&self.path, text.as_bytes()) {
                Ok(()) => Ok(Persisted::SavedInPlace),
                Err(e) if is_read_only(&e) => Ok(Persisted::ReadOnly),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Make sure `bytes` can be written beside the manifest before anything else changes: a
    /// temporary file of that size is written, synced and removed. A read-only directory
    /// passes (nothing will be written there); a full one fails with the write's error.
    pub fn reserve(&self, bytes: usize) -> io::Result<()> {
        if !self.writable() {
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".occ-space-")
            .tempfile_in(self.dir())?;
        let chunk = [0u8; 8192];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            tmp.write_all(&chunk[..n])?;
            left -= n;
        }
        tmp.as_file().sync_all()
    }

    /// True when the manifest can be written (for status: "not persisted").
    pub fn writable(&self) -> bool {
        let target = if self.path.exists() {
            self.path.as_path()
        } else {
            self.dir()
        };
        nix::unistd::access(target, nix::unistd::AccessFlags::W_OK).is_ok()
            && !nix::sys::statvfs::statvfs(target)
                .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
                .unwrap_or(false)
    }
}

/// The lock file: never through a symlink (root would create a file wherever it points),
/// and only a regular file.
fn open_lock(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Temp file (0600) in the same directory, write, fsync, rename over `path`, fsync the dir.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".occ-tmp-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Last resort for a bind-mounted single file: truncate and rewrite it, then fsync.
fn write_in_place(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_atomically_with_backup_and_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("users.toml"));
        assert_eq!(store.read().unwrap(), None);
        assert_eq!(store.write("one").unwrap(), Persisted::Saved);
        assert_eq!(store.write("two").unwrap(), Persisted::Saved);
        assert_eq!(store.read().unwrap().as_deref(), Some("two"));
        assert_eq!(std::fs::read_to_string(store.backup_path()).unwrap(), "one");
        for p in [&store.path, &store.backup_path()] {
            assert_eq!(std::fs::metadata(p).unwrap().mode() & 0o777, 0o600, "{p:?}");
        }
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".occ-tmp-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert!(store.writable());
    }

    #[test]
    fn lock_is_exclusive_between_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("users.toml"));
        let guard = store.lock().unwrap();
        let s2 = store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _g = s2.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(guard);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
