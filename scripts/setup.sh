#!/usr/bin/env bash
# Installs what building and testing Petrel needs on a fresh Debian machine, and nothing
# that is already there. Safe to run again. Called by scripts/run-server.sh,
# scripts/test.sh and .ci/run.
#
# - clang + libclang-dev: bindgen (librocksdb-sys) needs libclang; RocksDB's C++ builds
#   with the system C++ compiler.
# - linux-libc-dev + libbpf-dev: headers for the XDP filter (vendor/xdp), which
#   dataplane/build.rs compiles with clang -target bpf.
# - iproute2, ethtool, iputils-ping: scripts/veth-lab.sh and the AF_XDP integration test.
# - dpdk-dev + libdpdk-dev (DPDK 22.11, found with pkg-config): the cargo feature `dpdk`
#   (the DPDK dataplane), which scripts/test.sh and CI turn on. PETREL_DPDK=0 skips them
#   (and test.sh then builds without the feature).
# - nginx + libnginx-mod-stream (Debian's nginx and its stream module): tests/nginx.rs
#   runs the shipped scripts/deploy/nginx/nginx.conf in front of Petrel.
# - nats-server (Debian's): the cluster's nodes talk over NATS (docs/CLUSTER.md);
#   scripts/cluster-lab.sh and tests/cluster.rs start their own on a port of their own.
# - chromium (Debian's; fonts-dejavu-core for its text) + the web client's npm packages (`npm ci --prefix web`:
#   protobufjs for the page, puppeteer-core and pngjs for its driver, with the machine's
#   Node.js): tests/web_client.rs drives the web client in headless Chromium.
# - Python packages of examples/python (protobuf, grpcio-tools): the interop test runs
#   a Python client against the server.
# - schemathesis (PyPI): tests/api_schemathesis.rs fuzzes the server API against its
#   OpenAPI document.
# - moto[server] (PyPI): an S3-compatible server on loopback for tests/media_s3.rs (the
#   media service with `[media.s3]`).
# - Rust itself is expected from rustup (the machine image provides it).
set -euo pipefail

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
pkgs=(clang libclang-dev pkg-config linux-libc-dev libbpf-dev iproute2 ethtool iputils-ping
  nginx libnginx-mod-stream chromium fonts-dejavu-core nats-server)
if [[ ${PETREL_DPDK:-1} != 0 ]]; then
  pkgs+=(dpdk-dev libdpdk-dev)
fi
for pkg in "${pkgs[@]}"; do
  have_pkg "$pkg" || need_apt+=("$pkg")
done

if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The web client's packages, as its lock file pins them (again when the lock changed).
web="$(dirname "$0")/../web"
if [[ ! -f $web/node_modules/.package-lock.json || $web/package-lock.json -nt $web/node_modules/.package-lock.json ]]; then
  command -v npm >/dev/null || { echo "setup: npm not found (Node.js with npm is expected from the machine image)" >&2; exit 1; }
  echo "setup: installing the web client's npm packages" >&2
  PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix "$web" --no-audit --no-fund --loglevel=error
fi

if ! python3 -c "import google.protobuf, grpc_tools" >/dev/null 2>&1; then
  echo "setup: installing the Python interop client's packages" >&2
  python3 -m pip install -q -r "$(dirname "$0")/../examples/python/requirements.txt"
fi

# schemathesis: tests/api_schemathesis.rs fuzzes the server API against docs/openapi.json.
if ! python3 -c "import schemathesis.cli" >/dev/null 2>&1; then
  echo "setup: installing schemathesis (API fuzzing against its OpenAPI document)" >&2
  python3 -m pip install -q "schemathesis>=4.3,<5"
fi

# moto_server: tests/media_s3.rs keeps media blobs in its S3 buckets.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing moto[server] (an S3-compatible test server)" >&2
  python3 -m pip install -q "moto[server]>=5,<6"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
