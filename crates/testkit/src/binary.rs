//! Builds the `sofamq` binary the process-level tests start, when it is missing or older
//! than the sources (see [`crate::sofamq_bin`]).

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, bail};

/// Where `cargo build` must put `sofamq` for it to land at a given path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// `--target-dir`.
    pub target_dir: PathBuf,
    /// `--profile` (`dev` for the `debug` directory).
    pub profile: String,
    /// `--target`, when the path is `<target-dir>/<triple>/<profile>/sofamq`.
    pub triple: Option<String>,
}

impl Layout {
    /// The layout of `bin` = `<target-dir>[/<triple>]/<profile-dir>/sofamq`. A target
    /// directory is recognised by the CACHEDIR.TAG cargo writes into it.
    pub(crate) fn of(bin: &Path) -> Option<Layout> {
        let profile_dir = bin.parent()?;
        let name = profile_dir.file_name()?.to_str()?;
        let profile = match name {
            "debug" => "dev",
            other => other,
        }
        .to_string();
        let above = profile_dir.parent()?;
        if !above.join("CACHEDIR.TAG").exists()
            && let Some(target_dir) = above.parent()
            && target_dir.join("CACHEDIR.TAG").exists()
        {
            return Some(Layout {
                target_dir: target_dir.to_path_buf(),
                profile,
                triple: Some(above.file_name()?.to_str()?.to_string()),
            });
        }
        Some(Layout {
            target_dir: above.to_path_buf(),
            profile,
            triple: None,
        })
    }

    /// The `cargo` arguments that build `sofamq` into this layout.
    fn build_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["build", "-p", "sofamq-cli", "--bin", "sofamq", "--profile"]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.push(self.profile.clone().into());
        if let Some(t) = &self.triple {
            args.push("--target".into());
            args.push(t.into());
        }
        args.push("--target-dir".into());
        args.push(self.target_dir.clone().into());
        args
    }
}

/// The newest modification time of a source `sofamq` may be built from: every file under
/// `root/crates` (but in `target` or hidden directories), the workspace Cargo.toml and
/// Cargo.lock, and `.cargo/config.toml` if there is one.
pub(crate) fn newest_source(root: &Path) -> anyhow::Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for f in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        if let Ok(m) = std::fs::metadata(root.join(f)) {
            newest = newest.max(m.modified()?);
        }
    }
    let mut dirs = vec![root.join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let name = entry.file_name();
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    dirs.push(entry.path());
                }
            } else {
                newest = newest.max(entry.metadata()?.modified()?);
            }
        }
    }
    Ok(newest)
}

/// What [`ensure_built`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The binary was there and newer than every source.
    Fresh,
    /// `cargo build` ran (and may have found nothing to do).
    Built,
}

