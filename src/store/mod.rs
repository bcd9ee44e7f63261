//! Durable storage: the event log's events in segment files (`segment.rs`,
//! `segments.rs`), everything else (topic metadata, job queues, markers) in one sled
//! tree; the per-topic index is in memory, built from the segments at open (`index.rs`).

pub mod backup;
mod index;
pub mod job_ops;
pub mod jobs;
mod keys;
mod log;
mod meta;
pub mod migrate;
pub mod receipts;
pub mod record;
mod retention;
mod segment;
mod segments;
pub mod space;
mod stored;
mod writer;

pub use log::{EventLog, NewEvent, ReadBatch, Resume, TopicInfo};
pub use record::EncodedEvent;
pub use retention::{RetentionPolicy, RetentionReport};

/// sled's data file in its directory. sled 0.34's `flush` writes it with
/// `sync_file_range` on Linux, which is not durable against a power cut: whatever must
/// survive one is followed by an `fdatasync` of this file (`sync_sled_file`).
pub const SLED_DATA_FILE: &str = "db";

/// fdatasync of the sled data file in `db_dir`, after a `flush`.
pub fn sync_sled_file(db_dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(db_dir.join(SLED_DATA_FILE))?.sync_data()
}

/// Schema version this build writes; a database with a newer one is refused, an older
/// one is migrated at open (`migrate.rs`).
pub const SCHEMA_VERSION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error(transparent)]
    Corrupt(#[from] record::CorruptRecord),
    #[error("the event log is shut down")]
    Closed,
    #[error(
        "the database was written by a newer surepush (schema {found}, this build reads up to {supported}); upgrade surepush or restore a backup"
    )]
    NewerSchema { found: u32, supported: u32 },
    #[error("this build cannot migrate a database of schema {from}")]
    NoMigration { from: u32 },
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    #[error(transparent)]
    Job(#[from] jobs::JobError),
    #[error("a storage task failed: {0}")]
    Task(String),
    /// The filesystem is full (ENOSPC): nothing of the write was kept, and what was
    /// already accepted is safe.
    #[error("the disk is full")]
    DiskFull,
    /// Free space on the data disk is below `storage.flood_free_disk_bytes`: new events
    /// and jobs are refused until space is freed.
    #[error(
        "only {free} bytes are free on the data disk, below storage.flood_free_disk_bytes ({min})"
    )]
    LowDisk { free: u64, min: u64 },
    /// An event segment file could not be read or written.
    #[error("event segment file error: {0}")]
    Segment(#[from] std::io::Error),
}

impl StoreError {
    /// True for an error that comes from a full filesystem, however it was wrapped.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::DiskFull | StoreError::LowDisk { .. } => return true,
            StoreError::Db(sled::Error::Io(e)) => e,
            StoreError::Backup(backup::BackupError::Io(e)) => e,
            StoreError::Segment(e) => e,
            _ => return false,
        };
        io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull
    }

    /// A copy of a free-space refusal (errors are not `Clone`).
    pub(crate) fn for_waiter_low(&self) -> StoreError {
        match self {
            StoreError::LowDisk { free, min } => StoreError::LowDisk {
                free: *free,
                min: *min,
            },
            other => other.for_waiter(),
        }
    }

    /// The same error for each waiter of one failed write (errors are not `Clone`): a
    /// full disk stays one, anything else becomes its text.
    pub(crate) fn for_waiter(&self) -> StoreError {
        if let StoreError::LowDisk { .. } = self {
            return self.for_waiter_low();
        }
        if self.is_disk_full() {
            StoreError::DiskFull
        } else {
            StoreError::Task(format!("storage write failed: {self}"))
        }
    }
}

/// Runs blocking sled work off the async executor. The one place that does so.
pub async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_through_sled_and_waiters() {
        let enospc = StoreError::Db(sled::Error::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
        assert!(enospc.is_disk_full());
        assert!(matches!(enospc.for_waiter(), StoreError::DiskFull));
        let eio = StoreError::Db(sled::Error::Io(std::io::Error::from_raw_os_error(
            libc::EIO,
        )));
        assert!(!eio.is_disk_full());
        assert!(matches!(eio.for_waiter(), StoreError::Task(_)));
        assert!(!StoreError::Closed.is_disk_full());
    }
}
