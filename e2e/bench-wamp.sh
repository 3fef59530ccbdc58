#!/usr/bin/env bash
# Write amplification: the bytes the server makes the block device write
# (/proc/PID/io write_bytes) per accepted body byte, over accepting and
# delivering COUNT messages of SIZE bytes from SESSIONS sessions
# (smtp-source to smtp-sink, defaults, fsync before every 250).
# Run by `make bench-wamp` (test tools: `make deps`).
set -euo pipefail
COUNT=${COUNT:-100000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096}
source "$(dirname "$0")/benchlib.sh"
SINK=127.0.0.1:23825 LM=127.0.0.1:23887 ADMIN=127.0.0.1:28325
bench_init wamp
bench_sink "$SINK"
bench_mta "$LM" "$SINK" "$ADMIN" ${BENCH_TOML:+"$BENCH_TOML"}
wait_port "$SINK"; wait_port "$LM"
w0=$(awk '/^write_bytes/ { print $2 }' "/proc/$MTA_PID/io")
t0=$(date +%s.%N)
smtp-source -s "$SESSIONS" -l "$SIZE" -m "$COUNT" -f a@src.test -t b@dest.test "$LM"
t1=$(date +%s.%N)
until "$W/mta" queue -c "$W/mta.toml" 2>/dev/null | grep -q "empty"; do sleep 0.2; done
t2=$(date +%s.%N)
sync
w1=$(awk '/^write_bytes/ { print $2 }' "/proc/$MTA_PID/io")
m=$(curl -s "http://$ADMIN/metrics"); commits=$(echo "$m" | awk '/^ledgermail_journal_append_seconds_count/ { print $2 }'); csum=$(echo "$m" | awk '/^ledgermail_journal_append_seconds_sum/ { print $2 }'); idx=$(echo "$m" | awk '/^ledgermail_journal_index_written_bytes_total/ { printf "%.1f", $2/1e6 }')
kill "$MTA_PID"; wait "$MTA_PID" 2>/dev/null || true
# The bytes accepted: the sizes the Received events record.
body=$("$W/mta" replay -c "$W/mta.toml" --json | python3 -c '
import json, sys
n = s = 0
for line in sys.stdin:
    e = json.loads(line)
    if e["type"] == "Received" and e.get("listener", "").startswith("submission"):
        n += 1; s += e["size"]
print(n, s)')
read -r accepted bytes <<<"$body"
du=$(du -sb "$W/lm" | cut -f1)
echo "load: $COUNT messages x $SIZE bytes, $SESSIONS sessions, $(nproc) cores; $commits group commits (fsyncs), $(awk -v s="$csum" -v n="$commits" "BEGIN { printf \"%.2f\", 1000*s/n }") ms each; index tables written ${idx} MB"
awk -v a="$(echo "$t1 - $t0" | bc)" -v e="$(echo "$t2 - $t0" | bc)" -v n="$accepted" -v b="$bytes" -v w="$((w1 - w0))" -v d="$du" \
  'BEGIN { printf "accepted %d (%.0f msg/s), relayed all in %.1f s (%.0f msg/s); body bytes %.1f MB; device writes %.1f MB = %.2f x; data dir %.1f MB\n", n, n/a, e, n/e, b/1e6, w/1e6, w/b, d/1e6 }'
