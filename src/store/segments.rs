//! The event log's segment files (`db/events/`), oldest first; the newest is the one
//! appended to. The writer appends a group's records in one write and rolls to a new
//! file once the newest has reached `segment_bytes`; retention removes or rewrites only
//! older (sealed) files; readers look records up by seq. See `segment.rs` for the format.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::segment::{self, frame, Segment, SegmentInfo};

/// Directory of the segment files inside sled's directory.
pub const DIR: &str = "events";

pub struct Segments {
    dir: PathBuf,
    segment_bytes: u64,
    list: RwLock<Vec<Arc<Segment>>>,
    /// The newest segment has writes not yet fsynced.
    dirty: AtomicBool,
}

/// Where an append started, to cut back to if the rest of its write fails.
pub struct AppendMark {
    segment: Arc<Segment>,
    len: u64,
    last_seq: u64,
    records: u64,
    created: bool,
}

impl Segments {
    /// Opens (creating the directory) the segments of a database whose next seq is
    /// `next_seq`: records at or above it were never acknowledged and are left out (cut
    /// from the files with `repair`, as are torn tails and left-over rewrites).
    pub fn open(
        db_dir: &Path,
        segment_bytes: u64,
        next_seq: u64,
        repair: bool,
    ) -> io::Result<Segments> {
        Segments::open_reading(db_dir, segment_bytes, next_seq, repair, &mut |_, _| {})
    }

    /// `open`, calling `each` with every record kept (seq and payload), in seq order:
    /// opening reads them all anyway, to check them.
    pub fn open_reading(
        db_dir: &Path,
        segment_bytes: u64,
        next_seq: u64,
        repair: bool,
        each: &mut dyn FnMut(u64, &str),
    ) -> io::Result<Segments> {
        let dir = db_dir.join(DIR);
        if repair {
            std::fs::create_dir_all(&dir)?;
        }
        let mut names = Vec::new();
        if dir.exists() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(seq) = segment::parse_name(&name) {
                    names.push(seq);
                } else if repair && name.ends_with(".tmp") {
                    // a rewrite cut short: the original is still in place
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        names.sort_unstable();
        let mut list: Vec<Arc<Segment>> = Vec::new();
        let mut cut = 0u64;
        for (i, &name_seq) in names.iter().enumerate() {
            let path = dir.join(segment::file_name(name_seq));
            let below = names.get(i + 1).copied().unwrap_or(u64::MAX).min(next_seq);
            if name_seq >= next_seq && i > 0 {
                // begun for events the database never took: nothing in it was acknowledged
                if repair {
                    std::fs::remove_file(&path)?;
                }
                continue;
            }
            let (seg, opened) = Segment::open_reading(&path, name_seq, below, repair, each)?;
            cut += opened.cut_bytes;
            list.push(Arc::new(seg));
        }
        if cut > 0 {
            tracing::warn!(
                bytes = cut,
                "cut the unacknowledged or torn end of the event segments (a crash during a write)"
            );
        }
        if repair && dir.exists() {
            segment::sync_dir(&dir)?;
        }
        Ok(Segments {
            dir,
            segment_bytes: segment_bytes.max(4096),
            list: RwLock::new(list),
            dirty: AtomicBool::new(false),
        })
    }

    fn list(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.list.read().unwrap_or_else(|p| p.into_inner())
    }

    fn list_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.list.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.list().iter().map(|s| s.len()).sum()
    }

    pub fn count(&self) -> usize {
        self.list().len()
    }

