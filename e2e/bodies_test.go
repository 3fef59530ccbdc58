package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// largeScript sends one message of about N bytes of body text over a
// trusted session and prints the reply code.
const largeScript = `
import smtplib, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
body = line * (n // len(line))
s = smtplib.SMTP(host, port, timeout=120)
s.ehlo("large.test")
s.mail("alice@example.test")
s.rcpt("bob@dest.test")
c, _ = s.docmd("DATA")
s.send(b"Subject: large\r\n\r\n")
for i in range(0, len(body), 65536):
    s.send(body[i:i+65536])
s.send(b".\r\n")
c, _ = s.getreply()
print(c)
s.quit()
`

// A message far bigger than a session's memory (8 MiB; a session holds at
// most 512 KiB of it) is streamed into a body segment of its own as it
// arrives, relayed intact, and verifies.
func TestLargeMessageIsStreamed(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	host, port, _ := strings.Cut(s.sub, ":")
	out := strings.Fields(python(t, largeScript, host, port, "8388608"))
	if len(out) != 1 || out[0] != "250" {
		t.Fatalf("reply to an 8 MiB message: %v", out)
	}
	waitFor(t, "the message delivered", time.Minute, func() bool {
		return len(sk.messages(t)) == 1 && len(s.queue().Envelopes) == 0
	})
	// smtp-sink's dump has LF line endings.
	msg := strings.ReplaceAll(sk.messages(t)[0], "\r\n", "\n")
	_, body, ok := strings.Cut(msg, "Subject: large\n\n")
	line := "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n"
	want := strings.Repeat(line, 8388608/(len(line)+1))
	if !ok || strings.TrimRight(body, "\n") != strings.TrimRight(want, "\n") {
		t.Fatalf("relayed body (%d bytes) differs from the one sent (%d bytes)", len(body), len(want))
	}
	segs, _ := filepath.Glob(filepath.Join(s.dir, "data", "journal", "bodies", "*.seg"))
	big := 0
	for _, p := range segs {
		if st, err := os.Stat(p); err == nil && st.Size() >= 8000000 {
			big++
		}
	}
	if big != 1 {
		t.Fatalf("%d body segments of 8 MB or more among %d, want 1", big, len(segs))
	}
	if out, errs, code := s.mta("", "replay", "--verify"); code != 0 {
		t.Fatalf("replay --verify: exit %d\n%s%s", code, out, errs)
	}
}

// [limits] body_memory caps what all sessions hold at once: with two
// sessions holding all of 1 MiB (512 KiB each, the most a session holds
// before it streams to disk), a third waits briefly, then gets 452 4.3.1;
// the two then finish with 250.
func TestBodyMemoryIsCapped(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true, extra: "[limits]\nbody_memory = \"1MiB\"\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	begin := func(rcpt string, size int) (net.Conn, *bufio.Reader) {
		c, r := dialSMTP(t, s.sub)
		for _, cmd := range []string{"EHLO hold.test", "MAIL FROM:<alice@example.test>", "RCPT TO:<" + rcpt + ">", "DATA"} {
			fmt.Fprintf(c, "%s\r\n", cmd)
			smtpReply(c, r)
		}
		fmt.Fprintf(c, "Subject: hold\r\n\r\n%s", strings.Repeat(strings.Repeat("x", 998)+"\r\n", size/1000))
		return c, r
	}
	finish := func(c net.Conn, r *bufio.Reader) string {
		fmt.Fprint(c, ".\r\n")
		return smtpReply(c, r)
	}
	c1, r1 := begin("r1@dest.test", 400<<10)
	c2, r2 := begin("r2@dest.test", 400<<10)
	waitFor(t, "both sessions to hold their memory", 20*time.Second, func() bool {
		return strings.Contains(s.metrics(), "ledgermail_body_memory_bytes 1.048576e+06")
	})
	c3, r3 := begin("r3@dest.test", 1000)
	if reply := finish(c3, r3); !strings.HasPrefix(reply, "452 4.3.1") {
		t.Fatalf("third session: %q", reply)
	}
	for _, c := range []struct {
		c net.Conn
		r *bufio.Reader
	}{{c1, r1}, {c2, r2}} {
		if reply := finish(c.c, c.r); !strings.HasPrefix(reply, "250 ") {
			t.Fatalf("held session: %q", reply)
		}
	}
	waitFor(t, "the two messages at the sink", 30*time.Second, func() bool { return len(sk.messages(t)) == 2 })
	if !strings.Contains(s.logText(), "body_memory is exhausted") {
		t.Fatalf("no log line for the refusal:\n%s", s.logText())
	}
	if !strings.Contains(s.metrics(), "ledgermail_body_memory_bytes 0") {
		t.Fatalf("body memory not released")
	}
}
