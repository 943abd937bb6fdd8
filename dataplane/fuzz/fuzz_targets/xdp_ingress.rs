//! Fuzz target: whole Ethernet frames into the AF_XDP ingress (classifier, neighbour
//! table, ARP, userspace-TCP shards, per-connection frame decoding), interleaved with
//! application writes, closes and aborts and clock steps. See
//! [`petrel_dataplane_fuzz`] for the record format and the checks made after each one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_dataplane_fuzz::{Lab, decode};

fuzz_target!(|data: &[u8]| {
    let mut lab = Lab::new();
    for record in decode(data) {
        lab.feed(&record);
    }
    lab.settle();
});
