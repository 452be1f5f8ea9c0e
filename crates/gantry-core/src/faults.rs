//! Real faults for other crates' tests (feature `test-util`): a small filesystem that fills up.
//!
//! [`SmallDisk`] mounts a tmpfs of a given size, so a test's data directory really runs out of
//! space: SQLite answers "database or disk is full", a write answers `ENOSPC`. Mounting needs
//! root (the test command runs as root); without it the test fails and says so, it never skips.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A tmpfs mounted over a directory for as long as this value lives (a lazy unmount on drop).
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
    filler: PathBuf,
    /// Set while [`SmallDisk::fill`] holds the disk full.
    full: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel) over the directory `path`,
    /// which must exist (a fresh temporary directory). Panics, saying why, when it cannot.
    pub fn mount(path: &Path, bytes: u64) -> Self {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount(8) to make a small disk: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {bytes}-byte tmpfs at {} (these fault tests need root, as the test \
             command runs them): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self {
            path: path.to_owned(),
            filler: path.join(".filler"),
            full: Arc::default(),
            keeper: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills what is left with a file until the filesystem says it is full, and keeps it full
    /// until [`SmallDisk::free`]: any space given back meanwhile (a file deleted, a write that
    /// failed half way and was undone) is taken again within milliseconds, as a job that keeps
    /// writing would.
    pub fn fill(&mut self) {
        let Ok(mut file) = File::options().create(true).append(true).open(&self.filler) else {
            return;
        };
        take_all(&mut file);
        self.full.store(true, Ordering::SeqCst);
        let full = self.full.clone();
        self.keeper = Some(std::thread::spawn(move || {
            while full.load(Ordering::SeqCst) {
                take_all(&mut file);
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
    }

    /// Gives back what [`SmallDisk::fill`] took.
    pub fn free(&mut self) {
        self.full.store(false, Ordering::SeqCst);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        let _ = fs::remove_file(&self.filler);
    }

    /// Bytes still free, as the filesystem reports them.
    pub fn available(&self) -> io::Result<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| io::Error::other("df said nothing readable"))
    }
}

/// Writes until the filesystem refuses even a small write.
fn take_all(file: &mut File) {
    let chunk = [0u8; 64 * 1024];
    while file.write(&chunk).is_ok_and(|n| n > 0) {}
    while file.write(&chunk[..512]).is_ok_and(|n| n > 0) {}
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.full.store(false, Ordering::SeqCst);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
