# Shared by the benchmark scripts (bench-vs-postfix.sh, profile.sh,
# bench-large.sh): a work directory removed on exit, a build of the
# binary, smtp-sink, and ledgermail relaying to it. Source it, then call
# bench_init NAME; bench_sink ADDR; bench_mta LISTEN SINK ADMIN [TOML...].
export PATH="$PATH:/usr/sbin:/usr/local/go/bin"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bench_init() { # name
  W=$(mktemp -d "/tmp/ledgermail-$1-XXXXXX")
  chmod 755 "$W"
  BENCH_PIDS=()
  trap bench_cleanup EXIT
  go build -o "$W/mta" ./cmd/mta
}

bench_cleanup() {
  [ -n "${BENCH_CLEANUP_HOOK:-}" ] && eval "$BENCH_CLEANUP_HOOK"
  for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}

bench_sink() { # addr
  smtp-sink -u nobody -c "$1" 1000 >/dev/null 2>&1 &
  BENCH_PIDS+=($!)
}

# bench_mta listen sink admin [extra TOML lines]: ledgermail with trusted
# loopback clients (smtp-source does no AUTH), a static relay to the sink
# and the defaults otherwise (fsync on every commit). Sets MTA_PID.
bench_mta() {
  local listen=$1 sink=$2 admin=$3
  shift 3
  cat > "$W/mta.toml" <<TOML
hostname = "lm.test"
data_dir = "$W/lm"
[submission]
listen = ["$listen"]
trusted_networks = ["127.0.0.0/8"]
[submissions]
listen = []
[relay]
mode = "static"
smarthost = "$sink"
[log]
level = "${BENCH_LOG_LEVEL:-warn}"
[admin]
listen = "$admin"
$(printf '%s\n' "$@")
TOML
  "$W/mta" serve -c "$W/mta.toml" 2>"$W/mta.log" &
  MTA_PID=$!
  BENCH_PIDS+=($MTA_PID)
}

wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/${1%:*}/${1##*:}) 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on $1"; exit 1; }
