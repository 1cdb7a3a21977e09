//! virtio-net transmit and receive paths: guest memory, both queues and the backend's
//! stream of length-prefixed frames come from the fuzz input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vessel_vmm::devices::virtio::fuzzing::fuzz_net(data);
});
