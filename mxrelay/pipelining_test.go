package mxrelay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

func pipelineRelay(t *testing.T, script mxtest.Script) (*mxtest.Peer, Relay) {
	t.Helper()
	peer, err := mxtest.Start(script, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peer.Close)
	r, err := New(Options{Mode: "static", Smarthost: peer.Addr, Hostname: "relay.test",
		ConnectTimeout: time.Second, CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return peer, r
}

// RFC 2920: with PIPELINING offered, MAIL, the RCPTs and DATA leave
// together, and each recipient still gets its own reply.
func TestPipelinedEnvelope(t *testing.T) {
	peer, r := pipelineRelay(t, mxtest.Script{Rcpt: map[string]string{"b@x.test": "550 5.1.1 no such user"}})
	pool := NewPool(time.Minute, 0)
	defer pool.Close()
	for i := 0; i < 2; i++ {
		res := r.Deliver(context.Background(), msg("a@x.test", "b@x.test", "c@x.test"), pool)
		if !res.Rcpts["a@x.test"].Success() || !res.Rcpts["c@x.test"].Success() {
			t.Fatalf("delivery %d: %+v", i, res.Rcpts)
		}
		if b := res.Rcpts["b@x.test"]; b.Code != 550 || b.Enhanced != "5.1.1" || b.Temporary() {
			t.Fatalf("delivery %d: b@x.test got %+v, want a permanent 550 5.1.1", i, b)
		}
	}
	if got := peer.Pipelined(); got != 2 {
		t.Fatalf("%d of 2 envelopes arrived pipelined; commands: %q", got, peer.Commands())
	}
	if peer.Connections() != 1 || len(peer.Messages()) != 2 {
		t.Fatalf("%d connections, %d messages; want 1 and 2", peer.Connections(), len(peer.Messages()))
	}
}

// A server that does not offer PIPELINING gets one command at a time (a
// strict one refuses anything else with 554).
func TestNoPipeliningWithoutTheExtension(t *testing.T) {
	peer, r := pipelineRelay(t, mxtest.Script{NoPipelining: true, Rcpt: map[string]string{"b@x.test": "451 4.3.0 later"}})
	res := r.Deliver(context.Background(), msg("a@x.test", "b@x.test"), nil)
	if !res.Rcpts["a@x.test"].Success() || !res.Rcpts["b@x.test"].Temporary() {
		t.Fatalf("outcomes: %+v", res.Rcpts)
	}
	if peer.Pipelined() != 0 || len(peer.Messages()) != 1 {
		t.Fatalf("pipelined %d, messages %d; want 0 and 1", peer.Pipelined(), len(peer.Messages()))
	}
}

// Every recipient refused while pipelined: a server that still answers
// DATA 354 gets a lone dot, nothing is delivered, and the connection
// carries the next message.
func TestPipelinedAllRecipientsRefused(t *testing.T) {
	for _, despite := range []bool{false, true} {
		peer, r := pipelineRelay(t, mxtest.Script{DataWithoutRcpt: despite,
			Rcpt: map[string]string{"a@x.test": "550 5.1.1 no", "b@x.test": "550 5.1.1 no"}})
		pool := NewPool(time.Minute, 0)
		t.Cleanup(pool.Close)
		res := r.Deliver(context.Background(), msg("a@x.test", "b@x.test"), pool)
		if res.Rcpts["a@x.test"].Code != 550 || res.Rcpts["b@x.test"].Code != 550 {
			t.Fatalf("354 despite: %v: outcomes %+v", despite, res.Rcpts)
		}
		next := r.Deliver(context.Background(), msg("c@x.test"), pool)
		if !next.Rcpts["c@x.test"].Success() || !next.Reused {
			t.Fatalf("354 despite: %v: next message %+v (reused %v)", despite, next.Rcpts, next.Reused)
		}
		if got := peer.Messages(); len(got) != 1 {
			t.Fatalf("354 despite: %v: peer accepted %d messages, want 1", despite, len(got))
		}
	}
}

// The body is dot-stuffed on the wire and arrives as it was.
func TestBodyDotStuffing(t *testing.T) {
	peer, r := pipelineRelay(t, mxtest.Script{})
	body := []byte("Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nlast\r\n")
	m := Message{Envelope: "T", From: "a@src.test", Recipients: []string{"a@x.test"},
		Body: func() io.Reader { return bytes.NewReader(body) }, Size: int64(len(body))}
	if res := r.Deliver(context.Background(), m, nil); !res.Rcpts["a@x.test"].Success() {
		t.Fatalf("outcome %+v", res.Rcpts)
	}
	got := peer.Messages()
	want := "Subject: dots\r\n\r\n..\r\n...two\r\n..leading\r\nlast\r\n" // as on the wire
	if len(got) != 1 || got[0] != want {
		t.Fatalf("on the wire %q, want %q", got, want)
	}
	if c := strings.Join(peer.Commands(), "|"); !strings.Contains(c, "MAIL FROM:<a@src.test> SIZE=") || strings.Contains(c, "BODY=") {
		t.Fatalf("MAIL without SIZE although offered, or with BODY although 8BITMIME was not: %s", c)
	}
}

// An envelope with more recipients than maxPipelinedRcpts goes one command
// at a time (no reply backlog can fill the server's buffers).
func TestLongEnvelopeIsNotPipelined(t *testing.T) {
	peer, r := pipelineRelay(t, mxtest.Script{})
	var rcpts []string
	for i := 0; i <= maxPipelinedRcpts; i++ {
		rcpts = append(rcpts, fmt.Sprintf("r%d@x.test", i))
	}
	res := r.Deliver(context.Background(), msg(rcpts...), nil)
	for _, rc := range rcpts {
		if !res.Rcpts[rc].Success() {
			t.Fatalf("%s: %+v", rc, res.Rcpts[rc])
		}
	}
	if peer.Pipelined() != 0 || len(peer.Messages()) != 1 {
		t.Fatalf("pipelined %d, messages %d; want 0 and 1", peer.Pipelined(), len(peer.Messages()))
	}
}
