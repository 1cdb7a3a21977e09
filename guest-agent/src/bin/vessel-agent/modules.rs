//! Loading the kernel modules the host packed into the initramfs.
//!
//! The host writes `/modules/order` (one file name a line, dependencies first) beside the
//! `.ko` files, already decompressed. `module.param=value` words on the kernel command line
//! are the module's parameters: the kernel only applies those to built-in code, and nothing
//! else in the guest would do it for us.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::log;

/// Loads every module listed in `dir/<list>`, in order (`order`: those every VM needs;
/// `volumes.order`: virtio-fs, loaded when a container has volumes). A missing list is an
/// empty one (a kernel with everything built in).
pub fn load_all(dir: &Path, list: &str, cmdline: &str) -> Result<(), String> {
    let order = match std::fs::read_to_string(dir.join(list)) {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}/{list}: {e}", dir.display())),
    };
    for file in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = file.trim_end_matches(".ko").replace('-', "_");
        let params = params_for(&name, cmdline);
        load(&dir.join(file), &params).map_err(|e| format!("loading module {name}: {e}"))?;
    }
    Ok(())
}

/// The `param=value` words for module `name` from the command line, space-separated.
fn params_for(name: &str, cmdline: &str) -> String {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| {
            let (module, rest) = w.split_once('.')?;
            (module.replace('-', "_") == name && rest.contains('=')).then_some(rest)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn load(path: &Path, params: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = CString::new(params)?;
    // SAFETY: finit_module reads the open fd and the NUL-terminated parameter string,
    // both valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Already loaded (or built in under the same name) is what we wanted.
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(e);
    }
    if !params.as_bytes().is_empty() {
        log!("{} loaded with {:?}", path.display(), params);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::params_for;

    #[test]
    fn picks_only_this_modules_params() {
        let c = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-blk.queue_depth=8 foo.bar";
        assert_eq!(params_for("virtio_mmio", c), "device=4K@0xd0000000:5");
        assert_eq!(params_for("virtio_blk", c), "queue_depth=8");
        assert_eq!(params_for("foo", c), "");
        assert_eq!(params_for("console", c), "");
    }
}
