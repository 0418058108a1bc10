//! The unsynced state of one regular file: its logical size, how much of the
//! backing (durable) file is still visible, and the pages written since the
//! last fsync. Nothing here touches the backing file except through the
//! `read_backing` callbacks and [`DirtyFile::sync_to`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// Granularity of the in-memory copy of unsynced data.
pub(crate) const PAGE: u64 = 4096;

#[derive(Debug)]
pub(crate) struct DirtyFile {
    /// The size readers see.
    size: u64,
    /// Backing bytes at and past this offset are gone (an unsynced truncate
    /// cut them): they read as zeros unless a dirty page covers them.
    valid: u64,
    /// Page index -> the page's bytes (always `PAGE` long; bytes past `size`
    /// are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Bytes written or cut since the last sync (what a power off drops).
    unsynced_bytes: u64,
}

/// Reads from the backing file, at most `buf.len()` bytes at `offset`; short
/// at end of file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl DirtyFile {
    /// A clean view of a backing file of `len` bytes.
    pub(crate) fn new(len: u64) -> Self {
        DirtyFile {
            size: len,
            valid: len,
            pages: BTreeMap::new(),
            unsynced_bytes: 0,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes
    }

    /// The backing file's bytes as this view sees them (clipped to `valid`,
    /// zeros past it), into `buf` at file offset `offset`.
    fn read_backing_into(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.fill(0);
        if offset < self.valid {
            let n = usize::try_from(self.valid - offset)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            read_full(file, &mut buf[..n], offset)?;
        }
        Ok(())
    }

    /// Up to `len` bytes at `offset` (short at the logical end of file).
    pub(crate) fn read(&self, file: &File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(u64::from(len)));
        let n = usize::try_from(end - offset).map_err(|_| io::Error::from_raw_os_error(22))?;
        let mut out = vec![0u8; n];
        self.read_backing_into(file, &mut out, offset)?;
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        for (&idx, page) in self.pages.range(first..=last) {
            let page_start = idx * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            let src = &page[(from - page_start) as usize..(to - page_start) as usize];
            out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
        Ok(out)
    }

    fn page_mut(&mut self, file: &File, idx: u64) -> io::Result<&mut Box<[u8]>> {
        if !self.pages.contains_key(&idx) {
            let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
            self.read_backing_into(file, &mut page, idx * PAGE)?;
            // Bytes past the logical size read as zero.
            let start = idx * PAGE;
            if self.size < start + PAGE {
                let keep = self.size.saturating_sub(start) as usize;
                page[keep..].fill(0);
            }
            self.pages.insert(idx, page);
        }
        self.pages
            .get_mut(&idx)
            .ok_or_else(|| io::Error::from_raw_os_error(5))
    }

    /// Writes `data` at `offset` into memory only.
    pub(crate) fn write(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(27))?; // EFBIG
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let page_start = idx * PAGE;
            let to = end.min(page_start + PAGE);
            let page = self.page_mut(file, idx)?;
            page[(pos - page_start) as usize..(to - page_start) as usize]
                .copy_from_slice(&data[(pos - offset) as usize..(to - offset) as usize]);
            pos = to;
        }
        self.size = self.size.max(end);
        self.unsynced_bytes += data.len() as u64;
        Ok(())
    }

    /// Sets the logical size (truncate or extend), in memory only.
    pub(crate) fn set_size(&mut self, new_size: u64) {
        if new_size < self.size {
            let first_gone = new_size.div_ceil(PAGE);
            self.pages.retain(|&idx, _| idx < first_gone);
            if !new_size.is_multiple_of(PAGE)
                && let Some(page) = self.pages.get_mut(&(new_size / PAGE))
            {
                page[(new_size % PAGE) as usize..].fill(0);
            }
            self.valid = self.valid.min(new_size);
            self.unsynced_bytes += self.size - new_size;
        } else {
            self.unsynced_bytes += new_size - self.size;
        }
        self.size = new_size;
    }

    /// Makes the backing file equal to this view (the file's fsync).
    pub(crate) fn sync_to(&mut self, file: &File) -> io::Result<()> {
        let backing_len = file.metadata()?.len();
        if backing_len > self.valid {
            file.set_len(self.valid)?;
        }
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            if start >= self.size {
                continue;
            }
            let n = (self.size - start).min(PAGE) as usize;
            file.write_all_at(&page[..n], start)?;
        }
        file.set_len(self.size)?;
        self.pages.clear();
        self.valid = self.size;
        self.unsynced_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write as _;

    fn backing(content: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn writes_overlay_backing_until_synced() {
        let f = backing(b"hello world");
        let mut d = DirtyFile::new(11);
        d.write(&f, 6, b"there, everyone").unwrap();
        assert_eq!(d.read(&f, 0, 100).unwrap(), b"hello there, everyone");
        assert_eq!(f.metadata().unwrap().len(), 11, "backing untouched");
        d.sync_to(&f).unwrap();
        let mut buf = vec![0; 64];
        let n = read_full(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"hello there, everyone");
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_old_bytes() {
        let f = backing(&[7u8; 10_000]);
        let mut d = DirtyFile::new(10_000);
        d.set_size(100);
        d.write(&f, 9000, b"x").unwrap();
        let all = d.read(&f, 0, 20_000).unwrap();
        assert_eq!(all.len(), 9001);
        assert!(all[..100].iter().all(|&b| b == 7));
        assert!(all[100..9000].iter().all(|&b| b == 0));
        assert_eq!(all[9000], b'x');
        d.sync_to(&f).unwrap();
        let mut buf = vec![1u8; 9001];
        read_full(&f, &mut buf, 0).unwrap();
        assert_eq!(buf, all);
        assert_eq!(f.metadata().unwrap().len(), 9001);
    }

    #[test]
    fn shrinking_inside_a_dirty_page_zeroes_its_tail() {
        let f = backing(b"");
        let mut d = DirtyFile::new(0);
        d.write(&f, 0, b"abcdef").unwrap();
        d.set_size(2);
        d.set_size(6);
        assert_eq!(d.read(&f, 0, 10).unwrap(), b"ab\0\0\0\0");
    }
}
