//! Power-cut behaviour of a real FUSE mount. Each test skips (with the reason
//! printed) where `LazyFs::unavailable()` says mounting cannot work.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use anyhow::Result;
use sofamq_lazyfs::{CutReport, Fate, LazyFs, Options};
use tempfile::TempDir;

struct Fixture {
    fs: LazyFs,
    // Dropped after `fs` (field order): unmount before the directories go.
    _mnt: TempDir,
    backing: TempDir,
}

fn setup() -> Result<Option<Fixture>> {
    if let Some(why) = LazyFs::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(None);
    }
    let backing = tempfile::tempdir()?;
    let mnt = tempfile::tempdir()?;
    let fs = LazyFs::mount(backing.path(), mnt.path())?;
    Ok(Some(Fixture {
        fs,
        _mnt: mnt,
        backing,
    }))
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn append(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new().append(true).open(path)?;
    f.write_all(data)?;
    Ok(())
}

#[test]
fn drop_all_loses_exactly_the_unsynced_bytes() -> Result<()> {
    let Some(mut fx) = setup()? else {
        return Ok(());
    };
    let path = fx.fs.mountpoint().join("log");
    let synced = pattern(10_000, 1);
    let unsynced = pattern(5_000, 2);
    {
        let mut f = File::create(&path)?;
        f.write_all(&synced)?;
        f.sync_data()?;
        f.write_all(&unsynced)?;
    }
    // Closed without fsync: still pending, still visible.
    assert_eq!(fx.fs.pending_bytes(), unsynced.len() as u64);
    let mut all = synced.clone();
    all.extend_from_slice(&unsynced);
    assert_eq!(fs::read(&path)?, all);
    assert_eq!(fs::metadata(&path)?.len(), all.len() as u64);
    // Not on the "disk" yet.
    assert_eq!(fs::read(fx.backing.path().join("log"))?, synced);

    let report = fx.fs.power_cut(Fate::DropAll, 7)?;
    assert_eq!(report.dropped_bytes(), unsynced.len() as u64);
    assert_eq!(report.kept_bytes(), 0);
    assert_eq!(fx.fs.pending_bytes(), 0);
    assert_eq!(fs::metadata(&path)?.len(), synced.len() as u64);
    assert_eq!(fs::read(&path)?, synced);

    // The remounted filesystem works as before.
    append(&path, b"after")?;
    File::open(&path)?.sync_all()?;
    let report = fx.fs.power_cut(Fate::DropAll, 8)?;
    assert_eq!(report.dropped_bytes(), 0);
    let mut want = synced;
    want.extend_from_slice(b"after");
    assert_eq!(fs::read(&path)?, want);
    Ok(())
}

/// The outcome of `cut_appends`.
struct Appended {
    synced: Vec<u8>,
    unsynced: Vec<u8>,
    /// The file after the cut.
    got: Vec<u8>,
    report: CutReport,
}

/// Writes a synced head then 20 unsynced appends; cuts; reads the file back.
fn cut_appends(fate: Fate, seed: u64) -> Result<Option<Appended>> {
    let Some(mut fx) = setup()? else {
        return Ok(None);
    };
    let path = fx.fs.mountpoint().join("seg");
    let synced = pattern(6_000, 3);
    let mut f = File::create(&path)?;
    f.write_all(&synced)?;
    f.sync_all()?;
    let mut unsynced = Vec::new();
    for i in 0..20u8 {
        let chunk = pattern(700 + usize::from(i) * 37, i);
        f.write_all(&chunk)?;
        unsynced.extend_from_slice(&chunk);
    }
    drop(f);
    let report = fx.fs.power_cut(fate, seed)?;
    let got = fs::read(&path)?;
    Ok(Some(Appended {
        synced,
        unsynced,
        got,
        report,
    }))
}

