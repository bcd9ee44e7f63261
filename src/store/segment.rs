//! One segment file of the event log: events in seq order, appended, never edited.
//!
//! Events live in files of bounded size (`db/events/<first seq>.seg`) instead of sled:
//! retention then frees disk by unlinking whole files (as Kafka drops log segments and
//! JetStream drops message blocks), so the space on disk follows what is kept. sled keeps
//! only what is small and changes: topic metadata, jobs, markers (the per-topic index is
//! built in memory when the log is opened, see `index.rs`).
//!
//! Layout: the magic `SPSEG01\n`, then records of
//! `len u32 LE | crc32 u32 LE (of seq and payload) | seq u64 LE | payload (len bytes)`,
//! the payload being an encoded event record (`record.rs`). Seqs rise strictly within a
//! file. A record is valid when it is whole, its checksum matches and its seq is above the
//! one before; opening stops at the first record that is not (a torn write at a crash)
//! and, when repairing, cuts the file there.
//!
//! Only the writer thread appends, and only to the newest segment; readers read records
//! up to the log's head (durable and visible), with positional reads on a shared handle.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::record::decode_head;

pub const MAGIC: &[u8; 8] = b"SPSEG01\n";
const HEADER: usize = 16;
/// A sparse index entry every this many bytes: a lookup reads at most about this much.
const SPARSE_EVERY: u64 = 4096;
/// Largest payload a record may have (a bigger length is a torn or foreign record).
const MAX_PAYLOAD: u32 = 256 << 20;
/// Read size of a sequential scan.
const READ_CHUNK: usize = 64 << 10;
/// Read size of a lookup: from its sparse entry the record is at most this far on.
const LOOKUP_CHUNK: usize = 2 * SPARSE_EVERY as usize;

/// What one topic has in a segment: enough to tell whether the segment still holds any
/// of its live events, and roughly how many bytes they take.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopicSpan {
    pub bytes: u64,
    pub last_seq: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of valid content (magic and whole records).
    len: u64,
    first_seq: Option<u64>,
    last_seq: u64,
    records: u64,
    /// (seq, offset) of a record every `SPARSE_EVERY` bytes, ascending.
    sparse: Vec<(u64, u64)>,
    topics: HashMap<Box<str>, TopicSpan>,
}

impl State {
    /// Counts a record in; returns its topic (None when its head does not decode).
    fn note<'p>(&mut self, seq: u64, offset: u64, payload: &'p [u8]) -> Option<&'p str> {
        let rec_len = (HEADER + payload.len()) as u64;
        let last_sparse = self.sparse.last().map(|&(_, o)| o);
        if last_sparse.is_none_or(|o| offset >= o + SPARSE_EVERY) {
            self.sparse.push((seq, offset));
        }
        self.first_seq.get_or_insert(seq);
        self.last_seq = seq;
        self.records += 1;
        self.len = offset + rec_len;
        let head = decode_head(payload).ok()?;
        let span = match self.topics.get_mut(head.topic) {
            Some(s) => s,
            None => self.topics.entry(head.topic.into()).or_default(),
        };
        span.bytes += rec_len;
        span.last_seq = seq;
        Some(head.topic)
    }
}

/// A summary of a segment for retention.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub name_seq: u64,
    pub bytes: u64,
    pub last_seq: u64,
    pub records: u64,
    pub topics: Vec<(Box<str>, TopicSpan)>,
}

pub struct Segment {
    /// The seq in the file name: no record of this file is below it.
    pub name_seq: u64,
    pub path: PathBuf,
    file: File,
    state: RwLock<State>,
}

pub fn file_name(name_seq: u64) -> String {
    format!("{name_seq:020}.seg")
}

/// The seq a segment file's name carries; None for any other file.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// fsync of a directory, so a file created, renamed or removed in it stays so.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a file sequentially from an offset with positional reads (no shared cursor).
struct PosReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    chunk: usize,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> PosReader<'a> {
    fn new(file: &'a File, pos: u64, end: u64, chunk: usize) -> Self {
        PosReader {
            file,
            pos,
            end,
            chunk,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// `n` bytes at the current position, or None at (or past) `end`.
    fn take(&mut self, n: usize) -> io::Result<Option<&[u8]>> {
        if self.pos + n as u64 > self.end {
            return Ok(None);
        }
        if self.buf.len() - self.at < n {
            let want = n.max(self.chunk).min((self.end - self.pos) as usize);
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match self.file.read_at(&mut buf[got..], self.pos + got as u64)? {
                    0 => break,
                    k => got += k,
                }
            }
            buf.truncate(got);
            self.buf = buf;
            self.at = 0;
            if got < n {
                return Ok(None);
            }
        }
        let out = &self.buf[self.at..self.at + n];
        self.at += n;
        self.pos += n as u64;
        Ok(Some(out))
    }
}

