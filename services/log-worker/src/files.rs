//! `<log_dir>/<service>.jsonl`, appended in batches with one fsync per file
//! per batch, rotated by size. Every line carries its `LOGS` stream sequence.
//!
//! **Locking.** Before a batch is written the file is locked (`flock`, so
//! several worker processes can share the directory); a lock taken on a file
//! that was rotated away meanwhile is dropped and the new file locked
//! instead.
//!
//! **Duplicates.** Under the lock, whatever others appended since we last
//! looked is read, so a sequence already in the file is never written again:
//! a worker killed between writing and acking does not cause a duplicate when
//! the batch is redelivered. The sequences are not in order in a file (a
//! redelivered message comes after later ones), so a set of recent ones is
//! kept, not a high-water mark.
//!
//! **Bounded catch-up.** Reading is done in fixed-size chunks and never goes
//! back more than [`Limits::catch_up_bytes`] from the end (across the newest
//! rotated files when the current one is shorter): memory and start-up time
//! do not grow with the files. Redeliveries are of recent, unacknowledged
//! messages, so a sequence further back than that is not looked for.
//!
//! **Torn lines.** A line without its newline at the end of the current file
//! (a writer that died mid-write, or a write that failed half way) is cut off
//! before appending: its batch was not acked and comes again. In a rotated
//! file (never written again) it is skipped.
//!
//! **Rotation.** When the next line would take the file past
//! [`Limits::max_file_bytes`], `x.jsonl` becomes `x.1.jsonl` (`x.1` becomes
//! `x.2`, ..., and the oldest beyond [`Limits::max_files`] is deleted) and a
//! new `x.jsonl` is started. A single line longer than the limit still goes
//! into a file of its own.

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::PathBuf;

/// How many recent sequences are remembered per file. Redeliveries are of
/// recent, unacknowledged messages, far fewer than this.
const REMEMBERED: usize = 500_000;
/// Bytes read at once while catching up.
const CHUNK: usize = 64 * 1024;
/// A line longer than this is not parsed while catching up (no record is:
/// a NATS message is at most a few MiB even escaped).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Sizes the files are kept to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A file is rotated before it would grow past this.
    pub max_file_bytes: u64,
    /// Files kept per name, the current one included (at least 1).
    pub max_files: usize,
    /// How far back from the end catch-up reads.
    pub catch_up_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_files: 5,
            catch_up_bytes: 16 << 20,
        }
    }
}

/// What [`Files::append`] did with a batch for one file.
#[derive(Debug, Default)]
pub struct Appended {
    /// Sequences written now.
    pub written: Vec<u64>,
    /// Sequences not in the file: they were not written because of `error`.
    pub unwritten: Vec<u64>,
    pub error: Option<io::Error>,
}

#[derive(Debug, Default)]
struct FileState {
    /// `(dev, inode)` of the file `offset` is in.
    id: Option<(u64, u64)>,
    /// Bytes of the file already read (always at a line boundary).
    offset: u64,
    seqs: BTreeSet<u64>,
}