#[test]
fn keep_prefix_keeps_a_prefix_and_replays() -> Result<()> {
    let mut saw_partial = false;
    for seed in 0..6 {
        let Some(Appended {
            synced,
            unsynced,
            got,
            report,
        }) = cut_appends(Fate::KeepPrefix, seed)?
        else {
            return Ok(());
        };
        assert!(got.len() >= synced.len(), "seed {seed}");
        assert_eq!(got[..synced.len()], synced[..], "seed {seed}: synced part");
        let tail = &got[synced.len()..];
        assert!(tail.len() <= unsynced.len());
        assert_eq!(tail, &unsynced[..tail.len()], "seed {seed}: not a prefix");
        assert_eq!(report.kept_bytes(), tail.len() as u64);
        assert_eq!(
            report.kept_bytes() + report.dropped_bytes(),
            unsynced.len() as u64
        );
        saw_partial |= !tail.is_empty() && tail.len() < unsynced.len();

        let again = cut_appends(Fate::KeepPrefix, seed)?.expect("mountable");
        assert_eq!(again.got, got, "seed {seed}: same seed, same result");
        assert_eq!(again.report, report);
    }
    assert!(saw_partial, "no seed kept a strict, non-empty prefix");
    Ok(())
}

#[test]
fn torn_keeps_the_synced_part_and_replays() -> Result<()> {
    let mut saw_torn = false;
    let mut saw_hole = false;
    for seed in 0..8 {
        let Some(Appended {
            synced,
            unsynced,
            got,
            report,
        }) = cut_appends(Fate::Torn, seed)?
        else {
            return Ok(());
        };
        assert!(got.len() >= synced.len(), "seed {seed}");
        assert_eq!(got[..synced.len()], synced[..], "seed {seed}: synced part");
        assert!(got.len() <= synced.len() + unsynced.len());
        let cut = report.file("seg").expect("file in report");
        let hole = cut.hole.clone();
        saw_torn |= cut.torn.is_some();
        saw_hole |= hole.is_some();
        // Outside the hole, what survives is a prefix of what was written.
        let tail = &got[synced.len()..];
        for (i, (&g, &w)) in tail.iter().zip(&unsynced).enumerate() {
            let at = (synced.len() + i) as u64;
            let in_hole = hole
                .as_ref()
                .is_some_and(|h| at >= h.offset && at < h.offset + h.len);
            if !in_hole {
                assert_eq!(g, w, "seed {seed}: byte {at}");
            } else if hole.as_ref().is_some_and(|h| h.zeroes) {
                assert_eq!(g, 0);
            }
        }
        let again = cut_appends(Fate::Torn, seed)?.expect("mountable");
        assert_eq!(again.got, got, "seed {seed}: same seed, same result");
        assert_eq!(again.report, report);
    }
    assert!(saw_torn && saw_hole, "torn {saw_torn} hole {saw_hole}");
    Ok(())
}

