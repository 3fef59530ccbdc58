package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// mxServer is a server in MX mode with an in-process DNS zone; the
// sender's domain, example.test, has its MX on a sink at 127.0.0.4.
func mxServer(t *testing.T, port string, zone map[string][]string, queue string) (*server, *sink, *mxtest.DNS) {
	t.Helper()
	home := startSink(t, "127.0.0.4:"+port)
	zone["example.test."] = []string{"example.test. 60 IN MX 10 mx.example.test."}
	zone["mx.example.test."] = []string{"mx.example.test. 60 IN A 127.0.0.4"}
	d, err := mxtest.StartDNS(zone)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	s := newServer(t, serverOpts{relay: `mode = "mx"
dns_servers = ["` + d.Addr + `"]
mx_port = ` + port, queue: queue})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	return s, home, d
}

// An address literal goes to that address, with no MX lookup.
func TestAddressLiteralNeedsNoDNS(t *testing.T) {
	port := freePort(t)[len("127.0.0.1:"):]
	lit := startSink(t, "127.0.0.2:"+port)
	s, _, d := mxServer(t, port, map[string][]string{}, "")
	s.submit(t, "alice@example.test", "bob@[127.0.0.2]")
	waitFor(t, "delivery to the address literal", 30*time.Second, func() bool {
		return len(lit.messages(t)) == 1 && len(s.queue().Envelopes) == 0
	})
	if !strings.Contains(lit.messages(t)[0], "X-Rcpt-Args: <bob@[127.0.0.2]>") {
		t.Fatalf("at the literal's host:\n%s", lit.messages(t)[0])
	}
	if n := d.Queries(); n != 0 {
		t.Fatalf("%d DNS queries for an address literal", n)
	}
}

// A domain with no MX and no address records bounces at once (5.4.4, as
// Postfix) instead of being retried for days.
func TestNoMXNoAddressBounces(t *testing.T) {
	port := freePort(t)[len("127.0.0.1:"):]
	s, home, _ := mxServer(t, port, map[string][]string{
		"nohost.test.": {`nohost.test. 60 IN TXT "no mail here"`},
	}, "")
	id := s.submit(t, "alice@example.test", "bob@nohost.test")
	waitFor(t, "the DSN", 30*time.Second, func() bool { return len(home.messages(t)) == 1 && len(s.queue().Envelopes) == 0 })
	if dsn := home.messages(t)[0]; !strings.Contains(dsn, "Status: 5.4.4") || !strings.Contains(dsn, "Action: failed") {
		t.Fatalf("DSN:\n%s", dsn)
	}
	if hist := strings.Join(types(s.replay("--envelope", id)), " "); strings.Contains(hist, "Deferred") || !strings.Contains(hist, "Bounced") {
		t.Fatalf("history: %s", hist)
	}
}

// More than 50 Received: headers is a mail loop: bounced (5.4.6) before
// any delivery.
func TestMailLoopBounces(t *testing.T) {
	port := freePort(t)[len("127.0.0.1:"):]
	dest := startSink(t, "127.0.0.2:"+port)
	s, home, _ := mxServer(t, port, map[string][]string{
		"dest.test.":    {"dest.test. 60 IN MX 10 mx.dest.test."},
		"mx.dest.test.": {"mx.dest.test. 60 IN A 127.0.0.2"},
	}, "")
	var hdrs []string
	for i := 0; i < 51; i++ {
		hdrs = append(hdrs, "--add-header", "Received: from hop"+string(rune('a'+i%26))+".test by loop.test")
	}
	s.submit(t, "alice@example.test", "bob@dest.test", hdrs...)
	waitFor(t, "the DSN", 30*time.Second, func() bool { return len(home.messages(t)) == 1 && len(s.queue().Envelopes) == 0 })
	if dsn := home.messages(t)[0]; !strings.Contains(dsn, "Status: 5.4.6") || !strings.Contains(dsn, "loop") {
		t.Fatalf("DSN:\n%s", dsn)
	}
	if n := len(dest.messages(t)); n != 0 {
		t.Fatalf("a looping message was delivered %d times", n)
	}
	// 50 is still fine.
	s.submit(t, "alice@example.test", "bob@dest.test", hdrs[:100]...)
	waitFor(t, "delivery with 50 hops", 30*time.Second, func() bool { return len(dest.messages(t)) == 1 })
}

// A message still deferred after queue.delay_warning gets its sender one
// delay warning (RFC 3464 "Action: delayed"), not one per retry.
func TestDelayWarningOnce(t *testing.T) {
	port := freePort(t)[len("127.0.0.1:"):]
	peer, err := mxtest.Start(mxtest.Script{DataEnd: "451 4.3.0 try again later"}, "127.0.0.2:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peer.Close)
	s, home, _ := mxServer(t, port, map[string][]string{
		"dest.test.":    {"dest.test. 60 IN MX 10 mx.dest.test."},
		"mx.dest.test.": {"mx.dest.test. 60 IN A 127.0.0.2"},
	}, `delay_warning = "2s"`)
	id := s.submit(t, "alice@example.test", "bob@dest.test", "--header", "Subject: slow one")
	waitFor(t, "the delay warning", 30*time.Second, func() bool { return len(home.messages(t)) >= 1 })
	// Several more retries (1 s apart) must not warn again.
	waitFor(t, "three more attempts", 30*time.Second, func() bool {
		return strings.Count(strings.Join(types(s.replay("--envelope", id)), " "), "AttemptStarted") >= 6
	})
	if n := len(home.messages(t)); n != 1 {
		t.Fatalf("%d delay warnings, want 1", n)
	}
	dsn := home.messages(t)[0]
	for _, want := range []string{"Action: delayed", "Status: 4.3.0", "Will-Retry-Until:", "Subject: Delayed Mail", "X-Mail-Args: <>", "Subject: slow one"} {
		if !strings.Contains(dsn, want) {
			t.Errorf("delay warning lacks %q:\n%s", want, dsn)
		}
	}
	if len(s.queue().Envelopes) == 0 {
		t.Fatal("the delayed message left the queue")
	}
}
