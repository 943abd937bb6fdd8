# Sourced by Petrel's scripts: one shared cargo target directory outside the clone, so the
# slow RocksDB C++ build is done once per machine and profile, not once per checkout.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/petrel-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
