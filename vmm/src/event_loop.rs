//! The VMM's one event loop: an epoll set over the queue-notify eventfds (KVM
//! ioeventfds), device backends (e.g. the console socket), the power-off and reset
//! eventfds and the exit signal that vCPUs and stop handles write. It returns when
//! the VM ends.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::bus::lock_device;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::BackendStatus;
use crate::error::VmmError;
use crate::exit::ExitReason;
use crate::vcpu::ExitSignal;

#[derive(Clone, Copy, Debug)]
enum Token {
    Exit,
    Stop,
    PowerOff,
    Reset,
    Queue { device: usize, queue: usize },
    Backend { device: usize },
    BackendOutput { device: usize },
}

/// Inputs of the event loop.
pub struct EventLoop<'a> {
    /// The VM's exit signal (vCPU exits and stop handles).
    pub exit: &'a Arc<ExitSignal>,
    /// Power-off eventfd (ACPI S5).
    pub poweroff_evt: &'a vmm_sys_util::eventfd::EventFd,
    /// Reset eventfd (i8042, ACPI reset register).
    pub reset_evt: &'a vmm_sys_util::eventfd::EventFd,
    /// virtio transports.
    pub transports: &'a [Arc<Mutex<MmioTransport>>],
    /// When to give up with [`ExitReason::Timeout`].
    pub deadline: Option<Instant>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |e| VmmError::Io(what, e)
}

impl EventLoop<'_> {
    /// Runs until the VM ends and returns why.
    pub fn run(&self) -> Result<ExitReason, VmmError> {
        let epoll = Epoll::new().map_err(io("epoll_create"))?;
        let mut tokens: Vec<Token> = Vec::new();
        let mut add = |fd: i32, events: EventSet, token: Token| -> Result<(), VmmError> {
            let event = EpollEvent::new(events, tokens.len() as u64);
            tokens.push(token);
            epoll
                .ctl(ControlOperation::Add, fd, event)
                .map_err(io("epoll_ctl"))
        };
        add(self.exit.eventfd().as_raw_fd(), EventSet::IN, Token::Exit)?;
        add(
            self.exit.stop_eventfd().as_raw_fd(),
            EventSet::IN,
            Token::Stop,
        )?;
        add(self.poweroff_evt.as_raw_fd(), EventSet::IN, Token::PowerOff)?;
        add(self.reset_evt.as_raw_fd(), EventSet::IN, Token::Reset)?;
        for (device, t) in self.transports.iter().enumerate() {
            let t = lock_device(t);
            for (queue, evt) in t.queue_evts().iter().enumerate() {
                add(
                    evt.as_raw_fd(),
                    EventSet::IN,
                    Token::Queue { device, queue },
                )?;
            }
            if let Some(fd) = t.backend_fd() {
                add(
                    fd,
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    Token::Backend { device },
                )?;
            }
            // Output the host could not take at once resumes when the fd drains;
            // without this, a slow reader stalls the guest until its next kick.
            if let Some(fd) = t.backend_output_fd() {
                add(
                    fd,
                    EventSet::OUT | EventSet::EDGE_TRIGGERED,
                    Token::BackendOutput { device },
                )?;
            }
        }

        let mut events = vec![EpollEvent::default(); tokens.len().max(1)];
        loop {
            let timeout_ms = match self.deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(ExitReason::Timeout);
                    }
                    // Round up so we never spin on a sub-millisecond remainder.
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            let n = match epoll.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmmError::Io("epoll_wait", e)),
            };
            for event in &events[..n] {
                let Some(&token) = tokens.get(event.data() as usize) else {
                    continue;
                };
                match token {
                    Token::Exit => {
                        let _ = self.exit.eventfd().read();
                        if let Some(outcome) = self.exit.take() {
                            return outcome;
                        }
                    }
                    Token::Stop => return Ok(ExitReason::Stopped),
                    Token::PowerOff => return Ok(ExitReason::PowerOff),
                    Token::Reset => return Ok(ExitReason::Reset),
                    Token::Queue { device, queue } => {
                        lock_device(&self.transports[device]).handle_queue_event(queue);
                    }
                    Token::BackendOutput { device } => {
                        // Closing is decided on the input side; a writable output has
                        // nothing more to report.
                        let _ = lock_device(&self.transports[device]).handle_backend_event();
                    }
                    Token::Backend { device } => {
                        let status = lock_device(&self.transports[device]).handle_backend_event();
                        if status == BackendStatus::Closed {
                            if let Some(fd) = lock_device(&self.transports[device]).backend_fd() {
                                let _ =
                                    epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                            }
                        }
                    }
                }
            }
        }
    }
}
