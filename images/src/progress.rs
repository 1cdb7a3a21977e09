//! Pull progress: indicatif bars on a terminal, plain lines otherwise, nothing when quiet.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Where progress goes for one pull.
#[derive(Clone)]
pub enum Progress {
    /// Nothing is shown.
    Quiet,
    /// One line per event on stderr.
    Lines,
    /// Bars on the terminal.
    Bars(MultiProgress),
}

/// Progress of one blob.
pub enum BlobProgress {
    /// Nothing is shown.
    Quiet,
    /// Lines: the short digest names the blob.
    Lines(String),
    /// A bar.
    Bar(ProgressBar),
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise; nothing when `enabled` is false.
    pub fn new(enabled: bool) -> Progress {
        if !enabled {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars(MultiProgress::new())
        } else {
            Progress::Lines
        }
    }

    /// A message about the pull as a whole.
    pub fn note(&self, msg: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("{msg}"),
            Progress::Bars(m) => {
                let _ = m.println(msg);
            }
        }
    }

    /// A blob the store already has.
    pub fn present(&self, name: &str) {
        self.note(&format!("{name}: already present"));
    }

    /// Starts showing a blob download of `size` bytes named `name` (a short digest).
    pub fn blob(&self, name: &str, size: u64) -> BlobProgress {
        match self {
            Progress::Quiet => BlobProgress::Quiet,
            Progress::Lines => {
                eprintln!("{name}: downloading ({size} bytes)");
                BlobProgress::Lines(name.to_string())
            }
            Progress::Bars(m) => {
                let bar = m.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix}: {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(name.to_string());
                BlobProgress::Bar(bar)
            }
        }
    }
}

impl BlobProgress {
    /// `n` more bytes arrived.
    pub fn inc(&self, n: u64) {
        if let BlobProgress::Bar(b) = self {
            b.inc(n);
        }
    }

    /// The blob is done (`what`: "done", "already present", "failed").
    pub fn finish(&self, what: &str) {
        match self {
            BlobProgress::Quiet => {}
            BlobProgress::Lines(name) => eprintln!("{name}: {what}"),
            BlobProgress::Bar(b) => b.finish_with_message(what.to_string()),
        }
    }
}
