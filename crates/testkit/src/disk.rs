//! Small real filesystems for storage-fault tests: an ext4 image on a loop device, mounted in
//! a temp dir of its own, filled to ENOSPC on demand, unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Name of the file that [`LoopDisk::fill`] grows.
const FILLER: &str = ".sofamq-filler";

/// A mounted ext4 of a few MiB. Dropping it unmounts it (lazily if still busy) and removes
/// its image.
pub struct LoopDisk {
    mnt: PathBuf,
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
        let dir = tempfile::Builder::new().prefix("sofamq-disk-").tempdir()?;
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        std::fs::File::create(&img)?.set_len(mib << 20)?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))?;
        Ok(LoopDisk { mnt, _dir: dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Bytes free for writing.
    pub fn avail(&self) -> anyhow::Result<u64> {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.mnt)
            .output()
            .context("df")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("df printed no free space")
    }

    /// Takes all but about `leave` bytes of the free space (preallocated, so it is taken at
    /// once). Processes writing to the disk meanwhile race for the same space: a piece that
    /// no longer fits is retried smaller, so the disk ends up full either way. Returns the
    /// filler's size.
    pub fn fill(&self, leave: u64) -> anyhow::Result<u64> {
        let path = self.mnt.join(FILLER);
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        // Bounded: each round takes at least half of what was free, or stops.
        for _ in 0..32 {
            let mut take = self.avail()?.saturating_sub(leave);
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

    /// Frees what [`LoopDisk::fill`] took.
    pub fn free(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.mnt.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
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
