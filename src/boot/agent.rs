//! Finding the guest agent: a static (musl) `vessel-agent` binary that becomes `/init`.
//!
//! Looked for, in order: `$VESSEL_AGENT`; beside a cargo-built `vessel`
//! (`target/x86_64-unknown-linux-musl/{release,debug}/vessel-agent`, the newer of the two);
//! an installed layout (`<prefix>/bin/vessel` with `<prefix>/lib/vessel/vessel-agent`).

use std::path::{Path, PathBuf};

use super::BootError;

/// The agent binary to pack.
pub fn find() -> Result<PathBuf, BootError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("VESSEL_AGENT") {
        let p = PathBuf::from(p);
        check(&p)?;
        return Ok(p);
    }
    let exe =
        std::env::current_exe().map_err(|e| BootError::io("locating the vessel binary", e))?;
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    // target/<profile>/vessel, or target/<profile>/deps/<test> for test binaries.
    let mut candidates = Vec::new();
    for target in [exe_dir.parent(), exe_dir.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
    {
        let musl = target.join("x86_64-unknown-linux-musl");
        let mut builds: Vec<PathBuf> = ["release", "debug"]
            .iter()
            .map(|p| musl.join(p).join("vessel-agent"))
            .filter(|p| p.is_file())
            .collect();
        builds.sort_by_key(|p| std::cmp::Reverse(p.metadata().and_then(|m| m.modified()).ok()));
        candidates.extend(builds);
    }
    candidates.push(exe_dir.join("../lib/vessel/vessel-agent"));
    candidates.push(PathBuf::from("/usr/local/lib/vessel/vessel-agent"));
    for c in candidates {
        if c.is_file() {
            check(&c)?;
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(BootError::Agent(format!(
        "no vessel-agent binary found (tried $VESSEL_AGENT, {}); build it with \
         `cargo build --release -p vessel-agent --target x86_64-unknown-linux-musl`",
        tried.join(", ")
    )))
}

/// Refuses a dynamically linked binary: the initramfs has no libc for it.
fn check(path: &Path) -> Result<(), BootError> {
    let data =
        std::fs::read(path).map_err(|e| BootError::io(format!("reading {}", path.display()), e))?;
    if !data.starts_with(b"\x7fELF") {
        return Err(BootError::Agent(format!(
            "{} is not an ELF binary",
            path.display()
        )));
    }
    if has_interpreter(&data) {
        return Err(BootError::Agent(format!(
            "{} is dynamically linked; the agent must be a static musl build",
            path.display()
        )));
    }
    Ok(())
}

/// Whether an ELF64 file has a PT_INTERP program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    let rd = |o: usize, n: usize| elf.get(o..o + n);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2))
    else {
        return false;
    };
    let phoff = u64::from_le_bytes(phoff.try_into().expect("8")) as usize;
    let phentsize = u16::from_le_bytes(phentsize.try_into().expect("2")) as usize;
    let phnum = u16::from_le_bytes(phnum.try_into().expect("2")) as usize;
    (0..phnum).any(|i| {
        rd(phoff + i * phentsize, 4).map(|t| u32::from_le_bytes(t.try_into().expect("4")))
            == Some(3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_vessel_binary_is_dynamic() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(super::has_interpreter(&exe));
    }
}
