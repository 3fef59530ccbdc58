#!/usr/bin/env bash
# Memory under large messages: COUNT sessions at once, each sending one
# message of SIZE bytes (smtp-source), relayed to smtp-sink, on the
# defaults ([limits] body_memory = 256MiB). Reported: the time until all
# were accepted and relayed, how many the journal shows delivered, and the
# server's peak RSS (VmHWM). Run by `make bench-large` (test tools: `make deps`).
set -euo pipefail
COUNT=${COUNT:-100} SIZE=${SIZE:-10485760}
source "$(dirname "$0")/benchlib.sh"
SINK=127.0.0.1:23725 LM=127.0.0.1:23787 ADMIN=127.0.0.1:28225
bench_init large
bench_sink "$SINK"
bench_mta "$LM" "$SINK" "$ADMIN"
wait_port "$SINK"; wait_port "$LM"
t0=$(date +%s.%N)
smtp-source -s "$COUNT" -l "$SIZE" -m "$COUNT" -f a@src.test -t b@dest.test "$LM"
t1=$(date +%s.%N)
until "$W/mta" queue -c "$W/mta.toml" 2>/dev/null | grep -q "empty"; do sleep 0.2; done
t2=$(date +%s.%N)
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$MTA_PID/status")
kill "$MTA_PID"; wait "$MTA_PID" 2>/dev/null || true
delivered=$("$W/mta" replay -c "$W/mta.toml" --json | grep -c '"type":"Delivered"' || true)
echo "load: $COUNT sessions at once x $SIZE bytes, $(nproc) cores"
awk -v a="$(echo "$t1 - $t0" | bc)" -v e="$(echo "$t2 - $t0" | bc)" -v d="$delivered" -v c="$COUNT" -v h="$hwm" \
  'BEGIN { printf "accepted in %.1f s, relayed in %.1f s; delivered %d of %d; peak RSS (VmHWM) %.0f MiB\n", a, e, d, c, h/1024 }'
