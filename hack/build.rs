//! A build script is required for cargo to consider `[build-dependencies]`, which is how
//! this crate unifies features of build-time (host) dependencies such as bindgen and syn.
fn main() {}
