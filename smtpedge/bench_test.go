package smtpedge

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/ledgermail/ledgermail/journal"
)

// BenchmarkSubmitToJournal is the edge -> journal path of one message: a
// session on a real listener (plaintext, trusted loopback client) sends
// MAIL, RCPT, DATA and a 4 KiB body, and the server answers 250 once the
// Received event is durable in a real journal on disk. Per message: ns,
// and the allocations of the whole process (the client side is a raw
// connection writing prepared bytes, so nearly all are the server's).
func BenchmarkSubmitToJournal(b *testing.B) {
	j, err := journal.Open(journal.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	srv := startEdge(b, j, func(string) {})
	conn, err := net.Dial("tcp", srv.Addrs()[0])
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	reply := func() string { // the last line of a reply
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(l) < 4 || l[3] != '-' {
				return l
			}
		}
	}
	reply()
	fmt.Fprintf(conn, "EHLO bench.test\r\n")
	reply()
	body := "Subject: bench\r\nMessage-ID: <b@bench.test>\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 52) + ".\r\n"
	txn := []byte("MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		conn.Write(txn)
		for _, want := range []string{"250", "250", "354"} {
			if l := reply(); !strings.HasPrefix(l, want) {
				b.Fatalf("got %q, want %s", l, want)
			}
		}
		conn.Write([]byte(body))
		if l := reply(); !strings.HasPrefix(l, "250") {
			b.Fatalf("end of data: %q", l)
		}
	}
}
