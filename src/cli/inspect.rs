//! `vessel inspect`: containers (with what each of their host processes may do) and
//! images, as JSON. A name that is a container is reported as one, as docker does.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::container::record::{Record, RecordError, State};
use crate::isolation::host_process;

/// Arguments of `vessel inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Containers (names or IDs) or images (references or IDs).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// A container as `inspect` shows it: its record, and each process it has on the host
/// (the VMM and its helpers in VM mode, the workload in container mode) with its uid,
/// capabilities, seccomp mode and namespaces.
fn container_json(r: &Record) -> Value {
    let processes = if r.state == State::Running {
        host_process::of_container(&r.id)
    } else {
        Vec::new()
    };
    json!({
        "Id": r.id,
        "Name": r.name,
        "Image": r.image,
        "ImageId": r.image_id,
        "Command": r.command,
        "Created": r.created,
        "Isolation": r.isolation.as_str(),
        "State": {
            "Status": format!("{:?}", r.state).to_lowercase(),
            "Pid": r.pid,
            "SupervisorPid": r.supervisor_pid,
            "ExitCode": r.exit_code,
            "OOMKilled": r.oom_killed,
            "StartedAt": r.started,
            "FinishedAt": r.finished,
        },
        "HostProcesses": processes,
    })
}

/// Runs `vessel inspect`.
pub fn inspect(root: &Path, a: InspectArgs) -> Result<ExitCode> {
    let root = &super::containers::absolute(root)?;
    let (store, records) = super::containers::open(root)?;
    let mut out = Vec::new();
    for name in &a.names {
        match records.find(name) {
            Ok(r) => {
                out.push(container_json(&r));
                continue;
            }
            Err(RecordError::NotFound(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("looking up {name}")),
        }
        let img = store
            .image(name)
            .with_context(|| format!("{name} is neither a container nor an image"))?;
        out.push(vessel_images::inspect::inspect_json(&img));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
