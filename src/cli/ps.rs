//! `vessel ps`: the containers of a state root, as a table or JSON lines.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::container::now;
use crate::container::record::{Record, State};

/// Arguments of `vessel ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: table or json (one object per line).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn ago(secs: i64) -> String {
    let d = (now() - secs).max(0);
    match d {
        0..=1 => "Less than a second".to_string(),
        2..=59 => format!("{d} seconds"),
        60..=3599 => format!("{} minutes", d / 60),
        3600..=86399 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86400),
    }
}

fn status(r: &Record) -> String {
    match r.state {
        State::Created => "Created".to_string(),
        State::Running => format!("Up {}", ago(r.started.unwrap_or(r.created)).to_lowercase()),
        State::Exited => {
            let code = r
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".to_string());
            let oom = if r.oom_killed { " (OOM killed)" } else { "" };
            match r.finished {
                Some(f) => format!("Exited ({code}){oom} {} ago", ago(f).to_lowercase()),
                None => format!("Exited ({code}){oom}"),
            }
        }
    }
}

fn quote_command(args: &[String]) -> String {
    let s = args.join(" ");
    let s: String = if s.chars().count() > 20 {
        s.chars().take(19).chain(std::iter::once('…')).collect()
    } else {
        s
    };
    format!("\"{s}\"")
}

/// docker's PORTS: what a running container publishes, `0.0.0.0:8080->80/tcp, ...`.
fn ports_column(root: &Path, r: &Record) -> String {
    if r.state != State::Running {
        return String::new();
    }
    super::containers::published(root, &r.id)
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `vessel ps`.
pub fn ps(root: &Path, args: PsArgs) -> Result<ExitCode> {
    let root = &super::containers::absolute(root)?;
    let (_store, records) = super::containers::open(root)?;
    let list: Vec<Record> = records
        .list()?
        .into_iter()
        .filter(|r| args.all || r.state == State::Running)
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in &list {
            writeln!(out, "{}", short(&r.id))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == "json" {
        for r in &list {
            let v = serde_json::json!({
                "ID": r.id,
                "Names": r.name,
                "Image": r.image,
                "ImageID": r.image_id,
                "Command": r.command,
                "Created": r.created,
                "State": match r.state { State::Created => "created", State::Running => "running", State::Exited => "exited" },
                "Status": status(r),
                "ExitCode": r.exit_code,
                "StartedAt": r.started,
                "FinishedAt": r.finished,
                "OOMKilled": r.oom_killed,
                "Isolation": r.isolation.as_str(),
                "Pid": r.pid,
                "Ports": super::containers::published(root, &r.id)
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>(),
            });
            writeln!(out, "{v}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|r| {
            [
                short(&r.id).to_string(),
                r.image.clone(),
                quote_command(&r.command),
                format!("{} ago", ago(r.created)),
                status(r),
                ports_column(root, r),
                r.name.clone(),
                r.isolation.as_str().to_string(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
        "ISOLATION",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = *w));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(ExitCode::SUCCESS)
}
