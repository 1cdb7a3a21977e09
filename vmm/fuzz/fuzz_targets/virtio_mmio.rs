//! virtio-mmio transport: register accesses, driver handshakes and queue
//! notifications (over a virtio-blk device) come from the fuzz input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vessel_vmm::devices::virtio::fuzzing::fuzz_mmio(data);
});
