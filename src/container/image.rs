//! Finding (and, per `--pull`, pulling) the image a container runs.

use anyhow::{Context, Result};
use vessel_images::pull::PullOptions;
use vessel_images::{Image, Store};

/// `--pull`: when to fetch the image from its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when the store does not have it.
    Missing,
    /// Every time.
    Always,
    /// Never; fail when it is missing.
    Never,
}

fn pull(store: &Store, name: &str) -> Result<Image> {
    let opts = PullOptions {
        progress: atty_stderr(),
        ..Default::default()
    };
    store
        .pull_blocking(name, &opts)
        .with_context(|| format!("pulling {name}"))
}

fn atty_stderr() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// The image `name` refers to, pulled first when the policy says so.
pub fn resolve(store: &Store, name: &str, policy: PullPolicy) -> Result<Image> {
    if policy == PullPolicy::Always {
        return pull(store, name);
    }
    match store.image(name) {
        Ok(img) => Ok(img),
        Err(e) if e.is_not_found() && policy == PullPolicy::Missing => pull(store, name),
        Err(e) if e.is_not_found() => Err(anyhow::anyhow!(
            "image {name} is not in the store and --pull=never was given"
        )),
        Err(e) => Err(e).with_context(|| format!("looking up image {name}")),
    }
}
