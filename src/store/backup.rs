//! Backup files: a consistent snapshot of every sled tree, plus side files (the admin
//! users file), in one checksummed stream.
//!
//! Layout, integers big-endian:
//!
//! ```text
//! header   "SPBACKUP" format:u16 schema:u32 created_ms:u64 version_len:u16 version
//! records  0x01 TREE  name_len:u32 name                      starts a tree
//!          0x02 PAIR  key_len:u32 key value_len:u32 value     a pair of the last TREE
//!          0x03 FILE  name_len:u32 name data_len:u64 data     a side file, raw bytes
//! trailer  0xFF END   records:u64 crc32:u32                   CRC-32 of every byte before it
//! ```
//!
//! `format` changes when this layout does (a reader refuses a newer one); `schema` is the
//! database's schema marker at the cut, so a newer build migrates an older backup when it
//! restores it, and an older build refuses a newer one before writing anything.

use std::fs::OpenOptions;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{jobs, keys, migrate, now_ms, StoreError, SCHEMA_VERSION};

pub const MAGIC: &[u8; 8] = b"SPBACKUP";
pub const FORMAT_VERSION: u16 = 1;
/// The side file of the admin UI's users, restored with mode 0600.
pub const ADMIN_USERS: &str = "admin-users.json";
/// The tree holding events, jobs and markers.
pub const LOG_TREE: &str = "log";

const TREE: u8 = 0x01;
const PAIR: u8 = 0x02;
const FILE: u8 = 0x03;
const END: u8 = 0xFF;
/// Pairs written per sled batch when restoring.
const RESTORE_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a surepush backup (the file does not start with {:?})", std::str::from_utf8(MAGIC).unwrap_or_default())]
    NotABackup,
    #[error("the backup has format {found}, newer than this build reads ({supported}); use a newer surepush")]
    NewerFormat { found: u16, supported: u16 },
    #[error("the backup holds a database of schema {found}, newer than this build reads ({supported}); restore it with a newer surepush")]
    NewerSchema { found: u32, supported: u32 },
    #[error("the backup is truncated: it ends at byte {at}, in {what}")]
    Truncated { at: u64, what: &'static str },
    #[error("the backup is corrupt at byte {at}: {what}")]
    Corrupt { at: u64, what: String },
    #[error(
        "the backup is corrupt: checksum mismatch (stored {stored:08x}, computed {computed:08x})"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("the backup is corrupt: {0} bytes follow its end record")]
    Trailing(u64),
    #[error("there is no surepush database at {0}")]
    NoDatabase(PathBuf),
}

/// A tree and how many pairs it has in the backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TreeCount {
    pub name: String,
    pub pairs: u64,
}

/// What a backup holds, from writing or reading it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub format: u16,
    pub schema: u32,
    pub created_ms: u64,
    /// The surepush version that wrote the backup.
    pub version: String,
    pub trees: Vec<TreeCount>,
    /// Side files: name and size.
    pub files: Vec<(String, u64)>,
    pub events: u64,
    pub jobs: u64,
    pub records: u64,
    pub bytes: u64,
    /// How long writes were held for the cut (snapshots taken by a running server).
    pub pause_ms: u64,
}

impl Summary {
    /// A tree record; the log tree comes twice in a backup taken while serving (its
    /// events last), and is listed once.
    fn enter_tree(&mut self, name: &[u8]) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !self.trees.iter().any(|t| t.name == name) {
            self.trees.push(TreeCount { name, pairs: 0 });
        }
    }

    fn count(&mut self, tree: &[u8], key: &[u8]) {
        let name = String::from_utf8_lossy(tree);
        if let Some(t) = self.trees.iter_mut().rev().find(|t| t.name == name) {
            t.pairs += 1;
        }
        if tree == LOG_TREE.as_bytes() && key.len() == 9 {
            match key[0] {
                keys::EVENT => self.events += 1,
                jobs::JOB => self.jobs += 1,
                _ => {}
            }
        }
    }
}

