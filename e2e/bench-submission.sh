#!/usr/bin/env bash
# The submission path as mail clients drive it (e2e/loadgen): each of
# SESSIONS concurrent sessions secures its connection, authenticates and
# sends PER_SESSION messages of SIZE bytes before QUIT, COUNT in all.
#   ledgermail on its 587-style port (STARTTLS + AUTH PLAIN) and on its
#   465-style port (implicit TLS + AUTH PLAIN);
#   ledgermail and Postfix (private instance, smtpd_tls_security_level =
#   may) with STARTTLS and no AUTH (loopback is trusted by both), and both
#   in plaintext without AUTH,
# so that what TLS and AUTH cost is seen side by side. Both relay to one
# smtp-sink and fsync before their 250. Needs root (Postfix's master) and
# the test tools (`make deps`). Run by `make bench-submission`.
set -euo pipefail
COUNT=${COUNT:-5000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096} PER_SESSION=${PER_SESSION:-10}
[ "$(id -u)" = 0 ] || { echo "bench-submission: needs root to run Postfix"; exit 1; }
source "$(dirname "$0")/benchlib.sh"
SINK=127.0.0.1:23526 LM=127.0.0.1:23588 LMS=127.0.0.1:23465 PF=127.0.0.1:24588 ADMIN=127.0.0.1:28026
bench_init submission
go build -o "$W/loadgen" ./e2e/loadgen
bench_sink "$SINK"
mkdir -p "$W/lm"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench.test -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
printf 'data_dir = "%s"\n' "$W/lm" > "$W/users.toml"
printf 'bench-password\n' | "$W/mta" users add bench --address '*@src.test' --password-stdin -c "$W/users.toml" >/dev/null
# Loopback is a trusted network (as for smtp-source elsewhere), so a run
# without AUTH is possible too; AUTH is offered after STARTTLS.
BENCH_SUBMISSIONS=$LMS bench_mta "$LM" "$SINK" "$ADMIN" "[tls]" "cert = \"$W/cert.pem\"" "key = \"$W/key.pem\""
bench_postfix "$PF" "$SINK" \
  "smtpd_tls_security_level = may" "smtpd_tls_cert_file = $W/cert.pem" "smtpd_tls_key_file = $W/key.pem"
wait_port "$SINK"; wait_port "$LM"; wait_port "$LMS"; wait_port "$PF"

# Each run starts with both queues empty, so that no run relays another's
# mail while it is measured.
drained() {
  until "$W/mta" queue -c "$W/mta.toml" 2>/dev/null | grep -q empty && postqueue -c "$W/pf/conf" -p 2>/dev/null | grep -q empty; do sleep 0.2; done
}
lg() { drained; "$W/loadgen" -sessions "$SESSIONS" -messages "$COUNT" -per-session "$PER_SESSION" -size "$SIZE" "$@"; }
echo "load: $COUNT messages x $SIZE bytes, $SESSIONS sessions, $PER_SESSION messages per session, $(nproc) cores; Postfix $(postconf -h mail_version)"
echo "ledgermail users file: bcrypt cost 10 (the default); every session authenticates once"
for r in 1 2; do
  echo "round $r"
  lg -addr "$PF" -tls starttls           | sed 's/^/  postfix     /'
  lg -addr "$LM" -tls starttls -user bench -pass bench-password | sed 's/^/  ledgermail  /'
  lg -addr "$LMS" -tls implicit -user bench -pass bench-password | sed 's/^/  ledgermail  /'
  lg -addr "$LM" -tls starttls           | sed 's/^/  ledgermail  /'
  lg -addr "$PF" -tls none               | sed 's/^/  postfix     /'
  lg -addr "$LM" -tls none               | sed 's/^/  ledgermail  /'
done
