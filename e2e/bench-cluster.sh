#!/usr/bin/env bash
# Throughput of 1, 2 and 3 cluster nodes on this machine (docs/SCALING.md):
# etcd on loopback, N ledgermail nodes with [cluster] on it, one smtp-sink
# as the smarthost, and e2e/loadgen split over the nodes (COUNT/N messages
# and SESSIONS/N sessions each, plaintext, trusted loopback, all at once).
# Accepted: messages / wall time of the slowest loadgen. End to end: until
# every node's queue is empty. Run by `make bench-cluster`.
set -euo pipefail
COUNT=${COUNT:-6000} SESSIONS=${SESSIONS:-24} SIZE=${SIZE:-4096} RUNS=${RUNS:-alone 1 2 3}
source "$(dirname "$0")/benchlib.sh"
command -v etcd >/dev/null || { echo "bench-cluster: etcd not installed (make deps)"; exit 1; }
bench_init cluster
go build -o "$W/loadgen" ./e2e/loadgen
SINK=127.0.0.1:23527 ETCD=127.0.0.1:23791
bench_sink "$SINK"
etcd --data-dir "$W/etcd" --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster default=http://127.0.0.1:23801 --log-level error 2>"$W/etcd.log" &
BENCH_PIDS+=($!)
wait_port "$SINK"; wait_port "$ETCD"
now() { date +%s.%N; }
echo "load: $COUNT messages x $SIZE bytes, $SESSIONS sessions in all, $(nproc) cores; every node, etcd, smtp-sink and the load generators on this machine"
printf '%-6s %14s %14s\n' nodes "accepted msg/s" "e2e msg/s"
# "1 alone": one node without [cluster] (no cluster code on the path).
for run in $RUNS; do
  n=$run; [ "$run" = alone ] && n=1
  pids=()
  for i in $(seq 1 "$n"); do
    d="$W/r$run-n$i"; mkdir -p "$d"
    cat > "$d/mta.toml" <<TOML
hostname = "n$i.test"
data_dir = "$d/data"
[submission]
listen = ["127.0.0.1:2$n${i}87"]
trusted_networks = ["127.0.0.0/8"]
[submissions]
listen = []
[http]
listen = ""
[relay]
mode = "static"
smarthost = "$SINK"
[log]
level = "${LOG_LEVEL:-warn}"
[admin]
listen = "127.0.0.1:2$n${i}25"
TOML
    [ "$run" = alone ] || printf '[cluster]\nname = "r%s-n%s"\netcd = ["%s"]\nadvertise = "127.0.0.1:2%s%s46"\n' "$n" "$i" "$ETCD" "$n" "$i" >> "$d/mta.toml"
    "$W/mta" serve -c "$d/mta.toml" 2>"$d/log" &
    pids+=($!); BENCH_PIDS+=($!)
  done
  for i in $(seq 1 "$n"); do
    wait_port "127.0.0.1:2$n${i}87"
    [ "$run" = alone ] || until [ "$("$W/mta" cluster status --json -c "$W/r$run-n$i/mta.toml" 2>/dev/null | grep -c '"alive": true')" = "$n" ]; do sleep 0.2; done
  done
  t0=$(now)
  lgp=()
  for i in $(seq 1 "$n"); do
    "$W/loadgen" -addr "127.0.0.1:2$n${i}87" -tls none -sessions $((SESSIONS / n)) -messages $((COUNT / n)) -size "$SIZE" >"$W/r$n-lg$i.txt" &
    lgp+=($!)
  done
  for p in "${lgp[@]}"; do wait "$p"; done
  t1=$(now)
  for i in $(seq 1 "$n"); do
    until "$W/mta" queue -c "$W/r$run-n$i/mta.toml" 2>/dev/null | grep -q empty; do sleep 0.1; done
  done
  t2=$(now)
  total=$(( (COUNT / n) * n ))
  printf '%-6s %14.0f %14.0f\n' "$run" "$(echo "$total / ($t1 - $t0)" | bc -l)" "$(echo "$total / ($t2 - $t0)" | bc -l)"
  kill "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
done
