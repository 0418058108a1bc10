//! Real FUSE mounts: what survives `power_off` and what does not.
//!
//! Needs /dev/fuse and fusermount3 (`just setup` installs Debian's fuse3);
//! without them every test fails with a message saying so, never skips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use lazyfs::{LazyFs, Mode, Mounted};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A mount over a temp backing dir; unmounts (field order) before the temp
/// dir goes.
struct Fixture {
    fs: Mounted,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(mode: Mode) -> Fixture {
        lazyfs::preflight().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let fs = LazyFs::mount(dir.path().join("disk"), dir.path().join("mnt"), mode)
            .unwrap_or_else(|e| panic!("{e}"));
        Fixture { fs, _dir: dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.fs.mountpoint().join(rel)
    }

    fn disk(&self, rel: &str) -> PathBuf {
        self.fs.backing().join(rel)
    }
}

fn write_file(path: &Path, data: &[u8], sync: Option<bool>) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    match sync {
        Some(true) => f.sync_all().unwrap(),
        Some(false) => f.sync_data().unwrap(),
        None => {}
    }
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn unsynced_writes_are_gone_after_power_off() {
    let fx = Fixture::new(Mode::Lazy);
    write_file(&fx.path("a"), b"synced", Some(true));
    // Appended and closed, never fsynced.
    let mut f = OpenOptions::new().append(true).open(fx.path("a")).unwrap();
    f.write_all(b" and not").unwrap();
    drop(f);
    write_file(&fx.path("b"), b"never synced", None);
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"synced and not");
    assert_eq!(fs::read(fx.path("b")).unwrap(), b"never synced");
    assert_eq!(
        fs::read(fx.disk("b")).unwrap(),
        b"",
        "nothing reached the disk"
    );
    assert_eq!(fx.fs.unsynced_bytes(), 20);

    let report = fx.fs.power_off();
    println!("{report}: {:?}", report.files);
    assert_eq!(report.bytes, 20);
    assert_eq!(report.files.len(), 2);
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"synced");
    // Lazy mode: the create itself was durable, its data not.
    assert_eq!(fs::read(fx.path("b")).unwrap(), b"");
    assert_eq!(fs::metadata(fx.path("a")).unwrap().len(), 6);
    assert_eq!(fx.fs.unsynced_bytes(), 0);
}

#[test]
fn fsync_and_fdatasync_make_writes_survive() {
    let fx = Fixture::new(Mode::Lazy);
    write_file(&fx.path("fsync"), b"kept by fsync", Some(true));
    write_file(&fx.path("fdatasync"), b"kept by fdatasync", Some(false));
    let report = fx.fs.power_off();
    assert_eq!(report.bytes, 0, "{report}");
    assert_eq!(fs::read(fx.path("fsync")).unwrap(), b"kept by fsync");
    assert_eq!(
        fs::read(fx.path("fdatasync")).unwrap(),
        b"kept by fdatasync"
    );
    assert_eq!(fs::read(fx.disk("fsync")).unwrap(), b"kept by fsync");
}

#[test]
fn o_sync_and_o_dsync_writes_are_durable_at_once() {
    let fx = Fixture::new(Mode::Lazy);
    for (name, flag) in [("osync", libc_o_sync()), ("odsync", libc_o_dsync())] {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(flag)
            .open(fx.path(name))
            .unwrap();
        f.write_all(name.as_bytes()).unwrap();
        f.write_all(b"!").unwrap();
        // No fsync, not even a close before the power off.
        let report = fx.fs.power_off();
        assert_eq!(report.bytes, 0, "{name}: {report}");
        drop(f);
        assert_eq!(
            fs::read(fx.path(name)).unwrap(),
            format!("{name}!").as_bytes()
        );
    }
    let counts = fx.fs.op_counts();
    assert!(
        counts.get("write (O_SYNC)").copied().unwrap_or(0) >= 4,
        "{counts:?}"
    );
}

fn libc_o_sync() -> i32 {
    nix_flags::O_SYNC
}

