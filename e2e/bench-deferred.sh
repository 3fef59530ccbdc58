#!/usr/bin/env bash
# A large deferred queue: COUNT messages of SIZE bytes (smtp-source, 20
# sessions) to a smarthost that refuses connections, so every envelope
# waits for a retry. Reports the server's RSS after the load, then after a
# kill -9 and restart, and after a graceful restart; and, for each
# restart, the time from exec to the first message accepted (a 250), and
# the RSS once it has settled (SETTLE seconds later, 10 by default). With
# BENCH_HEAP=DIR, [admin] pprof is on and a heap profile (after a GC) is
# saved into DIR at each of those three points.
# Run by `make bench-deferred` (test tools: `make deps`).
set -euo pipefail
COUNT=${COUNT:-200000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-512} SETTLE=${SETTLE:-10}
source "$(dirname "$0")/benchlib.sh"
DEAD=127.0.0.1:23925 LM=127.0.0.1:23987 ADMIN=127.0.0.1:28925
bench_init deferred
bench_mta "$LM" "$DEAD" "$ADMIN" ${BENCH_HEAP:+"pprof = true"} ${BENCH_HEAP:+'token = "bench-token"'} $'[queue]\nretry = ["1h"]'
wait_port "$LM"
rss() { awk '/^VmRSS/ { printf "%.0f MiB", $2/1024 }' "/proc/$MTA_PID/status"; }
settled() { # what: the RSS SETTLE seconds from now, and a heap profile with BENCH_HEAP
  sleep "$SETTLE"
  echo "  $1: RSS $(rss) after ${SETTLE} s more"
  [ -z "${BENCH_HEAP:-}" ] || curl -sf -H "Authorization: Bearer bench-token" -o "$BENCH_HEAP/heap-$2.pb.gz" "http://$ADMIN/debug/pprof/heap?gc=1"
}
first_250() { # seconds from now until a message is accepted
  python3 - "$LM" <<'PY'
import smtplib, sys, time
host, port = sys.argv[1].rsplit(":", 1)
t0 = time.time()
while True:
    try:
        with smtplib.SMTP(host, int(port), timeout=30) as s:
            s.sendmail("a@src.test", ["b@dest.test"], "Subject: probe\r\n\r\nprobe\r\n")
        break
    except Exception:
        time.sleep(0.02)
print("%.2f s" % (time.time() - t0))
PY
}
restart() { # how
  "$W/mta" serve -c "$W/mta.toml" 2>>"$W/mta.log" &
  MTA_PID=$!
  BENCH_PIDS+=($MTA_PID)
  echo "$1 restart: first message accepted after $(first_250); RSS $(rss)"
  settled "$1 restart" "${1//[^a-z0-9]/}"
}
t0=$(date +%s.%N)
smtp-source -s "$SESSIONS" -l "$SIZE" -m "$COUNT" -f a@src.test -t b@dest.test "$LM"
t1=$(date +%s.%N)
deferred() { curl -s "http://$ADMIN/metrics" | awk '/^ledgermail_queue_envelopes\{state="deferred"\}/ { printf "%d", $2 }'; }
until [ "$(deferred)" -ge "$COUNT" ] 2>/dev/null; do sleep 1; done
echo "load: $COUNT messages x $SIZE bytes, $SESSIONS sessions, accepted in $(echo "$t1 - $t0" | bc) s, all deferred; RSS $(rss)"
settled load load
kill -9 "$MTA_PID"; wait "$MTA_PID" 2>/dev/null || true
restart "kill -9"
kill "$MTA_PID"; wait "$MTA_PID" 2>/dev/null || true
restart "graceful"
echo "data dir $(du -sh "$W/lm" | cut -f1)"
