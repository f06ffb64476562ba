//! Mounts a LazyFs and holds it until stdin reaches EOF; then cuts the power once.
use std::io::Read;
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut fs = sofamq_lazyfs::LazyFs::mount(args[1].as_ref(), args[2].as_ref())?;
    println!("mounted");
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    println!("pending {}", fs.pending_bytes());
    let r = fs.power_cut(sofamq_lazyfs::Fate::Torn, 1)?;
    println!(
        "cut: dropped {} kept {} files {}",
        r.dropped_bytes(),
        r.kept_bytes(),
        r.files.len()
    );
    Ok(())
}