/// One record read at `offset`: (seq, payload), or None when none valid starts there.
fn read_record(r: &mut PosReader<'_>) -> io::Result<Option<(u64, Vec<u8>)>> {
    let Some(h) = r.take(HEADER)? else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&h[8..16]);
    if len > MAX_PAYLOAD {
        return Ok(None);
    }
    let Some(payload) = r.take(len as usize)? else {
        return Ok(None);
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq_bytes);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Ok(None);
    }
    Ok(Some((u64::from_le_bytes(seq_bytes), payload.to_vec())))
}

/// Appends one framed record to `out`.
pub fn frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let seq_bytes = seq.to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq_bytes);
    hasher.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.extend_from_slice(payload);
}

/// What `Segment::open` found past the valid records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes after the last valid record (cut when repairing).
    pub cut_bytes: u64,
}

impl Segment {
    /// A new, empty segment file (fails if it exists), durable in its directory.
    pub fn create(dir: &Path, name_seq: u64) -> io::Result<Segment> {
        let path = dir.join(file_name(name_seq));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Segment {
            name_seq,
            path,
            file,
            state: RwLock::new(State {
                len: MAGIC.len() as u64,
                ..State::default()
            }),
        })
    }

    /// Opens an existing segment, keeping the valid records with seq below `below`;
    /// with `repair`, whatever follows them is cut from the file.
    #[cfg(test)]
    pub fn open(
        path: &Path,
        name_seq: u64,
        below: u64,
        repair: bool,
    ) -> io::Result<(Segment, Opened)> {
        Segment::open_reading(path, name_seq, below, repair, &mut |_, _| {})
    }

    /// `open`, calling `each` with every valid record it reads (seq and topic).
    pub fn open_reading(
        path: &Path,
        name_seq: u64,
        below: u64,
        repair: bool,
        each: &mut dyn FnMut(u64, &str),
    ) -> io::Result<(Segment, Opened)> {
        let file = OpenOptions::new().read(true).write(repair).open(path)?;
        let file_len = file.metadata()?.len();
        let mut magic = [0u8; 8];
        let has_magic =
            file_len >= 8 && file.read_exact_at(&mut magic, 0).is_ok() && &magic == MAGIC;
        if !has_magic {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a surepush segment file", path.display()),
            ));
        }
        let mut state = State {
            len: MAGIC.len() as u64,
            ..State::default()
        };
        {
            let mut r = PosReader::new(&file, MAGIC.len() as u64, file_len, READ_CHUNK);
            loop {
                let offset = r.pos;
                match read_record(&mut r)? {
                    Some((seq, payload))
                        if seq >= name_seq
                            && seq < below
                            && state.first_seq.is_none_or(|_| seq > state.last_seq) =>
                    {
                        if let Some(topic) = state.note(seq, offset, &payload) {
                            each(seq, topic);
                        }
                    }
                    _ => break,
                }
            }
        }
        let opened = Opened {
            cut_bytes: file_len - state.len,
        };
        if repair && opened.cut_bytes > 0 {
            file.set_len(state.len)?;
            file.sync_all()?;
        }
        Ok((
            Segment {
                name_seq,
                path: path.to_path_buf(),
                file,
                state: RwLock::new(state),
            },
            opened,
        ))
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> u64 {
        self.state().len
    }

    pub fn last_seq(&self) -> u64 {
        self.state().last_seq
    }

    pub fn is_empty(&self) -> bool {
        self.state().records == 0
    }

    pub fn info(&self) -> SegmentInfo {
        let s = self.state();
        SegmentInfo {
            name_seq: self.name_seq,
            bytes: s.len,
            last_seq: s.last_seq,
            records: s.records,
            topics: s
                .topics
                .iter()
                .map(|(t, span)| (t.clone(), *span))
                .collect(),
        }
    }

    /// Writes framed records (`frame`) whose seqs rise above every seq in the file.
    /// On failure the file is cut back to what it held, and the error returned.
    pub fn append(&self, framed: &[u8], records: &[(u64, &[u8])]) -> io::Result<u64> {
        let mut s = self.state_mut();
        let start = s.len;
        if let Err(e) = self.file.write_all_at(framed, start) {
            let _ = self.file.set_len(start);
            return Err(e);
        }
        let mut offset = start;
        for (seq, payload) in records {
            s.note(*seq, offset, payload);
            offset += (HEADER + payload.len()) as u64;
        }
        Ok(start)
    }

    /// Forgets what was appended from byte `start` on (an append whose database batch
    /// failed), cutting the file there. Sparse entries past it are dropped; the topic
    /// summary may overstate what is left, which only keeps the segment longer.
    pub fn cut_to(&self, start: u64, last_seq: u64, records: u64) -> io::Result<()> {
        let mut s = self.state_mut();
        s.len = start;
        s.last_seq = last_seq;
        s.records = records;
        if records == 0 {
            s.first_seq = None;
        }
        s.sparse.retain(|&(_, o)| o < start);
        self.file.set_len(start)
    }

    /// (len, last_seq, records) now: a mark to cut back to.
    pub fn mark(&self) -> (u64, u64, u64) {
        let s = self.state();
        (s.len, s.last_seq, s.records)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Calls `f` with each record with seq in `from..=upto`, in order, until it returns
    /// false.
    pub fn scan(
        &self,
        from: u64,
        upto: u64,
        f: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> io::Result<()> {
        self.scan_with(from, upto, READ_CHUNK, f)
    }

    fn scan_with(
        &self,
        from: u64,
        upto: u64,
        chunk: usize,
        mut f: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> io::Result<()> {
        let (start, end) = {
            let s = self.state();
            let i = s.sparse.partition_point(|&(seq, _)| seq <= from);
            let start = if i == 0 {
                MAGIC.len() as u64
            } else {
                s.sparse[i - 1].1
            };
            (start, s.len)
        };
        let mut r = PosReader::new(&self.file, start, end, chunk);
        while let Some((seq, payload)) = read_record(&mut r)? {
            if seq > upto {
                break;
            }
            if seq >= from && !f(seq, payload) {
                break;
            }
        }
        Ok(())
    }

    /// The payload of record `seq`, if this segment has it.
    pub fn get(&self, seq: u64) -> io::Result<Option<Vec<u8>>> {
        let mut found = None;
        self.scan_with(seq, seq, LOOKUP_CHUNK, |s, payload| {
            if s == seq {
                found = Some(payload);
            }
            false
        })?;
        Ok(found)
    }

    /// Writes the records `keep` accepts into a new file that replaces this one (atomic
    /// rename, durable), and returns it opened; None (and the file removed) when none is
    /// kept. This segment stays readable through its handle until dropped.
    pub fn rewrite(
        &self,
        dir: &Path,
        mut keep: impl FnMut(u64, &[u8]) -> bool,
    ) -> io::Result<Option<Segment>> {
        let tmp = dir.join(format!("{}.tmp", file_name(self.name_seq)));
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut buf = MAGIC.to_vec();
        let mut state = State {
            len: MAGIC.len() as u64,
            ..State::default()
        };
        let mut failed = None;
        self.scan(0, u64::MAX, |seq, payload| {
            if keep(seq, &payload) {
                let offset = state.len;
                frame(&mut buf, seq, &payload);
                state.note(seq, offset, &payload);
                if buf.len() >= 1 << 20 {
                    if let Err(e) = out.write_all(&buf) {
                        failed = Some(e);
                        return false;
                    }
                    buf.clear();
                }
            }
            true
        })?;
        if let Some(e) = failed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if state.records == 0 {
            let _ = std::fs::remove_file(&tmp);
            std::fs::remove_file(&self.path)?;
            sync_dir(dir)?;
            return Ok(None);
        }
        let written = out.write_all(&buf).and_then(|_| out.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(dir)?;
        Ok(Some(Segment {
            name_seq: self.name_seq,
            path: self.path.clone(),
            file: out,
            state: RwLock::new(state),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::encode_record;

    fn rec(topic: &str, n: u64) -> Vec<u8> {
        encode_record(n, topic, "message", &format!("{{\"n\":{n}}}"))
    }

    fn append(seg: &Segment, seqs: &[u64], topic: &str) {
        let payloads: Vec<Vec<u8>> = seqs.iter().map(|&s| rec(topic, s)).collect();
        let mut framed = Vec::new();
        let mut records = Vec::new();
        for (s, p) in seqs.iter().zip(&payloads) {
            frame(&mut framed, *s, p);
            records.push((*s, p.as_slice()));
        }
        seg.append(&framed, &records).unwrap();
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name(&format!("{}.tmp", file_name(1))), None);
    }

    #[test]
    fn appends_reads_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 10).unwrap();
        let seqs: Vec<u64> = (10..2000).collect();
        append(&seg, &seqs, "a/b");
        assert_eq!(seg.get(10).unwrap(), Some(rec("a/b", 10)));
        assert_eq!(seg.get(1500).unwrap(), Some(rec("a/b", 1500)));
        assert_eq!(seg.get(5000).unwrap(), None);
        let mut seen = Vec::new();
        seg.scan(100, 120, |s, _| {
            seen.push(s);
            true
        })
        .unwrap();
        assert_eq!(seen, (100..=120).collect::<Vec<_>>());
        let len = seg.len();
        drop(seg);
        let (seg, opened) =
            Segment::open(&dir.path().join(file_name(10)), 10, u64::MAX, true).unwrap();
        assert_eq!(opened.cut_bytes, 0);
        assert_eq!(seg.len(), len);
        assert_eq!(seg.last_seq(), 1999);
        assert_eq!(seg.info().topics.len(), 1);
        assert_eq!(seg.get(1999).unwrap(), Some(rec("a/b", 1999)));
    }

    #[test]
    fn a_torn_tail_and_records_past_the_database_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let seg = Segment::create(dir.path(), 1).unwrap();
        append(&seg, &[1, 2, 3, 4, 5], "t");
        let whole = seg.len();
        drop(seg);
        // a torn last record: half of a sixth one
        let mut extra = Vec::new();
        frame(&mut extra, 6, &rec("t", 6));
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        (&f).write_all(&extra[..extra.len() / 2]).unwrap();
        let (seg, opened) = Segment::open(&path, 1, u64::MAX, true).unwrap();
        assert_eq!(opened.cut_bytes, (extra.len() / 2) as u64);
        assert_eq!(seg.len(), whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        drop(seg);
        // the database knows only seqs below 4: 4 and 5 were never acknowledged
        let (seg, _) = Segment::open(&path, 1, 4, true).unwrap();
        assert_eq!(seg.last_seq(), 3);
        assert_eq!(seg.get(4).unwrap(), None);
        // a flipped byte ends the valid part there
        drop(seg);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (seg, _) = Segment::open(&path, 1, u64::MAX, false).unwrap();
        assert_eq!(seg.last_seq(), 2);
    }

    #[test]
    fn a_failed_append_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 1).unwrap();
        append(&seg, &[1, 2], "t");
        let (len, last, records) = seg.mark();
        append(&seg, &[3, 4], "t");
        seg.cut_to(len, last, records).unwrap();
        assert_eq!(seg.get(3).unwrap(), None);
        append(&seg, &[3], "u");
        assert_eq!(seg.get(3).unwrap(), Some(rec("u", 3)));
    }

    #[test]
    fn rewrite_keeps_what_is_asked_and_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 1).unwrap();
        append(&seg, &(1..=100).collect::<Vec<_>>(), "t");
        let new = seg
            .rewrite(dir.path(), |s, _| s % 10 == 0)
            .unwrap()
            .unwrap();
        assert_eq!(new.info().records, 10);
        assert_eq!(new.get(50).unwrap(), Some(rec("t", 50)));
        assert_eq!(new.get(51).unwrap(), None);
        // the old handle still reads the old content
        assert_eq!(seg.get(51).unwrap(), Some(rec("t", 51)));
        let (reopened, _) = Segment::open(&new.path, 1, u64::MAX, false).unwrap();
        assert_eq!(reopened.info().records, 10);
        assert!(new.rewrite(dir.path(), |_, _| false).unwrap().is_none());
        assert!(!new.path.exists());
    }
}