#[test]
fn metadata_passes_through_data_does_not() -> Result<()> {
    let Some(mut fx) = setup()? else {
        return Ok(());
    };
    let m = fx.fs.mountpoint().to_path_buf();
    fs::create_dir(m.join("dir"))?;
    fs::write(m.join("dir/a"), b"never synced")?;
    fs::write(m.join("gone"), b"x")?;
    {
        let mut f = File::create(m.join("b.tmp"))?;
        f.write_all(b"synced then renamed")?;
        f.sync_data()?;
    }
    fs::rename(m.join("b.tmp"), m.join("dir/b"))?;
    fs::remove_file(m.join("gone"))?;
    // Rename of a file with pending data, kept open across the rename.
    let mut open = File::create(m.join("c"))?;
    open.write_all(b"12345")?;
    fs::rename(m.join("c"), m.join("dir/c"))?;
    open.write_all(b"678")?;
    open.sync_data()?;
    open.write_all(b"lost")?;
    drop(open);
    // A directory rename moves the inodes under it.
    fs::rename(m.join("dir"), m.join("moved"))?;
    assert_eq!(fs::read(m.join("moved/a"))?, b"never synced");
    assert_eq!(fs::read(m.join("moved/c"))?, b"12345678lost");

    let mut names: Vec<_> = fs::read_dir(m.join("moved"))?
        .map(|e| e.map(|e| e.file_name().into_string().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    let report = fx.fs.power_cut(Fate::DropAll, 1)?;
    assert!(report.file("moved/a").is_some(), "{report:?}");
    assert!(m.join("moved").is_dir());
    assert_eq!(fs::metadata(m.join("moved/a"))?.len(), 0);
    assert_eq!(fs::read(m.join("moved/b"))?, b"synced then renamed");
    assert_eq!(fs::read(m.join("moved/c"))?, b"12345678");
    assert!(!m.join("gone").exists());
    assert!(!m.join("b.tmp").exists());
    assert!(!m.join("dir").exists());
    fs::remove_file(m.join("moved/a"))?;
    fs::remove_file(m.join("moved/b"))?;
    fs::remove_file(m.join("moved/c"))?;
    fs::remove_dir(m.join("moved"))?;
    assert_eq!(fs::read_dir(&m)?.count(), 0);
    Ok(())
}

#[test]
fn truncate_trims_pending_writes() -> Result<()> {
    let Some(mut fx) = setup()? else {
        return Ok(());
    };
    let path = fx.fs.mountpoint().join("t");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    f.write_all(&[1u8; 1000])?;
    f.sync_data()?;
    f.write_all(&[2u8; 1000])?; // pending 1000..2000
    f.set_len(1500)?; // metadata: immediate; pending trimmed to 1000..1500
    assert_eq!(fx.fs.pending_bytes(), 500);
    assert_eq!(f.metadata()?.len(), 1500);
    let mut want = vec![1u8; 1000];
    want.extend_from_slice(&[2u8; 500]);
    assert_eq!(fs::read(&path)?, want);

    f.set_len(800)?; // drops all pending writes, cuts synced data
    assert_eq!(fx.fs.pending_bytes(), 0);
    f.write_all_at(&[3u8; 100], 700)?; // pending 700..800
    f.set_len(1200)?; // extends with zeroes on the backing file
    assert_eq!(fs::metadata(&path)?.len(), 1200);
    let mut want = vec![1u8; 700];
    want.extend_from_slice(&[3u8; 100]);
    want.extend_from_slice(&[0u8; 400]);
    assert_eq!(fs::read(&path)?, want);
    drop(f);

    fx.fs.power_cut(Fate::DropAll, 3)?;
    // The truncations survive (metadata); the unsynced 3s do not.
    let mut want = vec![1u8; 800];
    want.extend_from_slice(&[0u8; 400]);
    assert_eq!(fs::read(&path)?, want);

    // O_TRUNC (File::create on an existing file) drops the pending writes too.
    fs::write(&path, b"pending")?;
    assert_eq!(fx.fs.pending_bytes(), 7);
    drop(File::create(&path)?);
    assert_eq!(fx.fs.pending_bytes(), 0);
    assert_eq!(fs::metadata(&path)?.len(), 0);
    Ok(())
}

#[test]
fn reads_overlay_pending_writes() -> Result<()> {
    let Some(fx) = setup()? else {
        return Ok(());
    };
    let path = fx.fs.mountpoint().join("o");
    let mut model = pattern(20_000, 9);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    f.write_all(&model)?;
    f.sync_data()?;
    // Overlapping overwrites, later ones win; one extends past the end, one
    // leaves a gap (a hole of zeroes) after the end.
    let writes: [(u64, usize, u8); 6] = [
        (100, 300, 10),
        (250, 4_000, 11),
        (5_000, 10, 12),
        (5_005, 2, 13),
        (19_000, 3_000, 14),
        (30_000, 500, 15),
    ];
    for (off, len, salt) in writes {
        let data = pattern(len, salt);
        f.write_all_at(&data, off)?;
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
    }
    assert_eq!(f.metadata()?.len(), model.len() as u64);
    // Whole-file read, and reads at odd offsets spanning backing and pending bytes.
    assert_eq!(fs::read(&path)?, model);
    let mut r = File::open(&path)?;
    for (off, len) in [
        (0, 150),
        (90, 400),
        (4_200, 900),
        (5_003, 5),
        (18_990, 11_000),
    ] {
        let mut buf = vec![0u8; len];
        r.seek(SeekFrom::Start(off))?;
        r.read_exact(&mut buf)?;
        assert_eq!(buf, model[off as usize..off as usize + len], "at {off}");
    }
    // Reading past the end returns what there is.
    let mut buf = vec![0u8; 1_000];
    let n = r.read_at(&mut buf, model.len() as u64 - 100)?;
    assert_eq!(buf[..n], model[model.len() - 100..]);
    assert!(fx.fs.pending_bytes() > 0);
    f.sync_all()?;
    assert_eq!(fx.fs.pending_bytes(), 0);
    assert_eq!(fs::read(fx.backing.path().join("o"))?, model);
    Ok(())
}

#[test]
fn pending_cap_writes_through() -> Result<()> {
    if LazyFs::unavailable().is_some() {
        return Ok(());
    }
    let backing = tempfile::tempdir()?;
    let mnt = tempfile::tempdir()?;
    let options = Options {
        pending_cap: 64 << 10,
        ..Options::default()
    };
    let mut fs_ = LazyFs::mount_with(backing.path(), mnt.path(), options)?;
    let path = fs_.mountpoint().join("big");
    let data = pattern(100 << 10, 5);
    fs::write(&path, &data)?;
    assert!(fs_.pending_bytes() <= 64 << 10);
    fs_.power_cut(Fate::DropAll, 0)?;
    let got = fs::read(&path)?;
    // At least what went past the cap survived, and it is a prefix.
    assert!(got.len() >= data.len() - (64 << 10));
    assert_eq!(got[..], data[..got.len()]);
    drop(fs_);
    Ok(())
}

#[test]
fn o_dsync_writes_are_durable() -> Result<()> {
    let Some(mut fx) = setup()? else {
        return Ok(());
    };
    use std::os::unix::fs::OpenOptionsExt;
    let path = fx.fs.mountpoint().join("d");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DSYNC)
        .open(&path)?;
    f.write_all(b"durable")?;
    drop(f);
    assert_eq!(fx.fs.pending_bytes(), 0);
    fx.fs.power_cut(Fate::DropAll, 0)?;
    assert_eq!(fs::read(&path)?, b"durable");
    Ok(())
}

#[test]
fn hard_links_share_pending_data_and_copy_works() -> Result<()> {
    let Some(mut fx) = setup()? else {
        return Ok(());
    };
    let m = fx.fs.mountpoint().to_path_buf();
    let mut f = File::create(m.join("a"))?;
    f.write_all(b"synced|")?;
    f.sync_data()?;
    f.write_all(b"pending")?;
    fs::create_dir(m.join("kept"))?;
    fs::hard_link(m.join("a"), m.join("kept/a"))?;
    assert_eq!(fs::metadata(m.join("a"))?.nlink(), 2);
    // One inode: data written through one name is read through the other.
    assert_eq!(fs::read(m.join("kept/a"))?, b"synced|pending");
    f.write_all(b"+more")?;
    assert_eq!(fs::read(m.join("kept/a"))?, b"synced|pending+more");
    drop(f);
    fs::copy(m.join("a"), m.join("copy"))?;
    assert_eq!(fs::read(m.join("copy"))?, b"synced|pending+more");
    fs::remove_file(m.join("a"))?;
    assert_eq!(fs::read(m.join("kept/a"))?, b"synced|pending+more");
    assert_eq!(fx.fs.pending_bytes(), 12 + 19);

    let report = fx.fs.power_cut(Fate::DropAll, 0)?;
    assert_eq!(report.dropped_bytes(), 12 + 19);
    assert_eq!(fs::read(m.join("kept/a"))?, b"synced|");
    assert_eq!(fs::metadata(m.join("copy"))?.len(), 0);
    // After the remount the two names are found to be one file again.
    fs::hard_link(m.join("kept/a"), m.join("b"))?;
    fx.fs.power_cut(Fate::DropAll, 0)?;
    OpenOptions::new()
        .append(true)
        .open(m.join("b"))?
        .write_all(b"x")?;
    assert_eq!(fs::read(m.join("kept/a"))?, b"synced|x");
    Ok(())
}

#[test]
fn a_busy_mount_is_detached_on_drop() -> Result<()> {
    let Some(fx) = setup()? else {
        return Ok(());
    };
    let path = fx.fs.mountpoint().join("busy");
    let mnt = fx.fs.mountpoint().to_path_buf();
    let mut f = File::create(&path)?;
    f.write_all(b"x")?;
    drop(fx.fs);
    // Detached: the mountpoint is an empty directory again, and the stale handle
    // fails instead of hanging.
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    assert!(!mounts.contains(&*mnt.to_string_lossy()), "{mounts}");
    assert!(f.write_all(b"y").is_err() || f.sync_data().is_err());
    drop(f);
    Ok(())
}

#[test]
fn a_killed_process_loses_what_it_did_not_sync() -> Result<()> {
    let Some(mut fx) = setup()? else {
        return Ok(());
    };
    let m = fx.fs.mountpoint().to_path_buf();
    fs::write(m.join("wal"), b"")?;
    File::open(m.join("wal"))?.sync_all()?;
    // A separate process appends and keeps the file open; it is killed mid-run.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3>>wal; printf 'rec1;' >&3; printf 'rec2;' >&3; touch ready; exec sleep 60")
        .current_dir(&m)
        .spawn()?;
    let t0 = std::time::Instant::now();
    while !m.join("ready").exists() {
        assert!(t0.elapsed().as_secs() < 10, "child did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(fs::read(m.join("wal"))?, b"rec1;rec2;");
    child.kill()?;
    child.wait()?;
    let report = fx.fs.power_cut(Fate::DropAll, 0)?;
    assert_eq!(report.dropped_bytes(), 10);
    assert!(!report.detached, "the killed process was waited for");
    assert_eq!(fs::read(m.join("wal"))?, b"");
    assert!(m.join("ready").exists(), "metadata survives");
    Ok(())
}

#[test]
fn a_failing_device_gives_real_eio_on_fsync_or_write_and_heals() -> Result<()> {
    use sofamq_lazyfs::IoFault;
    let Some(fx) = setup()? else {
        return Ok(());
    };
    let path = fx.fs.mountpoint().join("log");
    let synced = pattern(8_000, 3);
    let mut f = File::create(&path)?;
    f.write_all(&synced)?;
    f.sync_data()?;
    // fdatasync fails with EIO, and the pages it could not write back are gone.
    fx.fs.fail(Some(IoFault::Fsync));
    f.write_all(&pattern(3_000, 4))?;
    let e = f.sync_data().expect_err("fdatasync must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(fx.fs.pending_bytes(), 0);
    assert_eq!(fs::read(fx.backing.path().join("log"))?, synced);
    // A failing write: the system call itself answers EIO.
    fx.fs.fail(Some(IoFault::Write));
    let e = f.write_at(b"more", 100).expect_err("write must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Healed: writes and syncs work again.
    fx.fs.fail(None);
    f.write_at(b"more", 100)?;
    f.sync_data()?;
    let mut want = synced.clone();
    want[100..104].copy_from_slice(b"more");
    assert_eq!(
        &fs::read(fx.backing.path().join("log"))?[..8_000],
        &want[..]
    );
    Ok(())
}
