//! vessel: run OCI container images in KVM microVMs, or in namespaces on the host kernel.

mod boot;
mod cli;
mod compare;
mod container;
mod isolation;
mod liveness;

fn main() -> std::process::ExitCode {
    cli::main()
}
