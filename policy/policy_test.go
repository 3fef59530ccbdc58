package policy

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

func TestApplyHeaders(t *testing.T) {
	in := Input{
		ID: "ABC", Hostname: "mx.example.test", Arrived: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC),
		Received: events.Received{Helo: "client.test", ClientAddr: "127.0.0.1:5555", TLS: "TLS 1.3", AuthUser: "alice", Recipients: []string{"b@y.test"}},
		Header:   []byte("Subject: hi\r\nX-Folded: a\r\n Date: not a field\r\n\r\nDate: in the body\r\n"), Body: readerOf([]byte("Subject: hi\r\nX-Folded: a\r\n Date: not a field\r\n\r\nDate: in the body\r\n")),
	}
	p, err := Apply(Options{AddDate: true, AddMessageID: true, AddReceived: true}, in)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.Policies) != "[received date message-id]" {
		t.Fatalf("policies %v", p.Policies)
	}
	for _, want := range []string{
		"Received: from client.test (unknown [127.0.0.1])", "with ESMTPSA id ABC", "for <b@y.test>",
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
	in.Body = readerOf(in.Header)
	p, _ = Apply(Options{AddDate: true, AddMessageID: true}, in)
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

func TestBuildDSN(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	b := string(BuildDSN(DSN{
		ID: "DSN1", Hostname: "mta.test", Envelope: "ENV.1", Sender: "alice@x.test", Arrived: now.Add(-time.Hour), Now: now,
		Recipients: []DSNRecipient{{Recipient: "bob@y.test", Status: "5.1.1", Diagnostic: "550 5.1.1 no such\r\n user", RemoteMTA: "mx.y.test"}},
		Header:     []byte("Subject: hello\r\nMessage-ID: <orig@x.test>\r\n"),
	}))
	for _, want := range []string{
		"To: <alice@x.test>\r\n", "Content-Type: multipart/report; report-type=delivery-status;", "Auto-Submitted: auto-replied",
		"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mta.test\r\n",
		"Final-Recipient: rfc822; bob@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
		"Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nMessage-ID: <orig@x.test>\r\n", "--=_ledgermail_DSN1--\r\n",
	} {
		if !strings.Contains(b, want) {
			t.Errorf("DSN lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(strings.ReplaceAll(b, "\r\n", ""), "\n") {
		t.Error("bare LF in DSN")
	}
	if got := StatusFor(550, "", false); got != "5.0.0" {
		t.Errorf("StatusFor = %s", got)
	}
	if got := StatusFor(451, "4.3.0", true); got != "4.4.7" {
		t.Errorf("StatusFor expired = %s", got)
	}
}

func TestCountReceived(t *testing.T) {
	body := []byte("Received: from a\r\n\tby b\r\nreceived: from c\r\nSubject: x\r\n\r\nReceived: in the body\r\n")
	if n := CountReceived(body); n != 2 {
		t.Fatalf("CountReceived = %d, want 2", n)
	}
}

// readerOf is Input.Body for a message held in memory.
func readerOf(b []byte) func() io.Reader { return func() io.Reader { return bytes.NewReader(b) } }