/// Makes `bin` exist and be newer than every source under `root`, running `cargo()` with
/// the build arguments of `bin`'s [`Layout`] if it is not. An exclusive lock on a file next
/// to `bin` makes concurrent callers (test threads, or test processes under nextest) wait
/// for one build and then find the binary fresh. After a build the binary's modification
/// time is raised to the build's start (cargo leaves an up-to-date binary untouched, and a
/// source it does not depend on, such as a test, may be newer), so that the next caller
/// does not run cargo again.
pub(crate) fn ensure_built(
    bin: &Path,
    root: &Path,
    cargo: impl Fn() -> Command,
) -> anyhow::Result<Outcome> {
    let layout = Layout::of(bin)
        .with_context(|| format!("{}: not <target-dir>/<profile>/sofamq", bin.display()))?;
    let dir = bin.parent().context("binary without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let lock_path = dir.join(".sofamq-bin.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("{}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let newest = newest_source(root)?;
    let built_at = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    if built_at.is_some_and(|t| t >= newest) {
        return Ok(Outcome::Fresh);
    }
    let why = if built_at.is_some() {
        "is older than the sources"
    } else {
        "is missing"
    };
    let start = SystemTime::now();
    let mut cmd = cargo();
    cmd.args(layout.build_args())
        .current_dir(root)
        .stdin(Stdio::null())
        // Cargo prints its progress on stderr; keep stdout for the test's own output.
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if layout.triple.is_none() {
        cmd.env_remove("CARGO_BUILD_TARGET");
    }
    // Straight to stderr: libtest captures `eprintln!`, and a test that waits minutes for
    // a build should say why.
    let _ = writeln!(
        std::io::stderr(),
        "sofamq-testkit: {} {why}; building it: {cmd:?}",
        bin.display()
    );
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("building {} failed ({status})", bin.display());
    }
    if !bin.exists() {
        bail!("cargo built sofamq, but not at {}", bin.display());
    }
    // Opened read-only: setting the times needs ownership, not write access, and writing an
    // executable another process runs fails (ETXTBSY).
    let raised = File::open(bin).and_then(|f| f.set_modified(start.max(newest)));
    if let Err(e) = raised {
        // Only costs the next caller a cargo run that finds nothing to do.
        tracing::warn!(bin = %bin.display(), error = %e, "could not raise the binary's mtime");
    }
    Ok(Outcome::Built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn touch(path: &Path, t: SystemTime) {
        File::open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn layout_of_the_usual_paths() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::create_dir_all(target.join("x86_64-unknown-linux-gnu/release")).unwrap();
        std::fs::create_dir_all(target.join("debug")).unwrap();
        std::fs::write(target.join("CACHEDIR.TAG"), "").unwrap();
        assert_eq!(
            Layout::of(&target.join("debug/sofamq")),
            Some(Layout {
                target_dir: target.clone(),
                profile: "dev".into(),
                triple: None
            })
        );
        assert_eq!(Layout::of(&target.join("ci/sofamq")).unwrap().profile, "ci");
        assert_eq!(
            Layout::of(&target.join("x86_64-unknown-linux-gnu/release/sofamq")),
            Some(Layout {
                target_dir: target.clone(),
                profile: "release".into(),
                triple: Some("x86_64-unknown-linux-gnu".into())
            })
        );
        let args = Layout::of(&target.join("x86_64-unknown-linux-gnu/release/sofamq"))
            .unwrap()
            .build_args();
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let target = target.to_str().unwrap();
        assert_eq!(
            args,
            [
                "build",
                "-p",
                "sofamq-cli",
                "--bin",
                "sofamq",
                "--profile",
                "release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                target
            ]
        );
    }

    /// A source tree and a target directory, with a fake `cargo` (a shell script, run by
    /// `sh` so it is never executed while being written) that logs its arguments and, if
    /// told to, writes the binary.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        bin: PathBuf,
        calls: PathBuf,
        script: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("src");
            std::fs::create_dir_all(root.join("crates/a/src")).unwrap();
            std::fs::create_dir_all(root.join("crates/a/target")).unwrap();
            std::fs::write(root.join("Cargo.toml"), "").unwrap();
            std::fs::write(root.join("crates/a/src/lib.rs"), "").unwrap();
            let target = dir.path().join("target");
            std::fs::create_dir_all(target.join("debug")).unwrap();
            std::fs::write(target.join("CACHEDIR.TAG"), "").unwrap();
            let calls = dir.path().join("calls");
            let script = dir.path().join("cargo.sh");
            let f = Fixture {
                bin: target.join("debug/sofamq"),
                _dir: dir,
                root,
                calls,
                script,
            };
            f.fake_cargo("sleep 0.2; echo built > \"$bin\"");
            f
        }

        /// The fake cargo logs its arguments, then runs `then` (with `$bin` set).
        fn fake_cargo(&self, then: &str) {
            std::fs::write(
                &self.script,
                format!(
                    "echo \"$*\" >> '{}'\nbin='{}'\n{then}\n",
                    self.calls.display(),
                    self.bin.display()
                ),
            )
            .unwrap();
        }

        fn ensure(&self) -> anyhow::Result<Outcome> {
            let script = self.script.clone();
            ensure_built(&self.bin, &self.root, move || {
                let mut c = Command::new("sh");
                c.arg(&script);
                c
            })
        }

        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(&self.calls)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect()
        }
    }

    #[test]
    fn builds_when_missing_then_not_until_a_source_is_newer() {
        let f = Fixture::new();
        assert_eq!(f.ensure().unwrap(), Outcome::Built);
        let calls = f.calls();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].starts_with("build -p sofamq-cli --bin sofamq --profile dev --target-dir "),
            "{}",
            calls[0]
        );
        assert_eq!(f.ensure().unwrap(), Outcome::Fresh);
        assert_eq!(f.calls().len(), 1);

        // A source edited after the build: built again.
        let later = SystemTime::now() + Duration::from_secs(60);
        touch(&f.root.join("crates/a/src/lib.rs"), later);
        assert_eq!(f.ensure().unwrap(), Outcome::Built);
        assert_eq!(f.calls().len(), 2);
        assert_eq!(f.ensure().unwrap(), Outcome::Fresh);

        // Files in target directories are not sources.
        let much_later = later + Duration::from_secs(60);
        std::fs::write(f.root.join("crates/a/target/x"), "").unwrap();
        touch(&f.root.join("crates/a/target/x"), much_later);
        assert_eq!(f.ensure().unwrap(), Outcome::Fresh);
        assert_eq!(f.calls().len(), 2);
    }

    #[test]
    fn a_build_that_finds_nothing_to_do_is_not_repeated() {
        let f = Fixture::new();
        f.ensure().unwrap();
        // A test file the binary does not depend on is edited: cargo leaves the binary as
        // it is, and the next caller must not run cargo again.
        f.fake_cargo("true");
        let later = SystemTime::now() + Duration::from_secs(60);
        touch(&f.root.join("Cargo.toml"), later);
        assert_eq!(f.ensure().unwrap(), Outcome::Built);
        assert_eq!(f.ensure().unwrap(), Outcome::Fresh);
        assert_eq!(f.calls().len(), 2);
    }

    #[test]
    fn a_failed_build_is_an_error() {
        let f = Fixture::new();
        f.fake_cargo("exit 101");
        let e = f.ensure().unwrap_err();
        assert!(format!("{e:#}").contains("failed"), "{e:#}");
        f.fake_cargo("true");
        let e = f.ensure().unwrap_err();
        assert!(format!("{e:#}").contains("not at"), "{e:#}");
    }

    #[test]
    fn concurrent_callers_build_once() {
        let f = Arc::new(Fixture::new());
        let n = 6;
        let go = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (f, go) = (f.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    f.ensure().unwrap()
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(f.calls().len(), 1, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Built).count(), 1);
    }
}