fn libc_o_dsync() -> i32 {
    nix_flags::O_DSYNC
}

/// Linux's values (x86_64 and aarch64 alike).
mod nix_flags {
    pub(crate) const O_DSYNC: i32 = 0o10000;
    pub(crate) const O_SYNC: i32 = 0o4010000;
}

#[test]
fn unsynced_truncates_and_extensions_are_undone() {
    let fx = Fixture::new(Mode::Lazy);
    write_file(&fx.path("t"), &[7u8; 10_000], Some(true));
    let f = OpenOptions::new().write(true).open(fx.path("t")).unwrap();
    f.set_len(10).unwrap();
    assert_eq!(fs::metadata(fx.path("t")).unwrap().len(), 10);
    f.set_len(50_000).unwrap();
    let data = fs::read(fx.path("t")).unwrap();
    assert_eq!(data.len(), 50_000);
    assert!(
        data[10..].iter().all(|&b| b == 0),
        "cut bytes read as zeros"
    );
    drop(f);
    // O_TRUNC through open is a truncate too.
    write_file(&fx.path("t2"), b"old content", Some(true));
    drop(File::create(fx.path("t2")).unwrap());
    assert_eq!(fs::read(fx.path("t2")).unwrap(), b"");

    fx.fs.power_off();
    assert_eq!(fs::read(fx.path("t")).unwrap(), vec![7u8; 10_000]);
    assert_eq!(fs::read(fx.path("t2")).unwrap(), b"old content");
}

#[test]
fn lazy_mode_keeps_namespace_changes() {
    let fx = Fixture::new(Mode::Lazy);
    fs::create_dir(fx.path("d")).unwrap();
    write_file(&fx.path("d/x"), b"x", Some(true));
    fs::rename(fx.path("d/x"), fx.path("d/y")).unwrap();
    write_file(&fx.path("gone"), b"g", Some(true));
    fs::remove_file(fx.path("gone")).unwrap();
    let report = fx.fs.power_off();
    assert!(report.undone.is_empty(), "{report}");
    assert_eq!(fs::read(fx.path("d/y")).unwrap(), b"x");
    assert!(!fx.path("d/x").exists());
    assert!(!fx.path("gone").exists());
}

#[test]
fn strict_mode_undoes_creates_and_renames_without_a_directory_fsync() {
    let fx = Fixture::new(Mode::Strict);
    fs::create_dir(fx.path("d")).unwrap();
    fsync_dir(fx.mountpoint_dir());
    write_file(&fx.path("d/old"), b"old", Some(true));
    write_file(&fx.path("d/unlinked"), b"u", Some(true));
    fsync_dir(&fx.path("d"));
    // Durable data, but the entries were never made durable.
    write_file(&fx.path("d/created"), b"created", Some(true));
    fs::rename(fx.path("d/old"), fx.path("d/renamed")).unwrap();
    fs::remove_file(fx.path("d/unlinked")).unwrap();
    assert!(fx.path("d/created").exists() && fx.path("d/renamed").exists());
    // Not visible in the mount, whatever the trash holds.
    let names: Vec<_> = fs::read_dir(fx.fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["d"]);

    let report = fx.fs.power_off();
    println!("{report}: {:?}", report.undone);
    assert!(report.errors.is_empty(), "{report}");
    assert!(!fx.path("d/created").exists(), "create undone");
    assert!(!fx.path("d/renamed").exists(), "rename undone");
    assert_eq!(fs::read(fx.path("d/old")).unwrap(), b"old");
    assert_eq!(
        fs::read(fx.path("d/unlinked")).unwrap(),
        b"u",
        "unlink undone"
    );
}

