package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// startDNS serves zone from this test process on a loopback UDP port; the
// mta binary is pointed at it with relay.dns_servers.
func startDNS(t *testing.T, zone map[string][]string) string {
	t.Helper()
	d, err := mxtest.StartDNS(zone)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d.Addr
}

// MX mode end to end: recipients of two domains go to their own MX hosts
// (smtp-sinks on 127.0.0.2 and 127.0.0.3), a null-MX recipient bounces, and
// the DSN reaches the sender's domain's MX (127.0.0.4).
func TestMXRelayAndDSN(t *testing.T) {
	port := freePort(t)[len("127.0.0.1:"):]
	one := startSink(t, "127.0.0.2:"+port)
	two := startSink(t, "127.0.0.3:"+port)
	home := startSink(t, "127.0.0.4:"+port)
	dnsAddr := startDNS(t, map[string][]string{
		"one.test.":        {"one.test. 60 IN MX 10 mx.one.test."},
		"mx.one.test.":     {"mx.one.test. 60 IN A 127.0.0.2"},
		"two.test.":        {"two.test. 60 IN MX 10 mx.two.test."},
		"mx.two.test.":     {"mx.two.test. 60 IN A 127.0.0.3"},
		"nullmx.test.":     {"nullmx.test. 60 IN MX 0 ."},
		"example.test.":    {"example.test. 60 IN MX 10 mx.example.test."},
		"mx.example.test.": {"mx.example.test. 60 IN A 127.0.0.4"},
	})
	s := newServer(t, serverOpts{relay: `mode = "mx"
dns_servers = ["` + dnsAddr + `"]
mx_port = ` + port})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	id := s.submit(t, "alice@example.test", "a@one.test,b@two.test,c@nullmx.test", "--header", "Subject: mx test")
	waitFor(t, "deliveries and the DSN", 30*time.Second, func() bool {
		return len(one.messages(t)) == 1 && len(two.messages(t)) == 1 && len(home.messages(t)) == 1 && len(s.queue().Envelopes) == 0
	})
	if msg := one.messages(t)[0]; !strings.Contains(msg, "X-Rcpt-Args: <a@one.test>") || strings.Contains(msg, "b@two.test>") {
		t.Errorf("mx.one.test got:\n%s", msg)
	}
	if msg := two.messages(t)[0]; !strings.Contains(msg, "X-Rcpt-Args: <b@two.test>") {
		t.Errorf("mx.two.test got:\n%s", msg)
	}
	dsn := home.messages(t)[0]
	for _, want := range []string{"X-Mail-Args: <>", "X-Rcpt-Args: <alice@example.test>", "report-type=delivery-status",
		"Final-Recipient: rfc822; c@nullmx.test", "Action: failed", "Status: 5.1.10", "null MX", "Subject: mx test"} {
		if !strings.Contains(dsn, want) {
			t.Errorf("DSN lacks %q:\n%s", want, dsn)
		}
	}
	hist := strings.Join(types(s.replay("--envelope", id)), " ")
	if strings.Count(hist, "Delivered") != 2 || strings.Count(hist, "Bounced") != 1 || strings.Count(hist, "Split") != 1 {
		t.Errorf("history: %s", hist)
	}
}

// Static relay through a smarthost that requires AUTH over STARTTLS: a
// second ledgermail.
func TestSmarthostWithAuthIsASecondLedgermail(t *testing.T) {
	sk := startSink(t, freePort(t))
	b := newServer(t, serverOpts{smarthost: sk.addr})
	b.addUser("relayuser", "relaypw", "*@example.test")
	b.start()
	a := newServer(t, serverOpts{relay: `mode = "static"
smarthost = "` + b.sub + `"
username = "relayuser"
password = "relaypw"
tls = "required"`})
	a.addUser("alice", "secret", "alice@example.test")
	a.start()
	a.submit(t, "alice@example.test", "bob@dest.test", "--header", "Subject: via smarthost")
	waitFor(t, "delivery through the smarthost", 30*time.Second, func() bool {
		return len(sk.messages(t)) == 1 && len(a.queue().Envelopes) == 0 && len(b.queue().Envelopes) == 0
	})
	msg := sk.messages(t)[0]
	if strings.Count(msg, "(ledgermail)") != 2 || !strings.Contains(msg, "Subject: via smarthost") {
		t.Errorf("message at the sink:\n%s", msg)
	}
	// The smarthost saw an authenticated, encrypted submission.
	lines := b.replay()
	if lines[0]["type"] != "Received" || lines[0]["auth_user"] != "relayuser" || !strings.HasPrefix(fmt.Sprint(lines[0]["tls"]), "TLS 1.3") {
		t.Errorf("smarthost's Received event: %v", lines[0])
	}
	// And the first hop journaled the TLS version it used.
	for _, l := range a.replay() {
		if l["type"] == "Attempted" && !strings.HasPrefix(fmt.Sprint(l["tls"]), "TLS 1.3") {
			t.Errorf("Attempted without TLS version: %v", l)
		}
	}
}
