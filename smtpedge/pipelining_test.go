package smtpedge

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/journal"
)

// A client that pipelines (RFC 2920) a whole transaction in one write gets
// every reply, in order, though the server keeps replies back until it
// reads again; and a multi-line EHLO reply arrives whole, not line by line
// in separate writes (it is read here in one go from the socket).
func TestPipelinedCommandsAllAnswered(t *testing.T) {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	srv := startEdge(t, j, func(string) {})
	c, err := net.Dial("tcp", srv.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	reply := func() string { // one reply, all its lines; the code of its last line
		var last string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading a reply: %v (so far %q)", err, last)
			}
			if len(line) < 4 || line[3] != '-' {
				return line[:3]
			}
			last = line
		}
	}
	if code := reply(); code != "220" {
		t.Fatalf("banner %s", code)
	}
	if _, err := c.Write([]byte("EHLO client.test\r\n")); err != nil {
		t.Fatal(err)
	}
	// The whole EHLO reply comes in one write: one read of the socket
	// (through the empty bufio.Reader) holds its last line.
	buf := make([]byte, 4096)
	n, err := r.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(buf[:n]), "\r\n"), "\r\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[len(lines)-1], "250 ") || !strings.Contains(string(buf[:n]), "PIPELINING") {
		t.Fatalf("EHLO reply in its first read: %q", buf[:n])
	}
	if _, err := c.Write([]byte("MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\nDATA\r\n")); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"250", "250", "250", "354"} {
		if code := reply(); code != want {
			t.Fatalf("reply %d to the pipelined group: %s, want %s", i, code, want)
		}
	}
	if _, err := c.Write([]byte("Subject: p\r\n\r\npipelined\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"250", "250", "250", "221"} {
		if code := reply(); code != want {
			t.Fatalf("reply %d after the body: %s, want %s", i, code, want)
		}
	}
	if j.LastSeq() != 1 {
		t.Fatalf("journal at %d, want the one message", j.LastSeq())
	}
}
