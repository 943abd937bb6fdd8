#!/usr/bin/env bash
# Builds the deployable artefact: petrel-VERSION-TARGET.tar.gz with the release binary,
# the systemd unit, the sysctl.d and limits.d files, an example config and the operations
# guide, laid out as they install (docs/OPERATIONS.md, "Release artefact"). Prints the
# tarball's path and the sizes of the binary and the tarball.
#
# Usage: scripts/package.sh [OUT_DIR]   (default: dist/ in the clone)
# The version is the workspace's (Cargo.toml), plus the git commit, and "-dirty" when the
# working tree has uncommitted changes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out_dir=${1:-dist}

cargo build --release --locked --bin petrel
bin="$CARGO_TARGET_DIR/release/petrel"

version=$("$bin" --version | awk '{print $2}')
commit=$(git rev-parse --short=10 HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown && -n $(git status --porcelain --untracked-files=no) ]]; then
  commit="$commit-dirty"
fi
target=$(rustc -vV | sed -n 's/^host: //p')
name="petrel-$version-$commit-$target"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
install -D -m 0755 "$bin" "$root/bin/petrel"
install -D -m 0644 scripts/deploy/petrel.service "$root/systemd/petrel.service"
install -D -m 0644 scripts/deploy/petrel.toml "$root/etc/petrel.toml.example"
install -D -m 0644 scripts/deploy/sysctl.d/90-petrel.conf "$root/sysctl.d/90-petrel.conf"
install -D -m 0644 scripts/deploy/limits.d/90-petrel.conf "$root/limits.d/90-petrel.conf"
install -D -m 0755 scripts/deploy/nic-tune.sh "$root/bin/nic-tune.sh"
install -D -m 0644 docs/OPERATIONS.md "$root/doc/OPERATIONS.md"
install -D -m 0644 docs/CONFIGURATION.md "$root/doc/CONFIGURATION.md"
cat >"$root/VERSION" <<EOF
petrel $version
commit $commit
target $target
built $(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
(cd "$root" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum) \
  >"$stage/SHA256SUMS"
mv "$stage/SHA256SUMS" "$root/SHA256SUMS"

mkdir -p "$out_dir"
tarball="$out_dir/$name.tar.gz"
# Owner and order fixed so two packagings of one commit differ only in the VERSION date.
tar --owner=0 --group=0 --numeric-owner --sort=name -C "$stage" -czf "$tarball" "$name"

size() { stat -c %s "$1" | numfmt --to=iec-i --suffix=B --format=%.1f; }
echo "package: $tarball"
echo "binary:  bin/petrel $(size "$bin") ($(stat -c %s "$bin") bytes)"
echo "tarball: $(size "$tarball") ($(stat -c %s "$tarball") bytes)"
tar -tzf "$tarball" | sed 's/^/  /'
