//! Shared pieces of petrel-control's fuzz targets: how fuzz input bytes are read
//! ([`input`]), the token target's fixed key ring and edit format ([`token`]), and the
//! operation-sequence driver with its invariants ([`ops`]).
//!
//! Input formats are hand-rolled (one opcode byte, then fixed-width arguments) rather
//! than `arbitrary`-derived, so that `examples/make_seeds.rs` can *write* real scenarios
//! (a login, a send, a group, a sync) as seed files with the same code that reads them.

pub mod input;
pub mod ops;
pub mod token;
