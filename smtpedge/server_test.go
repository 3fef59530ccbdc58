package smtpedge

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
)

func startEdge(t testing.TB, j *journal.Journal, accepted func(string)) *Server {
	t.Helper()
	srv, err := New(Options{
		Hostname: "edge.test", Submission: []string{"127.0.0.1:0"}, TLS: testTLS(t), Auth: &UsersFile{users: map[string]User{}},
		Journal: j, Accepted: accepted, TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		MaxMessageBytes: 1 << 20, MaxRecipients: 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Serve()
	t.Cleanup(func() { srv.Shutdown(timeoutCtx(t, 5*time.Second)) })
	return srv
}

func send(t *testing.T, addr string) error {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.SendMail("a@src.test", []string{"b@dest.test"}, strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
}

// "250 ... queued as" only once durable; when the journal cannot take the
// message the client gets 451 4.3.0 and nothing is kept or queued.
func TestJournalFailureAnswers451(t *testing.T) {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var queued atomic.Int32
	srv := startEdge(t, j, func(string) { queued.Add(1) })
	addr := srv.Addrs()[0]
	if err := send(t, addr); err != nil {
		t.Fatalf("first message: %v", err)
	}
	if queued.Load() != 1 || j.LastSeq() != 1 {
		t.Fatalf("queued %d, journal at %d", queued.Load(), j.LastSeq())
	}
	j.Close() // the journal fails from now on
	err = send(t, addr)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) || strings.Contains(se.Message, "journal") {
		t.Fatalf("with a failed journal: %v", err)
	}
	if queued.Load() != 1 {
		t.Fatalf("a refused message was queued")
	}
	j2, err := journal.Open(journal.Options{Dir: j.Dir()})
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	n := 0
	j2.Scan(1, func(e events.Event) error { n++; return nil })
	if n != 1 {
		t.Fatalf("%d events after reopen, want 1", n)
	}
}

// A Shutdown before Serve (a drain asked for while the server starts)
// leaves nothing listening, and Serve after it serves nothing.
func TestShutdownBeforeServe(t *testing.T) {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	srv, err := New(Options{
		Hostname: "edge.test", Submission: []string{"127.0.0.1:0"}, TLS: testTLS(t), Auth: &UsersFile{users: map[string]User{}},
		Journal: j, Accepted: func(string) {}, MaxMessageBytes: 1 << 20, MaxRecipients: 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addrs()[0]
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(timeoutCtx(t, 5*time.Second)) }()
	srv.Serve()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	srv.Serve()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Shutdown", addr)
	}
}