    /// The highest seq stored (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.list()
            .iter()
            .rev()
            .map(|s| s.last_seq())
            .find(|&s| s > 0)
            .unwrap_or(0)
    }

    /// The newest segment, rolled to a new file named `first_seq` when it is full (or
    /// when there is none). Writer only.
    fn active_for(&self, first_seq: u64) -> io::Result<(Arc<Segment>, bool)> {
        let last = self.list().last().cloned();
        if let Some(last) = last {
            if last.name_seq > first_seq && last.is_empty() {
                // begun for seqs a crash took back (see `open`): begin again below it
                self.list_mut().retain(|s| !Arc::ptr_eq(s, &last));
                std::fs::remove_file(&last.path)?;
            } else if last.len() < self.segment_bytes {
                return Ok((last, false));
            } else {
                // sealed: durable before anything goes to its successor
                last.sync()?;
            }
        }
        let seg = Arc::new(Segment::create(&self.dir, first_seq)?);
        self.list_mut().push(seg.clone());
        Ok((seg, true))
    }

    /// Appends records (seqs rising above every stored one) in one write. Writer only.
    pub fn append(&self, records: &[(u64, Vec<u8>)]) -> io::Result<Option<AppendMark>> {
        let Some(&(first, _)) = records.first() else {
            return Ok(None);
        };
        let (seg, created) = self.active_for(first)?;
        let (len, last_seq, n) = seg.mark();
        let mut framed = Vec::with_capacity(records.iter().map(|(_, p)| p.len() + 16).sum());
        let refs: Vec<(u64, &[u8])> = records.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        for (seq, payload) in &refs {
            frame(&mut framed, *seq, payload);
        }
        seg.append(&framed, &refs)?;
        // after the write: a flush that clears the flag before it would miss it
        self.dirty.store(true, Ordering::Release);
        Ok(Some(AppendMark {
            segment: seg,
            len,
            last_seq,
            records: n,
            created,
        }))
    }

    /// Takes back an append whose database batch failed. Writer only.
    pub fn abandon(&self, mark: AppendMark) {
        let AppendMark {
            segment,
            len,
            last_seq,
            records,
            created,
        } = mark;
        if let Err(e) = segment.cut_to(len, last_seq, records) {
            tracing::error!(error = %e, path = %segment.path.display(), "cannot cut back a failed append");
        }
        if created && records == 0 {
            let mut list = self.list_mut();
            list.retain(|s| !Arc::ptr_eq(s, &segment));
            let _ = std::fs::remove_file(&segment.path);
        }
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let last = self.list().last().cloned();
            if let Some(seg) = last {
                if let Err(e) = seg.sync() {
                    self.dirty.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The segment that would hold `seq`.
    fn holding(list: &[Arc<Segment>], seq: u64) -> Option<&Arc<Segment>> {
        let i = list.partition_point(|s| s.name_seq <= seq);
        i.checked_sub(1).map(|i| &list[i])
    }

    /// The record of each seq found, ascending (missing ones left out). Seqs close
    /// together (a topic's run) are read in one sequential pass, scattered ones one by one.
    pub fn get_many(&self, seqs: &[u64]) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let list: Vec<Arc<Segment>> = self.list().clone();
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Vec::with_capacity(sorted.len());
        let mut rest = &sorted[..];
        while let Some(&first) = rest.first() {
            let Some(seg) = Self::holding(&list, first) else {
                rest = &rest[1..];
                continue;
            };
            // the seqs this segment may hold
            let next_name = list
                .iter()
                .find(|s| s.name_seq > seg.name_seq)
                .map_or(u64::MAX, |s| s.name_seq);
            let n = rest.partition_point(|&s| s < next_name);
            let (mine, later) = rest.split_at(n);
            let span = mine[mine.len() - 1] - mine[0] + 1;
            if span <= 8 * mine.len() as u64 {
                let mut want = mine.iter().peekable();
                seg.scan(mine[0], mine[mine.len() - 1], |s, p| {
                    while want.next_if(|&&w| w < s).is_some() {}
                    if want.next_if(|&&w| w == s).is_some() {
                        out.push((s, p));
                    }
                    want.peek().is_some()
                })?;
            } else {
                for &seq in mine {
                    if let Some(p) = seg.get(seq)? {
                        out.push((seq, p));
                    }
                }
            }
            rest = later;
        }
        Ok(out)
    }

    /// Calls `f` with every record with seq in `from..=upto`, in order, until it returns
    /// false.
    pub fn scan(
        &self,
        from: u64,
        upto: u64,
        mut f: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> io::Result<()> {
        let list: Vec<Arc<Segment>> = self.list().clone();
        let start = list
            .partition_point(|s| s.name_seq <= from)
            .saturating_sub(1);
        let mut go_on = true;
        for seg in &list[start.min(list.len())..] {
            if seg.name_seq > upto || !go_on {
                break;
            }
            seg.scan(from, upto, |s, p| {
                go_on = f(s, p);
                go_on
            })?;
        }
        Ok(())
    }

    /// The last `n` records with seq at most `upto` that `keep` accepts, in order.
    pub fn tail(
        &self,
        n: usize,
        upto: u64,
        mut keep: impl FnMut(u64, &[u8]) -> bool,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let list: Vec<Arc<Segment>> = self.list().clone();
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for seg in list.iter().rev() {
            if out.len() >= n {
                break;
            }
            let mut found = std::collections::VecDeque::new();
            seg.scan(0, upto, |s, p| {
                if keep(s, &p) {
                    if found.len() == n - out.len() {
                        found.pop_front();
                    }
                    found.push_back((s, p));
                }
                true
            })?;
            let mut older: Vec<_> = found.into_iter().collect();
            older.append(&mut out);
            out = older;
        }
        Ok(out)
    }

    /// Summaries of the sealed segments (every one but the newest), oldest first.
    pub fn sealed(&self) -> Vec<SegmentInfo> {
        let list = self.list();
        let n = list.len().saturating_sub(1);
        list[..n].iter().map(|s| s.info()).collect()
    }

    /// Bytes of the newest segment (the one written to).
    pub fn active_bytes(&self) -> u64 {
        self.list().last().map(|s| s.len()).unwrap_or(0)
    }

    fn sealed_by_name(&self, name_seq: u64) -> Option<Arc<Segment>> {
        let list = self.list();
        let n = list.len().saturating_sub(1);
        list[..n].iter().find(|s| s.name_seq == name_seq).cloned()
    }

    /// Removes a sealed segment (the newest is never removed). Readers holding it read on.
    pub fn remove(&self, name_seq: u64) -> io::Result<bool> {
        let Some(seg) = self.sealed_by_name(name_seq) else {
            return Ok(false);
        };
        std::fs::remove_file(&seg.path)?;
        self.list_mut().retain(|s| !Arc::ptr_eq(s, &seg));
        segment::sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Rewrites a sealed segment with only the records `keep` accepts; returns the bytes
    /// freed.
    pub fn rewrite(&self, name_seq: u64, keep: impl FnMut(u64, &[u8]) -> bool) -> io::Result<u64> {
        let Some(seg) = self.sealed_by_name(name_seq) else {
            return Ok(0);
        };
        let before = seg.len();
        let new = seg.rewrite(&self.dir, keep)?;
        let after = new.as_ref().map(|s| s.len()).unwrap_or(0);
        let mut list = self.list_mut();
        match new {
            Some(new) => {
                if let Some(slot) = list.iter_mut().find(|s| Arc::ptr_eq(s, &seg)) {
                    *slot = Arc::new(new);
                }
            }
            None => list.retain(|s| !Arc::ptr_eq(s, &seg)),
        }
        Ok(before.saturating_sub(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::encode_record;

    fn records(seqs: std::ops::RangeInclusive<u64>, topic: &str) -> Vec<(u64, Vec<u8>)> {
        seqs.map(|s| (s, encode_record(s, topic, "m", &"x".repeat(100))))
            .collect()
    }

    #[test]
    fn rolls_reads_across_files_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 4096, 1, true).unwrap();
        for chunk in 0..20u64 {
            let from = chunk * 10 + 1;
            segs.append(&records(from..=from + 9, "a")).unwrap();
        }
        segs.sync().unwrap();
        assert!(segs.count() > 3, "{} segments", segs.count());
        let dense: Vec<u64> = (50..=120).rev().collect();
        let got = segs.get_many(&dense).unwrap();
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (50..=120).collect::<Vec<_>>()
        );
        let got = segs.get_many(&[200, 1, 77, 201, 77]).unwrap();
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 77, 200]
        );
        let mut seen = Vec::new();
        segs.scan(95, 130, |s, _| {
            seen.push(s);
            true
        })
        .unwrap();
        assert_eq!(seen, (95..=130).collect::<Vec<_>>());
        let tail = segs.tail(15, 190, |s, _| s % 2 == 0).unwrap();
        assert_eq!(tail.first().map(|t| t.0), Some(162));
        assert_eq!(tail.last().map(|t| t.0), Some(190));
        let n = segs.count();
        drop(segs);
        // the database took seqs up to 150 only: the rest is cut, later files removed
        let segs = Segments::open(dir.path(), 4096, 151, true).unwrap();
        assert_eq!(segs.last_seq(), 150);
        assert!(segs.count() < n);
        assert!(segs.get_many(&[151]).unwrap().is_empty());
        segs.append(&records(151..=151, "b")).unwrap();
        assert_eq!(segs.get_many(&[151]).unwrap().len(), 1);
    }

    #[test]
    fn removes_and_rewrites_only_sealed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 4096, 1, true).unwrap();
        for chunk in 0..10u64 {
            let from = chunk * 10 + 1;
            segs.append(&records(from..=from + 9, "a")).unwrap();
        }
        let sealed = segs.sealed();
        assert_eq!(sealed.len(), segs.count() - 1);
        let first = sealed[0].name_seq;
        let active = segs.count();
        let freed = segs.rewrite(sealed[1].name_seq, |s, _| s % 2 == 0).unwrap();
        assert!(freed > 0);
        assert!(segs.remove(first).unwrap());
        assert_eq!(segs.count(), active - 1);
        assert!(segs.get_many(&[1]).unwrap().is_empty());
        let newest = segs.list().last().unwrap().name_seq;
        assert!(
            !segs.remove(newest).unwrap(),
            "the newest segment is never removed"
        );
        // a failed batch takes its append back
        let before = segs.last_seq();
        let mark = segs.append(&records(101..=105, "z")).unwrap().unwrap();
        segs.abandon(mark);
        assert_eq!(segs.last_seq(), before);
        assert!(segs.get_many(&[101]).unwrap().is_empty());
    }
}
