# Sourced by the scripts in scripts/bench/: starting and stopping the `petrel serve` a
# benchmark runs against.

# wait_for_banner PID FILE: succeeds once FILE (the server's stdout) has serve's
# "petrel: serving on" line; fails if the server exits first or 60 s pass.
wait_for_banner() {
  local pid=$1 out=$2
  for _ in $(seq 600); do
    grep -q '^petrel: serving on' "$out" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# stop_server PID: SIGTERM (graceful shutdown), up to 30 s to exit, then SIGKILL. Does
# nothing for an empty PID or a process that is already gone.
stop_server() {
  local pid=$1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# make_test_cert DIR: a fresh self-signed P-256 certificate for the name `localhost`
# (openssl), DIR/tls.crt and DIR/tls.key, for benchmarks with TLS=1; appends the
# matching [tls] table to DIR/petrel.toml when that file exists, and sets `tls_args` to
# the bench flags that trust it.
make_test_cert() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
  if [[ -f $dir/petrel.toml ]]; then
    printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$dir/tls.crt" "$dir/tls.key" >>"$dir/petrel.toml"
  fi
  tls_args=(--tls --tls-ca "$dir/tls.crt" --tls-server-name localhost)
}
