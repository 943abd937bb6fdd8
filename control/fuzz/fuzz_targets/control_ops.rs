//! Fuzz target: a sequence of operations against the sans-IO control plane with the
//! in-memory storage engine; see [`petrel_control_fuzz::ops`] for the steps and the
//! invariants checked after each one (no ack before the write is durable, contiguous
//! seqs, nothing sent after a close, no connection or session left at the end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_control_fuzz::ops::{World, decode};

fuzz_target!(|data: &[u8]| {
    World::new().play(&decode(data));
});
