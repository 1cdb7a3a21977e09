//! virtio-blk request path: guest memory, queue layout, descriptor chains and
//! request headers all come from the fuzz input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vessel_vmm::devices::virtio::fuzzing::fuzz_block(data);
});
