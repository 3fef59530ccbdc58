# Shared by the benchmark scripts (bench-vs-postfix.sh, profile.sh,
# bench-large.sh, bench-submission.sh...): a work directory removed on
# exit, a build of the binary, smtp-sink, ledgermail relaying to it, and a
# private Postfix instance. Source it, then call bench_init NAME;
# bench_sink ADDR; bench_mta LISTEN SINK ADMIN [TOML...]; bench_postfix
# LISTEN SINK [main.cf lines...].
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
  [ -d "$W/pf/conf" ] && { postfix -c "$W/pf/conf" stop >/dev/null 2>&1 || true; }
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
# and the defaults otherwise (fsync on every commit); a 465-style listener
# when BENCH_SUBMISSIONS names its address. Sets MTA_PID.
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
listen = [${BENCH_SUBMISSIONS:+\"$BENCH_SUBMISSIONS\"}]
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

# bench_postfix listen sink [main.cf lines]: a private Postfix instance (its
# own config and queue directories; needs root) relaying to the sink, with
# trusted loopback clients and no TLS unless the extra lines say so.
bench_postfix() {
  local listen=$1 sink=$2
  shift 2
  mkdir -p "$W/pf/conf" "$W/pf/spool" "$W/pf/data"
  chown postfix "$W/pf/data"
  [ -f /etc/postfix/main.cf ] || : > /etc/postfix/main.cf   # postfix refuses to run without one
  cp /etc/postfix/master.cf "$W/pf/conf/"
  # Write our listener rather than edit Debian's: with "No configuration"
  # its smtp inet line may be commented out, and an edit would find nothing.
  sed -i '/^#\?smtp[[:space:]]\+inet[[:space:]]/d' "$W/pf/conf/master.cf"
  echo "$listen inet n - n - - smtpd" >> "$W/pf/conf/master.cf"
  grep -q '^postlog' "$W/pf/conf/master.cf" || echo "postlog   unix-dgram n  -       n       -       1       postlogd" >> "$W/pf/conf/master.cf"
  cat > "$W/pf/conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $W/pf/spool
data_directory = $W/pf/data
meta_directory = /etc/postfix
myhostname = pf.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:${sink##*:}
maillog_file = $W/pf/maillog
maillog_file_prefixes = /tmp
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject
$(printf '%s\n' "$@")
CF
  postfix -c "$W/pf/conf" start >/dev/null
}
