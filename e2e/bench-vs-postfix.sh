#!/usr/bin/env bash
# Throughput of ledgermail against Postfix on this machine, in one run:
# smtp-source sends the same load (SESSIONS concurrent sessions, COUNT
# messages of SIZE bytes) to each MTA, which relays it to one smtp-sink.
# Reported: the time until every message was accepted, and until the queue
# was empty (everything relayed); then the end-of-DATA -> 250 latency (p50,
# p99) of each (e2e/latency.py). First, the same load straight into
# smtp-sink, for the CPU that receiving alone costs. Needs root (Postfix's master runs as root)
# and the test tools (`make deps`). Run by `make bench-postfix`.
set -euo pipefail
COUNT=${COUNT:-5000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096} ROUNDS=${ROUNDS:-2}
[ "$(id -u)" = 0 ] || { echo "bench-vs-postfix: needs root to run Postfix"; exit 1; }
source "$(dirname "$0")/benchlib.sh"
SINK=127.0.0.1:23525 LM=127.0.0.1:23587 PF=127.0.0.1:24587 ADMIN=127.0.0.1:28025
bench_init bench
bench_sink "$SINK"
SINK_PID=${BENCH_PIDS[-1]}
bench_mta "$LM" "$SINK" "$ADMIN"

bench_postfix "$PF" "$SINK"

wait_port "$SINK"; wait_port "$LM"; wait_port "$PF"

now() { date +%s.%N; }
# cpu_ticks PID...: user and system clock ticks ("U S") of the processes
# and of their children (a process tree: Postfix's master and its daemons,
# whose exited children are counted in the master's cutime/cstime).
cpu_ticks() {
  local pids="$*" p u=0 s=0 pu ps
  for p in $(ps -e -o pid=,ppid= | awk -v roots=" $pids " 'index(roots, " " $2 " ") { print $1 }') $pids; do
    [ -r "/proc/$p/stat" ] || continue
    read -r pu ps < <(awk '{ sub(/^.*\) /, ""); print $12 + $14, $13 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0 0)
    u=$((u + pu)) s=$((s + ps))
  done
  echo "$u $s"
}
measure() { # name addr empty-check pid
  local t0 t1 t2 u0 s0 u1 s1
  read -r u0 s0 < <(cpu_ticks "$4")
  t0=$(now)
  smtp-source -s "$SESSIONS" -l "$SIZE" -m "$COUNT" -f a@src.test -t b@dest.test "$2"
  t1=$(now)
  read -r u1 s1 < <(cpu_ticks "$4") # before the queue is polled (that costs the MTA too)
  until eval "$3" 2>/dev/null | grep -q "empty"; do sleep 0.05; done
  t2=$(now)
  awk -v n="$1" -v c="$COUNT" -v a="$(echo "$t1 - $t0" | bc)" -v e="$(echo "$t2 - $t0" | bc)" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%-10s accepted %d in %6.2f s (%5.0f msg/s), relayed all in %6.2f s (%5.0f msg/s); CPU while accepting %.0f us/msg (user %.0f, kernel %.0f)\n", n, c, a, c/a, e, c/e, 1e6*(u+s)/hz/c, 1e6*u/hz/c, 1e6*s/hz/c }'
}
# The floor: the same load straight into smtp-sink, which keeps nothing and
# relays nothing; its CPU per message is what the receiving half of an
# MTA's work costs on this machine, before any disk or relaying.
floor() {
  local u0 s0 u1 s1
  read -r u0 s0 < <(cpu_ticks "$SINK_PID")
  smtp-source -s "$SESSIONS" -l "$SIZE" -m "$COUNT" -f a@src.test -t b@dest.test "$SINK"
  read -r u1 s1 < <(cpu_ticks "$SINK_PID")
  awk -v c="$COUNT" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "smtp-sink  alone (receiving only: no disk, no relay): CPU %.0f us/msg (user %.0f, kernel %.0f)\n", 1e6*(u+s)/hz/c, 1e6*u/hz/c, 1e6*s/hz/c }'
}
echo "load: $COUNT messages x $SIZE bytes, $SESSIONS sessions, $(nproc) cores; Postfix $(postconf -h mail_version)"
floor
for r in $(seq 1 "$ROUNDS"); do
  measure postfix "$PF" "postqueue -c $W/pf/conf -p" "$(tr -d ' ' < "$W/pf/spool/pid/master.pid")"
  measure ledgermail "$LM" "$W/mta queue -c $W/mta.toml" "$MTA_PID"
done
# End-of-DATA -> 250 latency under the same concurrency (a Python client:
# both MTAs see the same one).
LAT=${LAT:-2000}
echo "end-of-DATA -> 250 latency, $LAT messages over $SESSIONS sessions:"
for r in $(seq 1 "$ROUNDS"); do
  printf "%-10s " postfix; python3 e2e/latency.py "${PF%:*}" "${PF##*:}" "$SESSIONS" "$LAT" "$SIZE"
  printf "%-10s " ledgermail; python3 e2e/latency.py "${LM%:*}" "${LM##*:}" "$SESSIONS" "$LAT" "$SIZE"
done