/// One item of a backup, in file order.
pub enum Item {
    Tree(Vec<u8>),
    Pair(Vec<u8>, Vec<u8>),
    File(String, Vec<u8>),
}

struct HashWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_bytes32(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| io::Error::other("a key or value over 4 GiB"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(b)
}

/// A snapshot being written, in two phases. `begin` writes the header and every tree
/// except the log's events (and the per-topic index of schema 4, which it leaves out:
/// derived data), and must run while nothing writes (on the writer thread, or on an
/// exclusively opened database): that is the cut. `events_upto` then copies the events
/// up to the cut's head, which can run while the server goes on writing, because they
/// are immutable once written and retention is held off meanwhile
/// (`Shared::retention_hold`); `finish` adds the side files and the checksum.
pub struct Snapshot<W: Write> {
    w: HashWriter<W>,
    s: Summary,
}

/// Called with each event (seq, record) a snapshot copies.
pub type EachEvent<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// Where a snapshot reads the events from, in seq order (see `stored::BackupEvents`).
pub trait EventSource {
    fn each(&self, upto: u64, f: &mut EachEvent<'_>) -> Result<(), StoreError>;
}

/// Keys of the log tree `begin` leaves out: events (`events_upto` copies them) and the
/// per-topic index of schema 4 and before (derived data, rebuilt at open).
fn is_event_data(key: &[u8]) -> bool {
    matches!(key.first(), Some(&keys::EVENT) | Some(&keys::INDEX))
}

fn io_err(e: io::Error) -> StoreError {
    StoreError::from(BackupError::Io(e))
}

impl<W: Write> Snapshot<W> {
    pub fn begin(db: &sled::Db, out: W) -> Result<Snapshot<W>, StoreError> {
        let names = {
            let mut n = db.tree_names();
            n.sort();
            n
        };
        if !names.iter().any(|n| n == LOG_TREE.as_bytes()) {
            return Err(BackupError::NoDatabase(PathBuf::new()).into());
        }
        let schema = migrate::schema_of(&db.open_tree(LOG_TREE)?)?
            .ok_or_else(|| BackupError::NoDatabase(PathBuf::new()))?;
        migrate::check_readable(schema)?;
        let mut w = HashWriter {
            inner: out,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let s = Summary {
            format: FORMAT_VERSION,
            schema,
            created_ms: now_ms(),
            version: migrate::VERSION.to_string(),
            ..Summary::default()
        };
        w.write_all(MAGIC).map_err(io_err)?;
        w.write_all(&FORMAT_VERSION.to_be_bytes()).map_err(io_err)?;
        w.write_all(&schema.to_be_bytes()).map_err(io_err)?;
        w.write_all(&s.created_ms.to_be_bytes()).map_err(io_err)?;
        w.write_all(&(s.version.len() as u16).to_be_bytes())
            .map_err(io_err)?;
        w.write_all(s.version.as_bytes()).map_err(io_err)?;
        let mut snap = Snapshot { w, s };
        for name in names {
            let tree = db.open_tree(&name)?;
            snap.tree_record(&name)?;
            if name == LOG_TREE.as_bytes() {
                // around the event and index key ranges, without walking them
                let (e, i) = (vec![keys::EVENT], vec![keys::INDEX]);
                let ranges = [
                    tree.range(..e.clone()),
                    tree.range(vec![keys::EVENT + 1]..i.clone()),
                    tree.range(vec![keys::INDEX + 1]..),
                ];
                for kv in ranges.into_iter().flatten() {
                    let (k, v) = kv?;
                    debug_assert!(!is_event_data(&k));
                    snap.pair(&name, &k, &v)?;
                }
            } else {
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    snap.pair(&name, &k, &v)?;
                }
            }
        }
        Ok(snap)
    }

    fn tree_record(&mut self, name: &[u8]) -> Result<(), StoreError> {
        self.w.write_all(&[TREE]).map_err(io_err)?;
        put_bytes32(&mut self.w, name).map_err(io_err)?;
        self.s.records += 1;
        self.s.enter_tree(name);
        Ok(())
    }

    fn pair(&mut self, tree: &[u8], k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.w.write_all(&[PAIR]).map_err(io_err)?;
        put_bytes32(&mut self.w, k).map_err(io_err)?;
        put_bytes32(&mut self.w, v).map_err(io_err)?;
        self.s.records += 1;
        self.s.count(tree, k);
        Ok(())
    }

    /// The log's live events with seq at most `head`, written as `e` pairs (the layout
    /// of schema 3, which a restore moves into segments). No index: the restored log
    /// builds its own from the events.
    pub fn events_upto(&mut self, events: &dyn EventSource, head: u64) -> Result<(), StoreError> {
        let name = LOG_TREE.as_bytes();
        self.tree_record(name)?;
        events.each(head, &mut |seq, v| self.pair(name, &keys::event(seq), v))?;
        Ok(())
    }

    /// Side files, the end record and the checksum.
    pub fn finish(mut self, files: &[(String, Vec<u8>)]) -> Result<Summary, StoreError> {
        let (w, s) = (&mut self.w, &mut self.s);
        for (name, data) in files {
            w.write_all(&[FILE]).map_err(io_err)?;
            put_bytes32(w, name.as_bytes()).map_err(io_err)?;
            w.write_all(&(data.len() as u64).to_be_bytes())
                .map_err(io_err)?;
            w.write_all(data).map_err(io_err)?;
            s.records += 1;
            s.files.push((name.clone(), data.len() as u64));
        }
        w.write_all(&[END]).map_err(io_err)?;
        w.write_all(&s.records.to_be_bytes()).map_err(io_err)?;
        let crc = w.crc.clone().finalize();
        w.write_all(&crc.to_be_bytes()).map_err(io_err)?;
        w.flush().map_err(io_err)?;
        s.bytes = w.bytes;
        Ok(std::mem::take(s))
    }
}

/// Writes every tree of `db` and the given side files. The caller makes sure nothing
/// writes to `db` meanwhile (an exclusively opened database).
pub fn write_snapshot<W: Write>(
    db: &sled::Db,
    events: &dyn EventSource,
    files: &[(String, Vec<u8>)],
    out: W,
) -> Result<Summary, StoreError> {
    let mut snap = Snapshot::begin(db, out)?;
    snap.events_upto(events, u64::MAX)?;
    snap.finish(files)
}

/// Reads the side files that exist (a missing one is left out).
fn read_files(files: &[(String, PathBuf)]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for (name, path) in files {
        match std::fs::read(path) {
            Ok(data) => out.push((name.clone(), data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::Io(e).into()),
        }
    }
    Ok(out)
}

/// Writes a snapshot into a new file (mode 0600) at `path`; removes it on failure.
/// Not fsynced: whoever keeps the file syncs its own copy. `pause_ms` is the time taken.
pub fn snapshot_to_file(
    db: &sled::Db,
    events: &dyn EventSource,
    path: &Path,
    files: &[(String, PathBuf)],
) -> Result<Summary, StoreError> {
    let start = Instant::now();
    let result = (|| {
        let files = read_files(files)?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(BackupError::Io)?;
        write_snapshot(db, events, &files, BufWriter::with_capacity(1 << 20, f))
    })();
    match result {
        Ok(mut s) => {
            s.pause_ms = start.elapsed().as_millis() as u64;
            Ok(s)
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// A backup taken while serving, between its cut (on the writer thread) and its end.
pub struct OnlineSnapshot {
    snap: Snapshot<BufWriter<std::fs::File>>,
    files: Vec<(String, Vec<u8>)>,
    path: PathBuf,
    /// The newest event in the backup.
    pub head: u64,
    /// How long writes were held for the cut.
    pub pause_ms: u64,
}

impl std::fmt::Debug for OnlineSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineSnapshot")
            .field("path", &self.path)
            .field("head", &self.head)
            .finish()
    }
}

/// The cut: run with no write in progress (the writer thread does), `head` being the
/// newest durable event. Writes everything but the events into a new file (0600) at `path`.
pub fn begin_online(
    db: &sled::Db,
    path: &Path,
    files: &[(String, PathBuf)],
    head: u64,
) -> Result<OnlineSnapshot, StoreError> {
    let start = Instant::now();
    let result = (|| {
        let files = read_files(files)?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(BackupError::Io)?;
        let snap = Snapshot::begin(db, BufWriter::with_capacity(1 << 20, f))?;
        Ok(OnlineSnapshot {
            snap,
            files,
            path: path.to_path_buf(),
            head,
            pause_ms: start.elapsed().as_millis() as u64,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

impl OnlineSnapshot {
    /// The events up to the cut and the end; runs while the server writes (retention
    /// must be held off). Removes the file on failure.
    pub fn finish(mut self, events: &dyn EventSource) -> Result<Summary, StoreError> {
        let result = self
            .snap
            .events_upto(events, self.head)
            .and_then(|_| self.snap.finish(&self.files));
        match result {
            Ok(mut s) => {
                s.pause_ms = self.pause_ms;
                Ok(s)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                Err(e)
            }
        }
    }
}

/// Offline backup: opens the database at `db_dir` itself (no server may hold it) and
/// snapshots it into a new file at `path`, without writing to the database.
pub fn snapshot_offline(
    db_dir: &Path,
    path: &Path,
    files: &[(String, PathBuf)],
    config: &crate::config::StorageConfig,
) -> Result<Summary, StoreError> {
    if !db_dir.join("conf").exists() {
        return Err(BackupError::NoDatabase(db_dir.to_path_buf()).into());
    }
    let db = super::log::open_db(db_dir, config)?;
    let log = db.open_tree(LOG_TREE)?;
    // read only: a server may not hold the database, and a backup writes nothing to it
    let next_seq = super::meta::next_seq(&log)?;
    let events = super::stored::BackupEvents {
        segments: std::sync::Arc::new(super::segments::Segments::open(
            db_dir,
            super::stored::segment_bytes(config),
            next_seq,
            false,
        )?),
        trimmed: super::stored::Trimmed::load(&log)?,
        legacy: Some(log),
    };
    snapshot_to_file(&db, &events, path, files).map_err(|e| match e {
        StoreError::Backup(BackupError::NoDatabase(_)) => {
            BackupError::NoDatabase(db_dir.to_path_buf()).into()
        }
        other => other,
    })
}

struct HashReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    pos: u64,
}

impl<R: Read> HashReader<R> {
    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(BackupError::Truncated {
                        at: self.pos + got as u64,
                        what,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackupError::Io(e)),
            }
        }
        self.crc.update(buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BackupError> {
        let mut b = [0u8; N];
        self.exact(&mut b, what)?;
        Ok(b)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, BackupError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BackupError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BackupError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// `len` bytes, allocated as they arrive (a corrupt length cannot allocate much).
    fn vec(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>, BackupError> {
        let mut v = Vec::new();
        (&mut self.inner).take(len).read_to_end(&mut v)?;
        if (v.len() as u64) < len {
            return Err(BackupError::Truncated {
                at: self.pos + v.len() as u64,
                what,
            });
        }
        self.crc.update(&v);
        self.pos += len;
        Ok(v)
    }

    fn vec32(&mut self, what: &'static str) -> Result<Vec<u8>, BackupError> {
        let len = self.u32(what)?;
        self.vec(u64::from(len), what)
    }
}

/// Reads a whole backup, verifying its structure and checksum, and hands each item to
/// `each` in file order. Items are handed out before the checksum is checked at the end:
/// verify the whole file first (with a no-op `each`) before acting on it.
pub fn read<R: Read>(
    r: R,
    mut each: impl FnMut(Item) -> Result<(), StoreError>,
) -> Result<Summary, StoreError> {
    let mut r = HashReader {
        inner: r,
        crc: crc32fast::Hasher::new(),
        pos: 0,
    };
    let magic: [u8; 8] = r.array("the header")?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup.into());
    }
    let format = u16::from_be_bytes(r.array("the header")?);
    if format > FORMAT_VERSION {
        return Err(BackupError::NewerFormat {
            found: format,
            supported: FORMAT_VERSION,
        }
        .into());
    }
    let mut s = Summary {
        format,
        schema: r.u32("the header")?,
        created_ms: r.u64("the header")?,
        ..Summary::default()
    };
    let vlen = u16::from_be_bytes(r.array("the header")?);
    s.version = String::from_utf8_lossy(&r.vec(u64::from(vlen), "the header")?).into_owned();
    let mut tree: Option<Vec<u8>> = None;
    loop {
        let at = r.pos;
        match r.u8("a record")? {
            TREE => {
                let name = r.vec32("a tree record")?;
                s.records += 1;
                s.enter_tree(&name);
                tree = Some(name.clone());
                each(Item::Tree(name))?;
            }
            PAIR => {
                let Some(t) = &tree else {
                    return Err(BackupError::Corrupt {
                        at,
                        what: "a pair before any tree".into(),
                    }
                    .into());
                };
                let k = r.vec32("a pair record")?;
                let v = r.vec32("a pair record")?;
                s.records += 1;
                s.count(t, &k);
                each(Item::Pair(k, v))?;
            }
            FILE => {
                let name = String::from_utf8(r.vec32("a file record")?).map_err(|_| {
                    BackupError::Corrupt {
                        at,
                        what: "a file name that is not UTF-8".into(),
                    }
                })?;
                let len = r.u64("a file record")?;
                let data = r.vec(len, "a file record")?;
                s.records += 1;
                s.files.push((name.clone(), len));
                each(Item::File(name, data))?;
            }
            END => {
                let n = r.u64("the end record")?;
                let computed = r.crc.clone().finalize();
                let stored = r.u32("the end record")?;
                if stored != computed {
                    return Err(BackupError::Checksum { stored, computed }.into());
                }
                if n != s.records {
                    return Err(BackupError::Corrupt {
                        at,
                        what: format!(
                            "the end record counts {n} records, the file has {}",
                            s.records
                        ),
                    }
                    .into());
                }
                s.bytes = r.pos;
                let mut rest = Vec::new();
                (&mut r.inner)
                    .take(1 << 20)
                    .read_to_end(&mut rest)
                    .map_err(BackupError::Io)?;
                if !rest.is_empty() {
                    return Err(BackupError::Trailing(rest.len() as u64).into());
                }
                break;
            }
            other => {
                return Err(BackupError::Corrupt {
                    at,
                    what: format!("unknown record type 0x{other:02x}"),
                }
                .into())
            }
        }
    }
    // Checked once the checksum says the header is what was written.
    if s.schema > SCHEMA_VERSION {
        return Err(BackupError::NewerSchema {
            found: s.schema,
            supported: SCHEMA_VERSION,
        }
        .into());
    }
    Ok(s)
}

fn open_file(path: &Path) -> Result<BufReader<std::fs::File>, StoreError> {
    Ok(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).map_err(BackupError::Io)?,
    ))
}

/// Verifies a whole backup file: structure, checksum, format and schema.
pub fn verify_file(path: &Path) -> Result<Summary, StoreError> {
    read(open_file(path)?, |_| Ok(()))
}

/// What a restore wrote.
pub struct Restored {
    pub summary: Summary,
    /// Side files, to be written by the caller where they belong.
    pub files: Vec<(String, Vec<u8>)>,
    /// The schema steps run on the restored database.
    pub migration: migrate::Opened,
    /// Seqs `[from, to)` skipped so that ids the backed-up server issued after the
    /// backup are never reused; new events start at `to`.
    pub gap: (u64, u64),
}

/// Writes a verified backup's trees into a new database at `db_dir` (which must not hold
/// one), flushes, and migrates it to this build's schema. Call [`verify_file`] first:
/// this reads the file again and fails at the end if it changed in between.
pub fn restore_db(path: &Path, db_dir: &Path) -> Result<Restored, StoreError> {
    if db_dir.join("conf").exists() {
        return Err(BackupError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already holds a database", db_dir.display()),
        ))
        .into());
    }
    let db = sled::Config::new()
        .path(db_dir)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let mut files = Vec::new();
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let summary = read(open_file(path)?, |item| {
        match item {
            Item::Tree(name) => {
                if let Some(t) = &tree {
                    t.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
                tree = Some(db.open_tree(name)?);
            }
            Item::Pair(k, v) => {
                batch.insert(k, v);
                pending += 1;
                if pending >= RESTORE_BATCH {
                    if let Some(t) = &tree {
                        t.apply_batch(std::mem::take(&mut batch))?;
                    }
                    pending = 0;
                }
            }
            Item::File(name, data) => files.push((name, data)),
        }
        Ok(())
    })?;
    if let Some(t) = &tree {
        t.apply_batch(batch)?;
    }
    db.flush()?;
    let log = db.open_tree(LOG_TREE)?;
    let migration = migrate::upgrade(&db, &log)?;
    let gap = super::meta::open_restore_gap(&log)?;
    db.flush()?;
    // "restored" must survive a power cut like an acknowledged publish
    super::sync_sled_file(db_dir).map_err(|e| StoreError::Db(sled::Error::Io(e)))?;
    Ok(Restored {
        summary,
        files,
        migration,
        gap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_db() -> sled::Db {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = db.open_tree(LOG_TREE).unwrap();
        migrate::upgrade(&db, &log).unwrap();
        for seq in 1..=50u64 {
            log.insert(keys::event(seq), format!("event {seq}").as_bytes())
                .unwrap();
        }
        log.insert(jobs::job_key(1), b"{}".as_slice()).unwrap();
        db.open_tree("other")
            .unwrap()
            .insert(b"k", b"v".as_slice())
            .unwrap();
        db.insert(b"default-key", b"x".as_slice()).unwrap();
        db
    }

    /// The events of a database of the old layout (under sled `e` keys).
    fn legacy_events(db: &sled::Db) -> crate::store::stored::BackupEvents {
        let dir = tempfile::tempdir().unwrap();
        crate::store::stored::BackupEvents {
            legacy: Some(db.open_tree(LOG_TREE).unwrap()),
            segments: std::sync::Arc::new(
                crate::store::segments::Segments::open(dir.path(), 1 << 20, 1, false).unwrap(),
            ),
            trimmed: Default::default(),
        }
    }

    fn sample_bytes() -> (Vec<u8>, Summary) {
        let db = sample_db();
        let mut out = Vec::new();
        let files = vec![(ADMIN_USERS.to_string(), b"{\"users\":[]}".to_vec())];
        let s = write_snapshot(&db, &legacy_events(&db), &files, &mut out).unwrap();
        (out, s)
    }

    #[test]
    fn online_snapshot_has_exactly_the_cut_though_writes_go_on() {
        let db = sample_db();
        let log = db.open_tree(LOG_TREE).unwrap();
        for seq in 1..=50u64 {
            log.insert(keys::index("t", seq), b"".as_slice()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let cut = begin_online(&db, &path, &[], 50).unwrap();
        // after the cut: new events, index entries and a new job; none may be in it
        for seq in 51..=60u64 {
            log.insert(keys::event(seq), b"later".as_slice()).unwrap();
            log.insert(keys::index("t", seq), b"".as_slice()).unwrap();
        }
        log.insert(jobs::job_key(2), b"{}".as_slice()).unwrap();
        let written = cut.finish(&legacy_events(&db)).unwrap();
        assert_eq!(written.events, 50);
        assert_eq!(written.jobs, 1);
        let bytes = std::fs::read(&path).unwrap();
        // index entries (as schema 4 kept them) are derived data: left out
        let mut index = 0;
        let mut events = Vec::new();
        let read_back = read(&bytes[..], |item| {
            if let Item::Pair(k, _) = item {
                if k[0] == keys::INDEX {
                    index += 1;
                }
                if let Some(seq) = keys::event_seq(&k) {
                    events.push(seq);
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(index, 0);
        assert_eq!(events, (1..=50).collect::<Vec<_>>());
        assert_eq!(
            read_back.trees, written.trees,
            "the log tree is listed once"
        );
        assert_eq!(
            read_back
                .trees
                .iter()
                .filter(|t| t.name == LOG_TREE)
                .count(),
            1
        );
    }

    #[test]
    fn round_trip_every_tree_and_file() {
        let (bytes, written) = sample_bytes();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(written.events, 50);
        assert_eq!(written.jobs, 1);
        let mut pairs = Vec::new();
        let mut files = Vec::new();
        let read_back = read(&bytes[..], |item| {
            match item {
                Item::Tree(_) => {}
                Item::Pair(k, v) => pairs.push((k, v)),
                Item::File(n, d) => files.push((n, d)),
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(read_back.trees, written.trees);
        assert_eq!(read_back.records, written.records);
        assert_eq!(read_back.events, 50);
        assert_eq!(read_back.schema, SCHEMA_VERSION);
        assert!(read_back
            .trees
            .iter()
            .any(|t| t.name == "other" && t.pairs == 1));
        assert!(read_back
            .trees
            .iter()
            .any(|t| t.name == "__sled__default" && t.pairs == 1));
        assert_eq!(
            files,
            vec![(ADMIN_USERS.to_string(), b"{\"users\":[]}".to_vec())]
        );
        assert!(pairs.contains(&(keys::event(7).to_vec(), b"event 7".to_vec())));
    }

    #[test]
    fn every_truncation_is_refused_as_truncated() {
        let (bytes, _) = sample_bytes();
        for cut in 0..bytes.len() {
            let e = read(&bytes[..cut], |_| Ok(())).unwrap_err();
            assert!(
                matches!(e, StoreError::Backup(BackupError::Truncated { .. })),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn flipped_bytes_and_extra_bytes_are_refused() {
        let (bytes, _) = sample_bytes();
        for at in 8..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x41;
            let e = read(&b[..], |_| Ok(())).unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::Backup(
                        BackupError::Checksum { .. }
                            | BackupError::Corrupt { .. }
                            | BackupError::Truncated { .. }
                            | BackupError::NewerFormat { .. }
                    )
                ),
                "flip at {at}: {e}"
            );
        }
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(
            read(&b[..], |_| Ok(())).unwrap_err(),
            StoreError::Backup(BackupError::NotABackup)
        ));
        let mut b = bytes.clone();
        b.extend_from_slice(b"junk");
        assert!(matches!(
            read(&b[..], |_| Ok(())).unwrap_err(),
            StoreError::Backup(BackupError::Trailing(4))
        ));
    }

    #[test]
    fn restore_writes_every_tree() {
        let (bytes, _) = sample_bytes();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.spbak");
        std::fs::write(&file, &bytes).unwrap();
        verify_file(&file).unwrap();
        let r = restore_db(&file, &dir.path().join("db")).unwrap();
        assert_eq!(r.files.len(), 1);
        assert!(r.migration.steps.is_empty());
        let db = sled::open(dir.path().join("db")).unwrap();
        assert_eq!(
            db.open_tree(LOG_TREE)
                .unwrap()
                .scan_prefix([keys::EVENT])
                .count(),
            50
        );
        assert_eq!(
            db.open_tree("other").unwrap().get(b"k").unwrap().unwrap(),
            b"v"
        );
        assert_eq!(db.get(b"default-key").unwrap().unwrap(), b"x");
    }
}
