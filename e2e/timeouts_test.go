package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// readAllUntilClose reads what the server sends until it closes (or 15 s).
func readAllUntilClose(c net.Conn) (string, bool) {
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	closed := err == nil || !(errorsAs(err, &ne) && ne.Timeout())
	return string(b), closed
}

func errorsAs(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// A client that sends one byte at a time and never a newline is answered
// "421 4.4.2" at the command timeout and the connection closes: no 501 for
// the partial line, over plaintext and over TLS alike.
func TestDribblingClientIsCutAtTheTimeout(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t), extra: "[limits]\ncommand_timeout = \"1s\"\n"})
	s.start()
	for _, mode := range []string{"plain", "implicit-tls"} {
		t.Run(mode, func(t *testing.T) {
			var c net.Conn
			var err error
			if mode == "plain" {
				c, err = net.Dial("tcp", s.sub)
			} else {
				c, err = tls.Dial("tcp", s.subs, &tls.Config{InsecureSkipVerify: true})
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			if banner, _ := r.ReadString('\n'); !strings.HasPrefix(banner, "220 ") {
				t.Fatalf("banner %q", banner)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, b := range []byte("EHLO dribble.test") {
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
					time.Sleep(300 * time.Millisecond)
				}
			}()
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			rest, _ := io.ReadAll(r)
			<-done
			got := string(rest)
			if !strings.HasPrefix(got, "421 4.4.2 ") || strings.Contains(got, "501") || strings.Count(got, "\r\n") != 1 {
				t.Fatalf("a dribbling client got %q", got)
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Fatalf("cut after %s with command_timeout 1s", d)
			}
		})
	}
}

// After a DATA timeout the rest of what the client sends is not read as
// commands: 421 4.4.2 and the connection closes.
func TestDataTimeoutClosesTheSession(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t), trusted: true, extra: "[limits]\ndata_timeout = \"1s\"\n"})
	s.start()
	c, r := dialSMTP(t, s.sub)
	for _, cmd := range []string{"EHLO x.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"} {
		c.Write([]byte(cmd + "\r\n"))
		smtpReply(c, r)
	}
	c.Write([]byte("Subject: slow\r\n\r\nhalf a body\r\n"))
	time.Sleep(1500 * time.Millisecond) // past data_timeout: what the test is about
	c.Write([]byte("RSET\r\nNOOP\r\n"))
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	rest, _ := io.ReadAll(r)
	if got := string(rest); !strings.HasPrefix(got, "421 4.4.2 ") || strings.Count(got, "\r\n") != 1 {
		t.Fatalf("after a DATA timeout the client got %q", got)
	}
	if n := len(s.replay()); n != 0 {
		t.Errorf("%d events journaled for a timed-out message", n)
	}
}

// A STARTTLS or implicit-TLS handshake that stalls is cut at
// tls_handshake_timeout and frees its max_connections slot.
func TestStalledTLSHandshakeIsCut(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t), extra: "[limits]\nmax_connections = 1\ntls_handshake_timeout = \"1s\"\ncommand_timeout = \"5m\"\n"})
	s.start()
	for _, mode := range []string{"starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			addr := s.sub
			if mode == "implicit" {
				addr = s.subs
			}
			var c net.Conn
			var r *bufio.Reader
			// The one slot may still be held by the previous connection.
			waitFor(t, "a connection with a free slot", 10*time.Second, func() bool {
				var err error
				if c, err = net.Dial("tcp", addr); err != nil {
					return false
				}
				if mode == "implicit" {
					return true
				}
				r = bufio.NewReader(c)
				if banner := smtpReply(c, r); !strings.HasPrefix(banner, "220") {
					c.Close()
					return false
				}
				return true
			})
			defer c.Close()
			if mode == "starttls" {
				c.Write([]byte("EHLO x.test\r\n"))
				smtpReply(c, r)
				c.Write([]byte("STARTTLS\r\n"))
				if got := smtpReply(c, r); !strings.HasPrefix(got, "220") {
					t.Fatalf("STARTTLS: %q", got)
				}
			}
			start := time.Now()
			// Say nothing: no ClientHello.
			if _, closed := readAllUntilClose(c); !closed {
				t.Fatal("a stalled handshake was not cut within 15 s")
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Fatalf("cut after %s with tls_handshake_timeout 1s", d)
			}
			// The only slot is free again.
			waitFor(t, "the slot to be free", 5*time.Second, func() bool {
				d, err := net.Dial("tcp", s.sub)
				if err != nil {
					return false
				}
				defer d.Close()
				line, _ := bufio.NewReader(d).ReadString('\n')
				return strings.HasPrefix(line, "220 ")
			})
		})
	}
}