#[test]
fn strict_mode_keeps_what_fsyncdir_made_durable() {
    let fx = Fixture::new(Mode::Strict);
    fs::create_dir(fx.path("d")).unwrap();
    fs::create_dir(fx.path("e")).unwrap();
    fsync_dir(fx.mountpoint_dir());
    write_file(&fx.path("d/created"), b"created", Some(true));
    write_file(&fx.path("d/old"), b"old", Some(true));
    fsync_dir(&fx.path("d"));
    fs::rename(fx.path("d/old"), fx.path("e/moved")).unwrap();
    // A rename across directories needs both.
    fsync_dir(&fx.path("d"));
    fsync_dir(&fx.path("e"));
    // Rename over an existing file, then make it durable.
    write_file(&fx.path("e/target"), b"target", Some(true));
    write_file(&fx.path("e/tmp"), b"replacement", Some(true));
    fs::rename(fx.path("e/tmp"), fx.path("e/target")).unwrap();
    fsync_dir(&fx.path("e"));

    let report = fx.fs.power_off();
    assert!(report.undone.is_empty(), "{report}: {:?}", report.undone);
    assert_eq!(fs::read(fx.path("d/created")).unwrap(), b"created");
    assert_eq!(fs::read(fx.path("e/moved")).unwrap(), b"old");
    assert!(!fx.path("d/old").exists());
    assert_eq!(fs::read(fx.path("e/target")).unwrap(), b"replacement");
    assert!(!fx.path("e/tmp").exists());
    // The replaced file left the trash for good.
    let trash = fx.fs.backing().join(".switchyard-lazyfs-trash");
    assert_eq!(fs::read_dir(trash).unwrap().count(), 0);
}

#[test]
fn strict_mode_rename_over_a_file_comes_back() {
    let fx = Fixture::new(Mode::Strict);
    write_file(&fx.path("target"), b"target", Some(true));
    fsync_dir(fx.mountpoint_dir());
    write_file(&fx.path("tmp"), b"replacement", Some(true));
    fs::rename(fx.path("tmp"), fx.path("target")).unwrap();
    assert_eq!(fs::read(fx.path("target")).unwrap(), b"replacement");
    let report = fx.fs.power_off();
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(fs::read(fx.path("target")).unwrap(), b"target");
    assert!(!fx.path("tmp").exists(), "its create is undone too");
}

impl Fixture {
    fn mountpoint_dir(&self) -> &Path {
        self.fs.mountpoint()
    }
}

