//! Free space on the data disk, and the flood mark below which new events and jobs are
//! refused (`storage.flood_free_disk_bytes`, after Elasticsearch's flood stage; the
//! headroom retention keeps, `storage.min_free_disk_bytes`, is in `retention.rs`): refusing them early leaves room for what must still
//! be written (job completions, retention's marks, sled's own log) and keeps the disk
//! from filling up to the last byte, where every file system misbehaves. Writes resume
//! by themselves once space is freed, or once retention frees it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A reading is reused for this long: the writer asks once per group.
const FRESH_FOR: Duration = Duration::from_millis(200);

pub struct FreeSpace {
    dir: PathBuf,
    min_free: u64,
    last: Mutex<Option<(Instant, u64)>>,
}

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl FreeSpace {
    pub fn new(dir: &Path, min_free: u64) -> FreeSpace {
        FreeSpace {
            dir: dir.to_path_buf(),
            min_free,
            last: Mutex::new(None),
        }
    }

    /// `Some(free bytes)` when below the mark (never when the mark is 0, or when the
    /// file system cannot be asked: then the writes themselves tell).
    pub fn low(&self) -> Option<u64> {
        if self.min_free == 0 {
            return None;
        }
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let free = match *last {
            Some((at, free)) if now.duration_since(at) < FRESH_FOR => free,
            _ => {
                let free = available_bytes(&self.dir).ok()?;
                *last = Some((now, free));
                free
            }
        };
        (free < self.min_free).then_some(free)
    }

    /// Free bytes now (not cached), None when the file system cannot be asked.
    pub fn available(&self) -> Option<u64> {
        available_bytes(&self.dir).ok()
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_file_system_and_compares_with_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(FreeSpace::new(dir.path(), 0).low(), None);
        assert_eq!(FreeSpace::new(dir.path(), 1).low(), None);
        assert!(FreeSpace::new(dir.path(), u64::MAX).low().is_some());
        assert!(available_bytes(&dir.path().join("missing")).is_err());
    }
}
