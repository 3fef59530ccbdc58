#!/usr/bin/env bash
# CPU and allocation profiles of ledgermail under the benchmark load:
# smtp-source sends COUNT messages of SIZE bytes over SESSIONS sessions to
# a server relaying to smtp-sink, while the admin API's /debug/pprof/ (the
# [admin] pprof switch) records SECONDS of CPU and then the allocations.
# Writes profiles/cpu.pprof and profiles/allocs.pprof and prints the top of
# each. Run by `make profile` (the test tools: `make deps`).
set -euo pipefail
COUNT=${COUNT:-30000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096} SECONDS_CPU=${SECONDS_CPU:-8}
source "$(dirname "$0")/benchlib.sh"
SINK=127.0.0.1:23625 LM=127.0.0.1:23687 ADMIN=127.0.0.1:28125 TOKEN=profile-token
bench_init profile
bench_sink "$SINK"
bench_mta "$LM" "$SINK" "$ADMIN" "token = \"$TOKEN\"" "pprof = true"
for _ in $(seq 1 100); do curl -sf "http://$ADMIN/healthz" >/dev/null && break; sleep 0.1; done

mkdir -p profiles
smtp-source -s "$SESSIONS" -l "$SIZE" -m "$COUNT" -f load@lm.test -t rcpt@dest.test "$LM" & SRC_PID=$!; BENCH_PIDS+=($SRC_PID)
sleep 1
curl -sf -H "Authorization: Bearer $TOKEN" "http://$ADMIN/debug/pprof/profile?seconds=$SECONDS_CPU" -o profiles/cpu.pprof
curl -sf -H "Authorization: Bearer $TOKEN" "http://$ADMIN/debug/pprof/allocs" -o profiles/allocs.pprof
wait "$SRC_PID" || true
SRC_PID=
echo "== CPU ($SECONDS_CPU s under load): top functions, cumulative"
go tool pprof -top -cum -nodecount=30 "$W/mta" profiles/cpu.pprof 2>/dev/null | sed -n '1,40p'
echo "== allocations (space, since start)"
go tool pprof -top -sample_index=alloc_space -nodecount=20 "$W/mta" profiles/allocs.pprof 2>/dev/null | sed -n '1,28p'
echo "profiles in ./profiles (go tool pprof -http=: profiles/cpu.pprof)"