#[test]
fn errors_are_errnos_not_panics() {
    let fx = Fixture::new(Mode::Lazy);
    let e = fs::read(fx.path("missing")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    fs::create_dir(fx.path("d")).unwrap();
    write_file(&fx.path("d/f"), b"f", None);
    assert_eq!(
        fs::remove_dir(fx.path("d")).unwrap_err().raw_os_error(),
        Some(39)
    ); // ENOTEMPTY
    assert_eq!(
        fs::remove_file(fx.path("d")).unwrap_err().raw_os_error(),
        Some(21)
    ); // EISDIR
    assert!(fs::create_dir(fx.path("d")).is_err());
    assert!(fs::read_dir(fx.path("d/f")).is_err());
    // Big sparse writes and reads past the end.
    let f = OpenOptions::new().write(true).open(fx.path("d/f")).unwrap();
    use std::os::unix::fs::FileExt as _;
    f.write_all_at(b"far", 5 << 20).unwrap();
    assert_eq!(fs::metadata(fx.path("d/f")).unwrap().len(), (5 << 20) + 3);
    let r = File::open(fx.path("d/f")).unwrap();
    let mut buf = [1u8; 16];
    assert_eq!(r.read_at(&mut buf, 10 << 20).unwrap(), 0);
    assert_eq!(r.read_at(&mut buf, 100).unwrap(), 16);
    assert_eq!(buf, [0u8; 16]);
    let st = nix_statfs(fx.fs.mountpoint());
    assert!(st, "statfs answers");
}

fn nix_statfs(p: &Path) -> bool {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%b"])
        .arg(p)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn strict_mode_undoes_rmdir_and_whole_histories_without_errors() {
    let fx = Fixture::new(Mode::Strict);
    // Made durable: d/f.
    fs::create_dir(fx.path("d")).unwrap();
    fsync_dir(fx.mountpoint_dir());
    write_file(&fx.path("d/f"), b"f", Some(true));
    fsync_dir(&fx.path("d"));
    // Then, none of it durable: the file goes, the directory goes, a new
    // tree comes and goes, a directory is renamed.
    fs::remove_file(fx.path("d/f")).unwrap();
    fs::remove_dir(fx.path("d")).unwrap();
    fs::create_dir(fx.path("e")).unwrap();
    fs::create_dir(fx.path("e/sub")).unwrap();
    write_file(&fx.path("e/sub/x"), b"x", Some(true));
    fs::rename(fx.path("e/sub"), fx.path("e/sub2")).unwrap();
    fs::remove_file(fx.path("e/sub2/x")).unwrap();
    fs::remove_dir(fx.path("e/sub2")).unwrap();
    fs::create_dir(fx.path("d")).unwrap();
    write_file(&fx.path("d/f"), b"new", None);

    let report = fx.fs.power_off();
    println!("{report}: {:?}", report.undone);
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(fs::read(fx.path("d/f")).unwrap(), b"f");
    assert!(!fx.path("e").exists());
    let names: Vec<_> = fs::read_dir(fx.fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["d"]);
}

#[test]
fn strict_mode_forgets_changes_inside_a_directory_whose_removal_is_durable() {
    let fx = Fixture::new(Mode::Strict);
    fs::create_dir(fx.path("d")).unwrap();
    fsync_dir(fx.mountpoint_dir());
    // Changes in d never made durable by an fsync of d ...
    write_file(&fx.path("d/x"), b"x", Some(true));
    fs::rename(fx.path("d/x"), fx.path("d/y")).unwrap();
    fs::remove_file(fx.path("d/y")).unwrap();
    // ... but d's removal is.
    fs::remove_dir(fx.path("d")).unwrap();
    fsync_dir(fx.mountpoint_dir());
    let report = fx.fs.power_off();
    assert!(report.errors.is_empty(), "{report}");
    assert!(report.undone.is_empty(), "{:?}", report.undone);
    assert!(!fx.path("d").exists());
}

/// Random writes, truncates, syncs and power offs on a few files, checked
/// after every step against a model: what readers see is the last write;
/// what a power off leaves is the last synced content.
#[test]
fn random_histories_match_the_model() {
    use std::os::unix::fs::FileExt as _;
    let fx = Fixture::new(Mode::Lazy);
    // xorshift: deterministic without a dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    let names = ["f0", "f1", "f2"];
    let mut current: Vec<Vec<u8>> = vec![Vec::new(); names.len()];
    let mut durable: Vec<Vec<u8>> = vec![Vec::new(); names.len()];
    let mut files: Vec<File> = names
        .iter()
        .map(|n| {
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(fx.path(n))
                .unwrap();
            f.sync_all().unwrap();
            f
        })
        .collect();
    for step in 0..600 {
        let i = next(names.len() as u64) as usize;
        match next(10) {
            0..=4 => {
                let len = 1 + next(9000) as usize;
                let off = next(current[i].len() as u64 + 5000) as usize;
                let byte = (step % 251) as u8 + 1;
                files[i].write_all_at(&vec![byte; len], off as u64).unwrap();
                if current[i].len() < off + len {
                    current[i].resize(off + len, 0);
                }
                current[i][off..off + len].fill(byte);
            }
            5 => {
                let len = next(current[i].len() as u64 + 8000) as usize;
                files[i].set_len(len as u64).unwrap();
                current[i].resize(len, 0);
            }
            6 => {
                files[i].sync_all().unwrap();
                durable[i] = current[i].clone();
            }
            7 => {
                files[i].sync_data().unwrap();
                durable[i] = current[i].clone();
            }
            8 => {
                // Close and reopen: not durability.
                files[i] = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(fx.path(names[i]))
                    .unwrap();
            }
            _ => {
                fx.fs.power_off();
                current = durable.clone();
            }
        }
        for (j, name) in names.iter().enumerate() {
            let seen = fs::read(fx.path(name)).unwrap();
            assert!(
                seen == current[j],
                "step {step}: {name} has {} bytes, the model {}",
                seen.len(),
                current[j].len()
            );
        }
    }
    drop(files);
    // The disk holds exactly what was synced.
    for (j, name) in names.iter().enumerate() {
        assert!(
            fs::read(fx.disk(name)).unwrap() == durable[j],
            "{name} on disk"
        );
    }
}

/// Strict mode, one directory: random creates, writes, syncs, renames
/// (also over existing files), unlinks, directory fsyncs and power offs,
/// against a model: a power off brings the directory back to its entries at
/// the last fsyncdir, each file with its last synced content.
#[test]
fn strict_random_histories_match_the_model() {
    for seed in [0x2545_f491_4f6c_dd1d, 7, 0xdead_beef] {
        strict_random_history(seed);
    }
}

fn strict_random_history(seed: u64) {
    use std::collections::BTreeMap;
    let fx = Fixture::new(Mode::Strict);
    fs::create_dir(fx.path("d")).unwrap();
    fsync_dir(fx.mountpoint_dir());
    let mut state: u64 = seed;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    // name -> file identity; identity -> (current, durable) content.
    let mut names: BTreeMap<String, u64> = BTreeMap::new();
    let mut snapshot: BTreeMap<String, u64> = BTreeMap::new();
    let mut content: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut ids = 0u64;
    let path = |n: &str| fx.path(&format!("d/{n}"));
    for step in 0..400u64 {
        let pick = |names: &BTreeMap<String, u64>, k: u64| {
            names.keys().nth(k as usize % names.len().max(1)).cloned()
        };
        match next(9) {
            0 | 1 => {
                let name = format!("n{}", next(8));
                if let std::collections::btree_map::Entry::Vacant(slot) = names.entry(name) {
                    let data = format!("file {ids} at step {step}").into_bytes();
                    let sync = next(2) == 0;
                    write_file(&path(slot.key()), &data, sync.then_some(true));
                    let durable = if sync { data.clone() } else { Vec::new() };
                    content.insert(ids, (data, durable));
                    slot.insert(ids);
                    ids += 1;
                }
            }
            2 => {
                if let Some(name) = pick(&names, next(8)) {
                    let id = names[&name];
                    let extra = format!("+{step}");
                    let mut f = OpenOptions::new().append(true).open(path(&name)).unwrap();
                    f.write_all(extra.as_bytes()).unwrap();
                    let c = content.get_mut(&id).unwrap();
                    c.0.extend_from_slice(extra.as_bytes());
                    if next(2) == 0 {
                        f.sync_all().unwrap();
                        c.1 = c.0.clone();
                    }
                }
            }
            3 | 4 => {
                if let Some(from) = pick(&names, next(8)) {
                    let to = format!("n{}", next(8));
                    if to != from {
                        fs::rename(path(&from), path(&to)).unwrap();
                        let id = names.remove(&from).unwrap();
                        names.insert(to, id);
                    }
                }
            }
            5 => {
                if let Some(name) = pick(&names, next(8)) {
                    fs::remove_file(path(&name)).unwrap();
                    names.remove(&name);
                }
            }
            6 | 7 => {
                fsync_dir(&fx.path("d"));
                snapshot = names.clone();
            }
            _ => {
                let report = fx.fs.power_off();
                assert!(
                    report.errors.is_empty(),
                    "seed {seed} step {step}: {report}"
                );
                names = snapshot.clone();
                for c in content.values_mut() {
                    c.0 = c.1.clone();
                }
            }
        }
        let mut seen: Vec<String> = fs::read_dir(fx.path("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        seen.sort();
        let want: Vec<String> = names.keys().cloned().collect();
        assert_eq!(seen, want, "seed {seed} step {step}: entries");
        for (name, id) in &names {
            assert!(
                fs::read(path(name)).unwrap() == content[id].0,
                "seed {seed} step {step}: content of {name}"
            );
        }
    }
}
