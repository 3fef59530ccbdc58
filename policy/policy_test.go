package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

func TestApplyHeaders(t *testing.T) {
	in := Input{
		ID: "ABC", Hostname: "mx.example.test", Arrived: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC),
		Received: events.Received{Helo: "client.test", ClientAddr: "127.0.0.1:5555", TLS: "TLS 1.3", AuthUser: "alice", Recipients: []string{"b@y.test"}},
		Header:   []byte("Subject: hi\r\nX-Folded: a\r\n Date: not a field\r\n\r\n"),
	}
	p := Apply(Options{AddDate: true, AddMessageID: true, AddReceived: true}, in)
	if fmt.Sprint(p.Policies) != "[received date message-id]" {
		t.Fatalf("policies %v", p.Policies)
	}
	for _, want := range []string{
		"Received: from client.test ([127.0.0.1])", "with ESMTPSA id ABC", "for <b@y.test>",
		"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n", "Message-ID: <abc.", "@mx.example.test>\r\n",
	} {
		if !strings.Contains(p.Prepend, want) {
			t.Errorf("prepend lacks %q:\n%s", want, p.Prepend)
		}
	}
	if !strings.HasPrefix(p.Prepend, "Received:") {
		t.Error("Received is not first")
	}
	in.Header = []byte("date: Mon, 1 Jan 2026 00:00:00 +0000\nmessage-id: <x@y>\n\n")
	p = Apply(Options{AddDate: true, AddMessageID: true}, in)
	if p.Prepend != "" {
		t.Errorf("added headers that exist: %q", p.Prepend)
	}
}

func TestHeaderBlock(t *testing.T) {
	if got := string(HeaderBlock([]byte("A: b\r\n\r\nbody\r\n"))); got != "A: b\r\n" {
		t.Errorf("got %q", got)
	}
	if got := string(HeaderBlock([]byte("A: b"))); got != "A: b" {
		t.Errorf("no newline: %q", got)
	}
}

func TestSplit(t *testing.T) {
	rcpts := []string{"a@One.test", "b@two.test", "c@one.test"}
	if got := fmt.Sprint(Split("domain", rcpts)); got != "[[a@One.test c@one.test] [b@two.test]]" {
		t.Errorf("domain: %s", got)
	}
	if got := len(Split("recipient", rcpts)); got != 3 {
		t.Errorf("recipient: %d", got)
	}
	if got := fmt.Sprint(Split("none", rcpts)); got != "[[a@One.test b@two.test c@one.test]]" {
		t.Errorf("none: %s", got)
	}
}
