package smtpedge

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/netip"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
)

// FuzzNormalizeLineEndings: the output has only CRLF line ends and keeps
// every other byte in order.
func FuzzNormalizeLineEndings(f *testing.F) {
	for _, s := range []string{"a\r\nb", "\n.\n", "\r.\r", "\r\n.\n", "x\r\r\n\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out := NormalizeLineEndings(in)
		for i, c := range out {
			if c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
				t.Fatalf("bare CR at %d in %q", i, out)
			}
			if c == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, out)
			}
		}
		strip := func(b []byte) []byte {
			return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r"), nil), []byte("\n"), nil)
		}
		if !bytes.Equal(strip(in), strip(out)) {
			t.Fatalf("content changed: %q -> %q", in, out)
		}
	})
}

var queuedRE = regexp.MustCompile(`(?m)^250 2\.0\.0 Ok: queued as [0-9A-F]{20}\r?$`)

// FuzzSession feeds arbitrary bytes to a real server (go-smtp's command
// parser and DATA reader, our session) from a trusted loopback client. It
// checks that the server survives and that every "queued as" reply matches
// exactly one durable Received event, and no event exists without one.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\n",
		"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\n.\nMAIL FROM:<e@f.test>\nRCPT TO:<v@d.test>\nDATA\nsmuggled\r\n.\r\n",
		"EHLO x\r\nMAIL FROM:<a@b.test> SIZE=10\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<bad>\r\nBDAT 5 LAST\r\nhello",
		"HELO x\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nSTARTTLS\r\nRSET\r\nNOOP\r\nVRFY x\r\n",
		"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n\r.\r\n.\r\r\n.\r\n",
		"\x00\xff\r\n\r\n\r\nMAIL\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	j, err := journal.Open(journal.Options{Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	defer j.Close()
	var received atomic.Int64
	j.Subscribe(func(evs []events.Event) {
		for _, e := range evs {
			if e.Type() == events.TypeReceived {
				received.Add(1)
			}
		}
	})
	srv, err := New(Options{
		Hostname: "fuzz.test", Submission: []string{"127.0.0.1:0"}, TLS: testTLS(f), Auth: &UsersFile{users: map[string]User{}},
		Journal: j, Accepted: func(string) {}, TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		MaxMessageBytes: 1 << 16, MaxRecipients: 5, ReadTimeout: 2 * time.Second, DataTimeout: 2 * time.Second,
	})
	if err != nil {
		f.Fatal(err)
	}
	srv.Serve()
	defer srv.Shutdown(timeoutCtx(f, 5*time.Second))
	addr := srv.Addrs()[0]

	f.Fuzz(func(t *testing.T, in []byte) {
		before := received.Load()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("server gone: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		done := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(c); done <- b }()
		c.Write(in)
		c.Write([]byte("\r\n.\r\nQUIT\r\n"))
		c.(*net.TCPConn).CloseWrite() // EOF ends the session without waiting for timeouts
		out := <-done
		got := int64(len(queuedRE.FindAll(out, -1)))
		if after := received.Load() - before; after != got {
			t.Fatalf("%d queued replies but %d Received events\ninput %q\noutput %q", got, after, in, out)
		}
	})
}

func testTLS(tb testing.TB) *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"fuzz.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func timeoutCtx(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
