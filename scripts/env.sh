# Sourced by Petrel's scripts: one shared cargo target directory outside the clone, so the
# slow RocksDB C++ build is done once per machine and profile, not once per checkout.
# LEAD NOTE (temporary, do NOT commit this file): this worktree builds into its own copy of
# the target dir, because parallel worktrees sharing one dir overwrite each other's
# target/debug/petrel binary (CARGO_BIN_EXE_petrel), so e2e tests ran the wrong server.
# The copy already holds the debug RocksDB build. The lead restores this file at merge.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/petrel-target-ops}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
