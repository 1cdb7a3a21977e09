//! How the host names the agent's channel: a generic virtio-serial port both VMMs give
//! this name, so the agent finds it without depending on probe order or device numbers
//! (QEMU numbers a `virtserialport` from 1, the built-in VMM from 0).

/// The port's name (`/sys/class/virtio-ports/vport*/name` in the guest).
pub const AGENT_PORT: &str = "vessel.agent";
