//! Disk usage of a directory tree: the summed sizes of its files and how many there are,
//! subdirectories included (a database's `db/blobs`, `db/events`). Symlinks are not
//! followed; files that vanish during the walk (a server deleting segments) are skipped.

use std::path::Path;

/// What a walk found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// Walks `root`; a missing or unreadable root counts as empty.
pub fn usage(root: &Path) -> Usage {
    let mut total = Usage::default();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_dir() {
                dirs.push(entry.path());
            } else if ft.is_file() {
                if let Ok(m) = entry.metadata() {
                    total.bytes += m.len();
                    total.files += 1;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_files_in_subdirectories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir_all(d.path().join("blobs/x")).unwrap();
        std::fs::write(d.path().join("blobs/b"), [0u8; 5]).unwrap();
        std::fs::write(d.path().join("blobs/x/c"), [0u8; 7]).unwrap();
        assert_eq!(
            usage(d.path()),
            Usage {
                bytes: 22,
                files: 3
            }
        );
        assert_eq!(usage(&d.path().join("missing")), Usage::default());
    }
}
