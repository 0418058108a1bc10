//! A lazy filesystem for power-loss tests (issue 18). Test support only:
//! no service image carries it.
//!
//! [`LazyFs::mount`] serves a loopback FUSE filesystem over a backing
//! directory, on a background thread of the calling process. File data
//! written through the mount is held in memory (reads see it) and reaches the
//! backing directory only when the writer calls `fsync`/`fdatasync` on that
//! file, or wrote through a descriptor opened with `O_SYNC`/`O_DSYNC`.
//! `close` (flush, release) is not durability. [`Mounted::power_off`] then
//! drops every unsynced byte, including unsynced truncates and extensions,
//! reverting each file to its last synced content, as a machine losing power
//! would.
//!
//! In [`Mode::Lazy`], creates, renames, unlinks, mkdir and rmdir are durable
//! at once (roughly what a journalling filesystem gives after its next
//! commit). [`Mode::Strict`] also undoes, at power off, every such change
//! whose parent directory (both, for a rename) was not fsynced afterwards:
//! stricter than ext4, so findings in that mode must be labelled as such.
//!
//! Scope: this models the benign power loss (every unsynced byte lost, every
//! synced byte kept), not torn or reordered writes, nor lying disks.
//!
//! How to use it with a server: SIGKILL the server first (power off happens
//! to a dead machine), call [`Mounted::power_off`], then start the server
//! again on the same mount. The mount serves requests without kernel caching
//! (direct I/O, zero attribute and entry timeouts; power off also tells the
//! kernel to drop what it may hold), so what the restarted server reads is
//! what survived.

mod dirty;
mod fs;

pub use fs::PowerOffReport;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// How much a power off undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Unsynced file data (writes, truncates) is lost; namespace changes
    /// (create, rename, unlink, mkdir, rmdir) are durable at once.
    #[default]
    Lazy,
    /// Also undoes namespace changes whose parent directories were not
    /// fsynced (fsyncdir) after them. Stricter than ext4: label findings.
    Strict,
}

const HOW_TO_INSTALL: &str = "install FUSE with `just setup` (it installs Debian's fuse3: \
     `apt-get install fuse3`, which gives /usr/bin/fusermount3); in a container, pass the \
     device (`--device /dev/fuse --cap-add SYS_ADMIN`)";

/// Checks that this machine can mount a FUSE filesystem: `/dev/fuse` exists
/// and `fusermount3` is on `PATH` (or in /usr/bin or /bin). The error says
/// how to fix it.
pub fn preflight() -> io::Result<()> {
    check(Path::new("/dev/fuse"), fusermount3().is_some())
}

fn check(dev_fuse: &Path, have_fusermount3: bool) -> io::Result<()> {
    if !dev_fuse.exists() {
        return Err(io::Error::other(format!(
            "switchyard-lazyfs: {} is missing: {HOW_TO_INSTALL}",
            dev_fuse.display()
        )));
    }
    if !have_fusermount3 {
        return Err(io::Error::other(format!(
            "switchyard-lazyfs: fusermount3 not found: {HOW_TO_INSTALL}"
        )));
    }
    Ok(())
}

fn fusermount3() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_fuse_the_error_says_how_to_install_it() {
        let err = check(Path::new("/nonexistent/fuse"), true).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/fuse is missing"),
            "{err}"
        );
        assert!(err.to_string().contains("just setup"), "{err}");
        let err = check(Path::new("/"), false).unwrap_err();
        assert!(err.to_string().contains("fusermount3 not found"), "{err}");
        assert!(err.to_string().contains("apt-get install fuse3"), "{err}");
        assert!(check(Path::new("/"), true).is_ok());
    }
}

/// Entry point: see [`LazyFs::mount`].
#[derive(Debug)]
pub struct LazyFs;

impl LazyFs {
    /// Mounts a lazy view of `backing` (created if missing) at `mountpoint`
    /// (created if missing), served on a background thread until the
    /// returned [`Mounted`] is dropped (which unmounts).
    pub fn mount(
        backing: impl AsRef<Path>,
        mountpoint: impl AsRef<Path>,
        mode: Mode,
    ) -> io::Result<Mounted> {
        preflight()?;
        let backing = backing.as_ref();
        let mountpoint = mountpoint.as_ref();
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let shared = fs::Shared::new(backing.clone(), mode)?;
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("switchyard-lazyfs".into()),
            fuser::MountOption::Subtype("lazyfs".into()),
            fuser::MountOption::RW,
            fuser::MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(
            fs::LazyFilesystem {
                shared: shared.clone(),
            },
            &mountpoint,
            &config,
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "switchyard-lazyfs: mounting {} failed: {e} ({HOW_TO_INSTALL})",
                    mountpoint.display()
                ),
            )
        })?;
        Ok(Mounted {
            shared,
            session: Some(session),
            backing,
            mountpoint,
        })
    }
}

/// A mounted lazy filesystem. Dropping it unmounts (lazily, if something
/// still holds the mount busy).
#[derive(Debug)]
pub struct Mounted {
    shared: Arc<fs::Shared>,
    session: Option<fuser::BackgroundSession>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl Mounted {
    /// Where the filesystem is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory: the "disk" (canonical).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Simulated power loss: drops every unsynced byte (and, in strict mode,
    /// every namespace change whose directory was not fsynced), then tells
    /// the kernel to forget cached attributes. Kill every process using the
    /// mount first: a machine without power runs nothing.
    pub fn power_off(&self) -> PowerOffReport {
        let (report, inos) = self.shared.lock().power_off();
        if let Some(session) = &self.session {
            let notifier = session.notifier();
            for ino in inos {
                // ENOENT (the kernel does not hold that inode) is fine.
                let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
            }
        }
        report
    }

    /// Bytes written (or cut by truncates) and not yet synced.
    pub fn unsynced_bytes(&self) -> u64 {
        self.shared.lock().unsynced_bytes()
    }

    /// How often each FUSE operation was called (unimplemented ones are
    /// listed with " (ENOSYS)").
    pub fn op_counts(&self) -> BTreeMap<String, u64> {
        self.shared.lock().op_counts()
    }

    /// Unmounts now (see [`Drop`]).
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                // Busy (a process still has files open there): detach it so
                // it goes away when they close.
                let lazy = Command::new(fusermount3().unwrap_or_else(|| "fusermount3".into()))
                    .args(["-u", "-z", "-q"])
                    .arg(&self.mountpoint)
                    .status();
                match lazy {
                    Ok(s) if s.success() => Ok(()),
                    _ => Err(io::Error::new(
                        e.kind(),
                        format!("unmounting {}: {e}", self.mountpoint.display()),
                    )),
                }
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("switchyard-lazyfs: {e}");
        }
    }
}
