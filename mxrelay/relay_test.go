package mxrelay

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

func startDNS(t *testing.T, zone map[string][]string, servfail ...string) string {
	t.Helper()
	d := startCountingDNS(t, zone, servfail...)
	return d.Addr
}

func startCountingDNS(t *testing.T, zone map[string][]string, servfail ...string) *mxtest.DNS {
	t.Helper()
	d, err := mxtest.StartDNS(zone, servfail...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

type sink struct{ *mxtest.Sink }

func startSink(t *testing.T, addr string, extra ...string) *sink {
	t.Helper()
	s, err := mxtest.StartSink(addr, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return &sink{s}
}

func (s *sink) count(t *testing.T) int {
	t.Helper()
	m, err := s.Messages()
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

func freePort(t testing.TB, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}

func msg(rcpts ...string) Message {
	body := []byte("Subject: test\r\n\r\nhello\r\n")
	return Message{Envelope: "T", From: "a@src.test", Recipients: rcpts,
		Body: func() io.Reader { return bytes.NewReader(body) }, Size: int64(len(body))}
}

func TestMXRelayResolutionAndOutcomes(t *testing.T) {
	port := freePort(t, "127.0.0.2")
	good := startSink(t, "127.0.0.2:"+port)
	// 127.0.0.3 listens on the same port but refuses RCPT permanently.
	hard := startSink(t, "127.0.0.3:"+port, "-f", "RCPT")
	// 127.0.0.4 refuses RCPT temporarily.
	soft := startSink(t, "127.0.0.4:"+port, "-r", "RCPT")
	dnsAddr := startDNS(t, map[string][]string{
		// mx0 has no address at all, so the relay must go on to mx1.
		"good.test.":     {"good.test. 60 IN MX 5 mx0.good.test.", "good.test. 60 IN MX 10 mx1.good.test."},
		"mx0.good.test.": {},
		"mx1.good.test.": {"mx1.good.test. 60 IN A 127.0.0.2"},
		"hard.test.":     {"hard.test. 60 IN MX 10 mx.hard.test."},
		"mx.hard.test.":  {"mx.hard.test. 60 IN A 127.0.0.3"},
		"soft.test.":     {"soft.test. 60 IN MX 10 mx.soft.test."},
		"mx.soft.test.":  {"mx.soft.test. 60 IN A 127.0.0.4"},
		"implicit.test.": {"implicit.test. 60 IN A 127.0.0.2"},
		"nullmx.test.":   {"nullmx.test. 60 IN MX 0 ."},
		"down.test.":     {"down.test. 60 IN MX 10 mx.down.test."},
		"mx.down.test.":  {"mx.down.test. 60 IN A 127.0.0.5"},
	}, "broken.test")
	r, err := New(Options{Mode: "mx", DNSServers: []string{dnsAddr}, MXPort: atoi(port), Hostname: "relay.test",
		ConnectTimeout: 2 * time.Second, CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		rcpt      string
		success   bool
		temporary bool
		code      int
		contains  string
	}{
		{"x@good.test", true, false, 250, ""},
		{"x@implicit.test", true, false, 250, ""},
		{"x@hard.test", false, false, 500, ""},
		{"x@soft.test", false, true, 450, ""},
		{"x@nullmx.test", false, false, 556, "null MX"},
		{"x@nowhere.test", false, false, 550, "NXDOMAIN"},
		{"x@broken.test", false, true, 0, "SERVFAIL"},
		{"x@down.test", false, true, 0, "refused"},
	}
	for _, c := range cases {
		res := r.Deliver(ctx, msg(c.rcpt), nil)
		o, ok := res.Rcpts[c.rcpt]
		if !ok {
			t.Errorf("%s: no outcome in %+v", c.rcpt, res)
			continue
		}
		if o.Success() != c.success || o.Temporary() != c.temporary || (c.code != 0 && o.Code/10 != c.code/10) || !strings.Contains(o.String(), c.contains) {
			t.Errorf("%s: outcome %q success=%v temporary=%v code=%d", c.rcpt, o, o.Success(), o.Temporary(), o.Code)
		}
	}
	if good.count(t) != 2 {
		t.Errorf("good MX received %d transactions, want 2", good.count(t))
	}
	if hard.count(t) != 0 || soft.count(t) != 0 {
		t.Errorf("refusing sinks stored messages")
	}
	// Per-recipient results within one transaction to two domains.
	res := r.Deliver(ctx, msg("y@good.test", "y@hard.test"), nil)
	if !res.Rcpts["y@good.test"].Success() || res.Rcpts["y@hard.test"].Temporary() || res.Rcpts["y@hard.test"].Success() {
		t.Errorf("mixed delivery: %+v", res.Rcpts)
	}
}

func TestStaticRelayAndTLSRequired(t *testing.T) {
	addr := "127.0.0.1:" + freePort(t, "127.0.0.1")
	sk := startSink(t, addr)
	r, err := New(Options{Mode: "static", Smarthost: addr, Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	res := r.Deliver(context.Background(), msg("a@x.test", "b@y.test"), nil)
	for _, rc := range []string{"a@x.test", "b@y.test"} {
		if !res.Rcpts[rc].Success() {
			t.Errorf("%s: %v", rc, res.Rcpts[rc])
		}
	}
	if sk.count(t) != 1 {
		t.Errorf("sink has %d transactions, want 1", sk.count(t))
	}
	// smtp-sink offers no STARTTLS: "required" defers rather than sending in clear.
	r, _ = New(Options{Mode: "static", Smarthost: addr, Hostname: "relay.test", TLS: TLSRequired})
	res = r.Deliver(context.Background(), msg("a@x.test"), nil)
	if o := res.Rcpts["a@x.test"]; !o.Temporary() || !strings.Contains(o.String(), "STARTTLS") {
		t.Errorf("tls required: %v", o)
	}
	if _, err := New(Options{Mode: "static"}); err == nil {
		t.Error("static without smarthost accepted")
	}
	if _, err := New(Options{Mode: "pigeon"}); err == nil {
		t.Error("unknown mode accepted")
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// A pool with a per-connection message limit closes a connection after
// that many transactions: five messages, at most two per connection, take
// three connections.
func TestPoolMaxMessagesPerConnection(t *testing.T) {
	peer, err := mxtest.Start(mxtest.Script{}, "127.0.0.1:"+freePort(t, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	r, err := New(Options{Mode: "static", Smarthost: peer.Addr, Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(time.Minute, 2)
	defer pool.Close()
	var reused int
	for i := 0; i < 5; i++ {
		res := r.Deliver(context.Background(), msg("a@x.test"), pool)
		if !res.Rcpts["a@x.test"].Success() {
			t.Fatalf("delivery %d: %+v", i, res)
		}
		if res.Reused {
			reused++
		}
	}
	if peer.Connections() != 3 || reused != 2 {
		t.Fatalf("%d connections, %d reused; want 3 and 2", peer.Connections(), reused)
	}
}

func TestPoolReusesConnectionsUntilIdleTimeout(t *testing.T) {
	addr := "127.0.0.1:" + freePort(t, "127.0.0.1")
	sk := startSink(t, addr)
	r, err := New(Options{Mode: "static", Smarthost: addr, Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(300*time.Millisecond, 0)
	defer pool.Close()
	first := r.Deliver(context.Background(), msg("a@x.test"), pool)
	second := r.Deliver(context.Background(), msg("b@x.test"), pool)
	if !first.Rcpts["a@x.test"].Success() || !second.Rcpts["b@x.test"].Success() {
		t.Fatalf("deliveries: %+v %+v", first, second)
	}
	if first.Reused || !second.Reused {
		t.Fatalf("reuse: first %v, second %v", first.Reused, second.Reused)
	}
	if pool.Idle() != 1 {
		t.Fatalf("%d idle connections, want 1", pool.Idle())
	}
	deadline := time.Now().Add(5 * time.Second)
	for pool.Idle() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection not closed after the idle timeout")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// With nothing left to watch, the pool's janitor goroutine ends.
	for {
		pool.mu.Lock()
		running := pool.started
		pool.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("janitor still running for an empty pool")
		}
		time.Sleep(20 * time.Millisecond)
	}
	third := r.Deliver(context.Background(), msg("c@x.test"), pool)
	if third.Reused || !third.Rcpts["c@x.test"].Success() {
		t.Fatalf("after idle timeout: %+v", third)
	}
	if sk.count(t) != 3 {
		t.Fatalf("sink has %d transactions", sk.count(t))
	}
}
