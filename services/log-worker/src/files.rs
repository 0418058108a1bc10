//! `<log_dir>/<service>.jsonl`, appended in batches with one fsync per file
//! per batch. Every line carries its `LOGS` stream sequence; before a batch
//! is written the file is locked (`flock`, so several worker processes can
//! share the directory) and whatever others appended since we last looked
//! is read, so a sequence already in the file is never written again: a
//! worker killed between writing and acking does not cause a duplicate when
//! the batch is redelivered. A torn last line left by a killed writer is cut
//! off before appending.

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;

/// How many recent sequences are remembered per file. Redeliveries are of
/// recent, unacknowledged messages, far fewer than this.
const REMEMBERED: usize = 500_000;

#[derive(Debug, Default)]
struct FileState {
    /// Bytes of the file already read (always at a line boundary).
    offset: u64,
    seqs: BTreeSet<u64>,
}

#[derive(Debug)]
pub struct Files {
    dir: PathBuf,
    states: HashMap<String, FileState>,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

impl Files {
    pub fn new(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            states: HashMap::new(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.jsonl"))
    }

    /// Appends the `(seq, line)` pairs whose seq is not in the file yet;
    /// returns the seqs written. `name` must be a checked file stem.
    pub fn append(&mut self, name: &str, lines: &[(u64, String)]) -> io::Result<Vec<u64>> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(self.path(name))?;
        let mut file: Flock<File> =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        let state = self.states.entry(name.to_owned()).or_default();
        catch_up(&mut file, state)?;

        let mut out = String::new();
        let mut written = Vec::new();
        for (seq, line) in lines {
            if state.seqs.insert(*seq) {
                out.push_str(line);
                out.push('\n');
                written.push(*seq);
            }
        }
        if !out.is_empty() {
            file.write_all(out.as_bytes())?;
            file.sync_data()?;
            state.offset += out.len() as u64;
        }
        while state.seqs.len() > REMEMBERED {
            state.seqs.pop_first();
        }
        Ok(written)
    }
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

/// Reads what was appended since `state.offset`, remembering its seqs, and
/// cuts off a torn last line.
fn catch_up(file: &mut File, state: &mut FileState) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len < state.offset {
        // Truncated or replaced behind our back: start over.
        *state = FileState::default();
    }
    if len == state.offset {
        return Ok(());
    }
    file.seek(SeekFrom::Start(state.offset))?;
    let mut buf = Vec::with_capacity(usize::try_from(len - state.offset).unwrap_or(0));
    file.read_to_end(&mut buf)?;
    let mut consumed = 0usize;
    for line in buf.split_inclusive(|b| *b == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        consumed += line.len();
        if let Some(seq) = seq_of(line) {
            state.seqs.insert(seq);
        }
    }
    state.offset += consumed as u64;
    if consumed < buf.len() {
        // A writer died mid-line while holding the lock; its batch was not
        // acked and will come again. Drop the fragment.
        file.set_len(state.offset)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> (u64, String) {
        (seq, format!(r#"{{"message":"m{seq}","seq":{seq}}}"#))
    }

    fn seqs_in(path: &std::path::Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<SeqOnly>(l).unwrap().seq)
            .collect()
    }

    #[test]
    fn writes_each_seq_once_even_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Files::new(dir.path().to_owned()).unwrap();
        let mut b = Files::new(dir.path().to_owned()).unwrap();
        assert_eq!(
            a.append("math", &[line(1), line(2), line(2)]).unwrap(),
            [1, 2]
        );
        // Another process (b) sees what a wrote.
        assert_eq!(b.append("math", &[line(2), line(3)]).unwrap(), [3]);
        assert_eq!(a.append("math", &[line(3), line(1), line(4)]).unwrap(), [4]);
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
        let mut a = Files::new(dir.path().to_owned()).unwrap();
        a.append("svc", &[line(1)]).unwrap();
        // A writer killed mid-line.
        let mut f = OpenOptions::new().append(true).open(a.path("svc")).unwrap();
        f.write_all(br#"{"message":"m2","se"#).unwrap();
        let mut b = Files::new(dir.path().to_owned()).unwrap();
        assert_eq!(b.append("svc", &[line(2)]).unwrap(), [2]);
        assert_eq!(seqs_in(&b.path("svc")), [1, 2]);
    }
}