#[derive(Debug)]
pub struct Files {
    dir: PathBuf,
    limits: Limits,
    states: HashMap<String, FileState>,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

impl Files {
    pub fn new(dir: PathBuf, limits: Limits) -> io::Result<Self> {
        if limits.max_files == 0 || limits.max_file_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_files and max_file_bytes must be at least 1",
            ));
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            limits,
            states: HashMap::new(),
        })
    }

    /// `<dir>/<name>.jsonl`, the file being written.
    pub fn path(&self, name: &str) -> PathBuf {
        self.rotated_path(name, 0)
    }

    /// `<dir>/<name>.<n>.jsonl`: the `n`th newest rotated file (`n = 0` is
    /// the current one).
    pub fn rotated_path(&self, name: &str, n: usize) -> PathBuf {
        match n {
            0 => self.dir.join(format!("{name}.jsonl")),
            n => self.dir.join(format!("{name}.{n}.jsonl")),
        }
    }

    /// Appends the `(seq, line)` pairs whose seq is not in the file yet,
    /// rotating as needed. `name` must be a checked file stem. On an I/O
    /// error, what was written before it stays written (and is reported);
    /// the rest is in `unwritten`.
    pub fn append(&mut self, name: &str, lines: &[(u64, String)]) -> Appended {
        let mut done = Appended::default();
        let mut next = 0;
        if let Err(err) = self.append_from(name, lines, &mut next, &mut done.written) {
            let state = self.states.entry(name.to_owned()).or_default();
            let mut seen = HashSet::new();
            done.unwritten = lines[next..]
                .iter()
                .map(|(seq, _)| *seq)
                .filter(|seq| !state.seqs.contains(seq) && seen.insert(*seq))
                .collect();
            done.error = Some(err);
        }
        if let Some(state) = self.states.get_mut(name) {
            while state.seqs.len() > REMEMBERED {
                state.seqs.pop_first();
            }
        }
        done
    }

    /// Appends `lines[*next..]`, advancing `next` past what is in the file.
    fn append_from(
        &mut self,
        name: &str,
        lines: &[(u64, String)],
        next: &mut usize,
        written: &mut Vec<u64>,
    ) -> io::Result<()> {
        let mut file = self.open_locked(name)?;
        loop {
            self.catch_up(name, &file)?;
            let max = self.limits.max_file_bytes;
            let state = self.states.entry(name.to_owned()).or_default();
            let mut out = String::new();
            let mut seqs = Vec::new();
            let mut i = *next;
            let mut full = false;
            while let Some((seq, line)) = lines.get(i) {
                if state.seqs.contains(seq) || seqs.contains(seq) {
                    i += 1;
                    continue;
                }
                let size = state.offset + out.len() as u64;
                if size > 0 && size + line.len() as u64 + 1 > max {
                    full = true;
                    break;
                }
                out.push_str(line);
                out.push('\n');
                seqs.push(*seq);
                i += 1;
            }
            if !out.is_empty() {
                let wrote = file
                    .write_all(out.as_bytes())
                    .and_then(|()| file.sync_data());
                if let Err(err) = wrote {
                    // Leave no part of the batch behind: it comes again.
                    let _ = file.set_len(state.offset);
                    return Err(err);
                }
                state.offset += out.len() as u64;
                state.seqs.extend(&seqs);
                written.extend(seqs);
            }
            *next = i;
            if !full {
                return Ok(());
            }
            self.rotate(name)?;
            drop(file);
            file = self.open_locked(name)?;
        }
    }

    /// Opens `<name>.jsonl` and locks it, making sure the lock is on the file
    /// that has the name now (another process may rotate it meanwhile).
    fn open_locked(&self, name: &str) -> io::Result<Flock<File>> {
        let path = self.path(name);
        for _ in 0..100 {
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            let file =
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
            let held = file.metadata()?;
            match std::fs::metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(file),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other(format!(
            "{} kept being replaced while it was locked",
            path.display()
        )))
    }

    /// `x.jsonl` → `x.1.jsonl` → ... ; the oldest beyond `max_files` goes.
    /// Called with the current file locked.
    fn rotate(&self, name: &str) -> io::Result<()> {
        let last = self.limits.max_files - 1;
        match std::fs::remove_file(self.rotated_path(name, last)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        for n in (0..last).rev() {
            match std::fs::rename(self.rotated_path(name, n), self.rotated_path(name, n + 1)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        tracing::info!(
            file = name,
            kept = self.limits.max_files,
            "log file rotated"
        );
        Ok(())
    }

    /// Reads what was appended to the (locked) current file since we last
    /// looked, at most `catch_up_bytes` back from its end, remembering the
    /// seqs; cuts off a torn last line. A file we have not read before (first
    /// look, or rotated by another process) is read from its end back, and
    /// then the newest rotated files for what the budget has left.
    fn catch_up(&mut self, name: &str, file: &File) -> io::Result<()> {
        let window = self.limits.catch_up_bytes;
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        let mut len = meta.len();
        let state = self.states.entry(name.to_owned()).or_default();
        let new_file = state.id != Some(id);
        if new_file || len < state.offset {
            // Another file, or truncated behind our back: read it afresh
            // (the seqs we know stay known).
            state.id = Some(id);
            state.offset = 0;
        }
        if len > state.offset {
            len = cut_torn_line(file, state.offset, len)?;
        }
        scan(file, state.offset, len, window, &mut state.seqs)?;
        state.offset = len;
        if new_file {
            let mut budget = window.saturating_sub(len);
            for n in 1..self.limits.max_files {
                if budget == 0 {
                    break;
                }
                let older = match File::open(self.rotated_path(name, n)) {
                    Ok(f) => f,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                    Err(err) => return Err(err),
                };
                let len = older.metadata()?.len();
                let state = self.states.entry(name.to_owned()).or_default();
                scan(&older, 0, len, budget, &mut state.seqs)?;
                budget = budget.saturating_sub(len);
            }
        }
        Ok(())
    }
}

/// If the bytes of `file` from `floor` to `len` do not end with a newline,
/// truncates the file to the end of its last complete line (never below
/// `floor`, a line boundary) and returns the new length.
fn cut_torn_line(file: &File, floor: u64, len: u64) -> io::Result<u64> {
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    let start = line_start(file, floor, len)?;
    // A writer died mid-line while holding the lock, or a write failed half
    // way; its batch was not acked and will come again. Drop the fragment.
    tracing::warn!(
        torn_bytes = len - start,
        "cutting off a torn last line in a log file"
    );
    file.set_len(start)?;
    Ok(start)
}

/// Where the line that ends at `end` starts: just after the last newline
/// before it, or `floor`. Reads backwards in chunks.
fn line_start(file: &File, floor: u64, end: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = end;
    while pos > floor {
        let n = usize::try_from(pos - floor).map_or(CHUNK, |d| d.min(CHUNK));
        pos -= n as u64;
        file.read_exact_at(&mut buf[..n], pos)?;
        if let Some(at) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(pos + at as u64 + 1);
        }
    }
    Ok(floor)
}

/// Remembers the seqs of the complete lines of `file` between `from` (a
/// line boundary) and `to`, reading at most `window` bytes back from `to`
/// (a line cut by that start is skipped), in chunks. A last line without
/// its newline is skipped.
fn scan(file: &File, from: u64, to: u64, window: u64, seqs: &mut BTreeSet<u64>) -> io::Result<()> {
    let mut pos = from.max(to.saturating_sub(window));
    // Starting mid-file: the first line counts only if the byte before is a
    // newline, so start there and skip through the first newline.
    let mut skipping = pos > from;
    if skipping {
        pos -= 1;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    while pos < to {
        let want = usize::try_from(to - pos).map_or(CHUNK, |d| d.min(CHUNK));
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            let complete = piece.last() == Some(&b'\n');
            if skipping {
                skipping = !complete;
                continue;
            }
            if !too_long {
                if line.len() + piece.len() > MAX_LINE {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(piece);
                }
            }
            if complete {
                if !too_long && let Some(seq) = seq_of(&line) {
                    seqs.insert(seq);
                }
                line.clear();
                too_long = false;
            }
        }
    }
    Ok(())
}

/// The `seq` of a line. Lines we write end with `"seq":<n>}`, so the tail
/// is read first; anything else is parsed in full.
fn seq_of(line: &[u8]) -> Option<u64> {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    if let Some(body) = trimmed.strip_suffix(b"}")
        && let Some(at) = body.windows(6).rposition(|w| w == b"\"seq\":")
        && let Ok(text) = std::str::from_utf8(&body[at + 6..])
        && let Ok(seq) = text.trim().parse()
    {
        return Some(seq);
    }
    serde_json::from_slice::<SeqOnly>(line).ok().map(|s| s.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn line(seq: u64) -> (u64, String) {
        (seq, format!(r#"{{"message":"m{seq}","seq":{seq}}}"#))
    }

    fn seqs_in(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<SeqOnly>(l).unwrap().seq)
            .collect()
    }

    fn files(dir: &Path, limits: Limits) -> Files {
        Files::new(dir.to_owned(), limits).unwrap()
    }

    fn written(files: &mut Files, name: &str, lines: &[(u64, String)]) -> Vec<u64> {
        let done = files.append(name, lines);
        assert!(done.error.is_none(), "{:?}", done.error);
        done.written
    }

    #[test]
    fn writes_each_seq_once_even_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = files(dir.path(), Limits::default());
        let mut b = files(dir.path(), Limits::default());
        assert_eq!(
            written(&mut a, "math", &[line(1), line(2), line(2)]),
            [1, 2]
        );
        // Another process (b) sees what a wrote.
        assert_eq!(written(&mut b, "math", &[line(2), line(3)]), [3]);
        assert_eq!(written(&mut a, "math", &[line(3), line(1), line(4)]), [4]);
        assert_eq!(seqs_in(&a.path("math")), [1, 2, 3, 4]);
    }

    #[test]
    fn seq_from_the_tail_or_the_whole_line() {
        assert_eq!(seq_of(br#"{"message":"m","seq":42}"#), Some(42));
        assert_eq!(seq_of(b"{\"message\":\"m\",\"seq\":42}\n"), Some(42));
        assert_eq!(
            seq_of(br#"{"seq":7,"subject":"x","reason":"r","body":"b"}"#),
            Some(7)
        );
        assert_eq!(
            seq_of(br#"{"message":"\"seq\":9 inside","seq":3}"#),
            Some(3)
        );
        assert_eq!(seq_of(b"garbage"), None);
    }

    #[test]
    fn a_torn_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = files(dir.path(), Limits::default());
        written(&mut a, "svc", &[line(1)]);
        // A writer killed mid-line.
        let mut f = OpenOptions::new().append(true).open(a.path("svc")).unwrap();
        f.write_all(br#"{"message":"m2","se"#).unwrap();
        let mut b = files(dir.path(), Limits::default());
        assert_eq!(written(&mut b, "svc", &[line(2)]), [2]);
        assert_eq!(seqs_in(&b.path("svc")), [1, 2]);
        // The same writer (a) tears a line it wrote itself: cut off too.
        let mut f = OpenOptions::new().append(true).open(a.path("svc")).unwrap();
        f.write_all(br#"{"message":"m3"#).unwrap();
        assert_eq!(written(&mut a, "svc", &[line(2), line(3)]), [3]);
        assert_eq!(seqs_in(&a.path("svc")), [1, 2, 3]);
    }

    #[test]
    fn a_torn_line_longer_than_a_chunk_and_the_window_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            catch_up_bytes: 1000,
            ..Limits::default()
        };
        let mut a = files(dir.path(), limits);
        written(&mut a, "svc", &[line(1), line(2)]);
        let mut f = OpenOptions::new().append(true).open(a.path("svc")).unwrap();
        f.write_all(format!(r#"{{"message":"{}"#, "x".repeat(3 * CHUNK)).as_bytes())
            .unwrap();
        let mut b = files(dir.path(), limits);
        // 2 is still found (the torn line is cut first, then the tail read).
        assert_eq!(written(&mut b, "svc", &[line(2), line(3)]), [3]);
        assert_eq!(seqs_in(&b.path("svc")), [1, 2, 3]);
    }

    #[test]
    fn catch_up_reads_only_the_tail_of_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        // 200,000 lines (~6 MiB), seqs 1..=200_000, then a torn line.
        let mut text = String::new();
        for seq in 1..=200_000u64 {
            text.push_str(&line(seq).1);
            text.push('\n');
        }
        text.push_str(r#"{"message":"torn","seq":99"#);
        std::fs::write(&path, &text).unwrap();
        let limits = Limits {
            catch_up_bytes: 64 * 1024,
            ..Limits::default()
        };
        let mut f = files(dir.path(), limits);
        // The last lines are known (no duplicates); the torn one is cut off.
        assert_eq!(
            written(
                &mut f,
                "big",
                &[line(199_999), line(200_000), line(200_001)]
            ),
            [200_001]
        );
        // Only the lines within the window were read (plus the one
        // written), not 200,000.
        let per_line = line(199_999).1.len() as u64 + 1;
        let in_window = limits.catch_up_bytes / per_line;
        let state = &f.states["big"];
        assert_eq!(state.seqs.len() as u64, in_window + 1);
        assert_eq!(state.seqs.first(), Some(&(200_001 - in_window)));
        let on_disk = seqs_in(&f.path("big"));
        assert_eq!(on_disk.len(), 200_001);
        assert_eq!(on_disk.last(), Some(&200_001));
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = line(10).1.len() as u64 + 1;
        let limits = Limits {
            max_file_bytes: 3 * one,
            max_files: 3,
            ..Limits::default()
        };
        let mut f = files(dir.path(), limits);
        let batch: Vec<_> = (10..17).map(line).collect();
        assert_eq!(written(&mut f, "svc", &batch), (10..17).collect::<Vec<_>>());
        assert_eq!(seqs_in(&f.rotated_path("svc", 2)), [10, 11, 12]);
        assert_eq!(seqs_in(&f.rotated_path("svc", 1)), [13, 14, 15]);
        assert_eq!(seqs_in(&f.path("svc")), [16]);
        // Two more files' worth: the oldest go, nothing beyond max_files.
        let batch: Vec<_> = (17..23).map(line).collect();
        written(&mut f, "svc", &batch);
        assert_eq!(seqs_in(&f.rotated_path("svc", 2)), [16, 17, 18]);
        assert_eq!(seqs_in(&f.rotated_path("svc", 1)), [19, 20, 21]);
        assert_eq!(seqs_in(&f.path("svc")), [22]);
        assert!(!f.rotated_path("svc", 3).exists());
        // A line longer than the limit still gets written, alone.
        let long = (
            23,
            format!(r#"{{"message":"{}","seq":23}}"#, "x".repeat(200)),
        );
        written(&mut f, "svc", &[long]);
        assert_eq!(seqs_in(&f.path("svc")), [23]);
        assert_eq!(seqs_in(&f.rotated_path("svc", 1)), [22]);
    }

    #[test]
    fn duplicates_are_found_across_rotation_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let one = line(10).1.len() as u64 + 1;
        let limits = Limits {
            max_file_bytes: 2 * one,
            max_files: 4,
            ..Limits::default()
        };
        let mut a = files(dir.path(), limits);
        written(&mut a, "svc", &(10..15).map(line).collect::<Vec<_>>());
        // The current file holds only 14; 10..13 are in rotated files.
        assert_eq!(seqs_in(&a.path("svc")), [14]);
        // A new process catches up through the rotated files.
        let mut b = files(dir.path(), limits);
        assert_eq!(
            written(&mut b, "svc", &[line(12), line(13), line(15)]),
            [15]
        );
        // b rotated (14, 15 filled the file); a notices the new file and
        // still skips what b wrote.
        assert_eq!(written(&mut b, "svc", &[line(16)]), [16]);
        assert_eq!(
            written(&mut a, "svc", &[line(15), line(16), line(17)]),
            [17]
        );
        let mut all: Vec<u64> = (0..4)
            .flat_map(|n| seqs_in(&a.rotated_path("svc", n)))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (10..18).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path(), Limits::default());
        written(&mut f, "svc", &[line(1)]);
        let path = f.path("svc");
        std::fs::rename(&path, dir.path().join("kept")).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let done = f.append("svc", &[line(1), line(2), line(3), line(2)]);
        assert_eq!(
            done.error.map(|e| e.raw_os_error()),
            Some(Some(nix::libc::ENOSPC))
        );
        assert!(done.written.is_empty());
        // 1 is known to be written already; 2 and 3 are not.
        assert_eq!(done.unwritten, [2, 3]);
        // The disk has room again: they are written.
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(dir.path().join("kept"), &path).unwrap();
        assert_eq!(written(&mut f, "svc", &[line(2), line(3)]), [2, 3]);
        assert_eq!(seqs_in(&path), [1, 2, 3]);
    }

    #[test]
    fn bad_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for limits in [
            Limits {
                max_files: 0,
                ..Limits::default()
            },
            Limits {
                max_file_bytes: 0,
                ..Limits::default()
            },
        ] {
            let err = Files::new(dir.path().to_owned(), limits).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
