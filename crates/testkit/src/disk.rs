//! Small real filesystems for storage-fault tests: an ext4 image on a loop device, mounted in
//! a temp dir of its own, filled to ENOSPC on demand, unmounted when dropped.
//!
//! A *thin* one keeps its image on a tmpfs of its own, as a thin-provisioned volume: when
//! that tmpfs is starved ([`LoopDisk::starve`]) the loop device's writes fail underneath
//! ext4, so a write-back, and the fdatasync waiting on it, gets a real EIO.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Name of the file that [`LoopDisk::fill`] and [`LoopDisk::starve`] grow.
const FILLER: &str = ".sofamq-filler";

/// A mounted ext4 of a few MiB. Dropping it unmounts it (lazily if still busy) and removes
/// its image.
pub struct LoopDisk {
    mnt: PathBuf,
    img: PathBuf,
    /// The tmpfs holding the image of a thin disk.
    backing: Option<PathBuf>,
    // Holds the image and the mount point; removed after the unmount.
    _dir: tempfile::TempDir,
}

impl LoopDisk {
    /// Why this machine cannot mount one (`None` when it can): root, loop devices and
    /// `mkfs.ext4` are needed.
    pub fn unavailable() -> Option<String> {
        let uid = Command::new("id").arg("-u").output().ok();
        if uid.is_none_or(|o| o.stdout != b"0\n") {
            return Some("needs root to mount a loop device".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Some("needs /dev/loop-control".into());
        }
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            return Some("needs mkfs.ext4 (e2fsprogs)".into());
        }
        None
    }

    /// Creates and mounts an ext4 of `mib` MiB (no blocks reserved for root, so a full disk
    /// is full for every process).
    pub fn new(mib: u64) -> anyhow::Result<LoopDisk> {
        Self::create(mib, false)
    }

    /// [`LoopDisk::new`] with the image on a tmpfs of its own (room for all of it until
    /// [`LoopDisk::starve`]).
    pub fn thin(mib: u64) -> anyhow::Result<LoopDisk> {
        Self::create(mib, true)
    }

    fn create(mib: u64, thin: bool) -> anyhow::Result<LoopDisk> {
        let dir = tempfile::Builder::new().prefix("sofamq-disk-").tempdir()?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        let backing = if thin {
            let b = dir.path().join("backing");
            std::fs::create_dir(&b)?;
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={}m", mib + 8)])
                .arg("tmpfs")
                .arg(&b))?;
            Some(b)
        } else {
            None
        };
        let img = backing.as_deref().unwrap_or(dir.path()).join("disk.img");
        let disk = LoopDisk {
            mnt,
            img,
            backing,
            _dir: dir,
        };
        std::fs::File::create(&disk.img)?.set_len(mib << 20)?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&disk.img))?;
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&self) -> anyhow::Result<()> {
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.img)
            .arg(&self.mnt))
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Bytes free for writing.
    pub fn avail(&self) -> anyhow::Result<u64> {
        avail(&self.mnt)
    }

    /// Takes all but about `leave` bytes of the free space (preallocated, so it is taken at
    /// once). Returns the filler's size.
    pub fn fill(&self, leave: u64) -> anyhow::Result<u64> {
        fill(&self.mnt, leave)
    }

    /// Frees what [`LoopDisk::fill`] took.
    pub fn free(&self) -> anyhow::Result<()> {
        remove_filler(&self.mnt)
    }

    /// Thin disk: takes all the room left under the image, so that the next write-back of
    /// the filesystem fails with EIO (ext4 then aborts its journal; see [`LoopDisk::repair`]).
    pub fn starve(&self) -> anyhow::Result<()> {
        let b = self.backing.as_deref().context("not a thin disk")?;
        fill(b, 0).map(drop)
    }

    /// Thin disk: gives back what [`LoopDisk::starve`] took.
    pub fn feed(&self) -> anyhow::Result<()> {
        let b = self.backing.as_deref().context("not a thin disk")?;
        remove_filler(b)
    }

    /// What an operator does after the filesystem failed under a process that is gone:
    /// unmount, `e2fsck -fy`, mount again. Returns e2fsck's report.
    pub fn repair(&self) -> anyhow::Result<String> {
        umount(&self.mnt);
        let out = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.img)
            .output()
            .context("e2fsck")?;
        // 0: clean, 1: errors corrected, 2: corrected, reboot advised (irrelevant here).
        anyhow::ensure!(
            matches!(out.status.code(), Some(0..=2)),
            "e2fsck {}: {}",
            self.img.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.mount()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        umount(&self.mnt);
        if let Some(b) = &self.backing {
            umount(b);
        }
    }
}

/// Unmounts `dir`, lazily if it is still busy.
fn umount(dir: &Path) {
    let ok = Command::new("umount")
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(dir).output();
    }
}

fn avail(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .context("df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df printed no free space")
}

/// Preallocates a filler in `dir` until about `leave` bytes are free. Processes writing
/// there meanwhile race for the same space: a piece that no longer fits is retried smaller,
/// so the disk ends up full either way. Returns the filler's size.
fn fill(dir: &Path, leave: u64) -> anyhow::Result<u64> {
    let path = dir.join(FILLER);
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    // Bounded: each round takes at least half of what was free, or stops.
    for _ in 0..32 {
        let mut take = avail(dir)?.saturating_sub(leave);
        while take >= 64 * 1024 {
            let have = len(&path);
            let out = Command::new("fallocate")
                .args(["-o", &have.to_string(), "-l", &take.to_string()])
                .arg(&path)
                .output()
                .context("fallocate")?;
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            anyhow::ensure!(
                err.contains("No space left"),
                "fallocate {}: {}",
                path.display(),
                err.trim()
            );
            take /= 2;
        }
        if take < 64 * 1024 {
            break;
        }
    }
    Ok(len(&path))
}

fn remove_filler(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(dir.join(FILLER)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
