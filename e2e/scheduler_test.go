package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// bulkScript submits n messages to user<i>@domain over a few sessions
// (trusted loopback) and prints how many got 250.
const bulkScript = `
import smtplib, sys, threading
host, port, domain, n, sessions = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), 8
tag = sys.argv[5] if len(sys.argv) > 5 else ""
ok, lock = [0], threading.Lock()
def worker(k):
    s = smtplib.SMTP(host, port, timeout=60)
    s.ehlo("bulk.test")
    for i in range(k, n, sessions):
        s.sendmail("bulk@example.test", ["user%d@%s" % (i, domain)], "Subject: bulk %s%d\r\n\r\nbulk\r\n" % (tag, i))
        with lock:
            ok[0] += 1
    s.quit()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(sessions)]
for t in ts: t.start()
for t in ts: t.join()
print(ok[0])
`

func bulk(t *testing.T, s *server, domain string, n int) { t.Helper(); bulkTagged(t, s, domain, n, "") }

// bulkTagged is bulk with subjects "bulk <tag><i>".
func bulkTagged(t *testing.T, s *server, domain string, n int, tag string) {
	t.Helper()
	host, port, _ := strings.Cut(s.sub, ":")
	if out := strings.TrimSpace(python(t, bulkScript, host, port, domain, fmt.Sprint(n), tag)); out != fmt.Sprint(n) {
		t.Fatalf("bulk to %s: %s of %d accepted", domain, out, n)
	}
}

// One slow destination (2 s per message) and one whose MX accepts the
// connection and never answers, each with hundreds of messages waiting,
// delay nothing else: a message to a third destination is delivered within
// 5 s (the slow ones need minutes).
func TestSlowDestinationsDoNotBlockOthers(t *testing.T) {
	port := freePort(t)[len("127.0.0.1:"):]
	slow, err := mxtest.Start(mxtest.Script{DataDelay: 2 * time.Second}, "127.0.0.2:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(slow.Close)
	hang, err := mxtest.Start(mxtest.Script{Tarpit: true}, "127.0.0.3:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hang.Close)
	fast := startSink(t, "127.0.0.4:"+port)
	dnsAddr := startDNS(t, map[string][]string{
		"slow.test.":    {"slow.test. 60 IN MX 10 mx.slow.test."},
		"mx.slow.test.": {"mx.slow.test. 60 IN A 127.0.0.2"},
		"hang.test.":    {"hang.test. 60 IN MX 10 mx.hang.test."},
		"mx.hang.test.": {"mx.hang.test. 60 IN A 127.0.0.3"},
		"fast.test.":    {"fast.test. 60 IN MX 10 mx.fast.test."},
		"mx.fast.test.": {"mx.fast.test. 60 IN A 127.0.0.4"},
	})
	s := newServer(t, serverOpts{trusted: true, relay: `mode = "mx"
dns_servers = ["` + dnsAddr + `"]
mx_port = ` + port + `
max_connections_per_domain = 2
command_timeout = "60s"
data_timeout = "60s"`})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	bulk(t, s, "slow.test", 300)
	bulk(t, s, "hang.test", 300)
	// The backlog is there once the slow destination is busy.
	waitFor(t, "the slow destination to be busy", 30*time.Second, func() bool { return slow.Connections() >= 1 })
	start := time.Now()
	s.submit(t, "alice@example.test", "carol@fast.test")
	waitFor(t, "the message to the third destination", 60*time.Second, func() bool { return len(fast.messages(t)) == 1 })
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the message to an idle destination took %s behind two slow ones", d)
	}
	if n := len(slow.Messages()); n > 100 {
		t.Fatalf("the slow destination took %d messages already: not slow enough to test anything", n)
	}
}

// [[relay.destinations]] rate = "10/s": 100 messages take at least 9 s to
// reach the sink, and none is deferred for it (they are held in their
// destination's queue); another domain is not held back.
func TestDestinationRateLimit(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true, relay: `mode = "static"
smarthost = "` + sk.addr + `"
[[relay.destinations]]
domain = "slow.test"
rate = "10/s"`})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	start := time.Now()
	bulk(t, s, "slow.test", 100)
	s.submit(t, "alice@example.test", "fast@other.test")
	waitFor(t, "the other domain's message", 30*time.Second, func() bool {
		for _, m := range sk.messages(t) {
			if strings.Contains(m, "<fast@other.test>") {
				return true
			}
		}
		return false
	})
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("another domain's message waited %s behind the rate-limited one", d)
	}
	// While they wait, `mta queue` shows them held, not deferred.
	waitFor(t, "held envelopes in mta queue", 20*time.Second, func() bool {
		held := 0
		for _, e := range s.queue().Envelopes {
			if e.State == "deferred" {
				t.Fatalf("an envelope waiting for its rate budget is shown deferred: %+v", e)
			}
			if e.State == "held" {
				held++
			}
		}
		return held > 0
	})
	if out, _, _ := s.mta("", "queue"); !strings.Contains(out, " held ") {
		t.Fatalf("mta queue does not show held envelopes:\n%s", out)
	}
	waitFor(t, "100 messages at the sink", 60*time.Second, func() bool { return len(sk.messages(t)) == 101 })
	if d := time.Since(start); d < 9*time.Second {
		t.Fatalf("100 messages at 10/s arrived in %s", d)
	}
	for _, l := range s.replay() {
		if l["type"] == "Deferred" {
			t.Fatalf("a held message was journaled as Deferred: %v", l)
		}
	}
}

// [[relay.destinations]] max_messages_per_connection = 2: six messages to
// the domain, one connection at a time, open three connections to the
// next hop (each closed with QUIT after its second message).
func TestMaxMessagesPerConnection(t *testing.T) {
	peer, err := mxtest.Start(mxtest.Script{}, freePort(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peer.Close)
	s := newServer(t, serverOpts{trusted: true, relay: `mode = "static"
smarthost = "` + peer.Addr + `"
[[relay.destinations]]
domain = "pooled.test"
max_connections = 1
max_messages_per_connection = 2`})
	s.start()
	bulk(t, s, "pooled.test", 6)
	waitFor(t, "six messages at the next hop", 30*time.Second, func() bool { return len(peer.Messages()) == 6 })
	if n := peer.Connections(); n != 3 {
		t.Fatalf("%d connections for 6 messages at 2 per connection, want 3", n)
	}
}
