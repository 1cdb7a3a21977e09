//! vessel's guest agent library: the host↔guest protocol shared by the agent (PID 1 in the
//! microVM) and the host, so both sides use one definition of every frame.
//!
//! The channel is one byte stream (a named virtio-serial port in the guest, see
//! [`channel`]). Every message
//! is one length-prefixed frame; see [`frame`] for the wire layout and its bounds, and
//! [`message`] for what each frame means.

pub mod channel;
pub mod disk;
pub mod frame;
pub mod message;

pub use frame::{FrameError, FrameReader, FrameWriter, MAX_PAYLOAD};
pub use message::{
    Confinement, ExitStatus, FileSpec, Message, NetworkSpec, ProcessSpec, RootfsSpec,
    SpawnErrorKind, StreamId, VolumeSpec,
};
