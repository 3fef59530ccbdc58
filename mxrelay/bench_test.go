package mxrelay

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// BenchmarkRelayTransaction is the relay path of one message: a 4 KiB
// message to one recipient over a pooled connection to Postfix's
// smtp-sink (a real server offering PIPELINING, in its own process, so
// the allocations counted are the relay's). Per message: ns and
// allocations.
func BenchmarkRelayTransaction(b *testing.B) {
	bin, err := exec.LookPath("smtp-sink")
	if err != nil {
		bin = "/usr/sbin/smtp-sink"
	}
	addr := "127.0.0.1:" + freePort(b, "127.0.0.1")
	args := []string{addr, "100"}
	if os.Getuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...)
	}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		b.Fatalf("smtp-sink (make deps installs it): %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("smtp-sink did not listen")
		}
	}
	r, err := New(Options{Mode: "static", Smarthost: addr, Hostname: "relay.test", TLS: TLSNone})
	if err != nil {
		b.Fatal(err)
	}
	pool := NewPool(time.Minute, 0)
	defer pool.Close()
	// As the envelope actor gives it: the policies' header block, then the
	// stored body read from its segment.
	prepend := "Received: from client.test by lm.test; Tue, 1 Dec 2026 07:00:00 +0000\r\n"
	stored := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 52))
	body := io.NewSectionReader(bytes.NewReader(stored), 0, int64(len(stored)))
	m := Message{Envelope: "B", From: "a@src.test", Recipients: []string{"b@dest.test"},
		Body: func() io.Reader {
			return io.MultiReader(strings.NewReader(prepend), io.NewSectionReader(body, 0, int64(len(stored))))
		}, Size: int64(len(prepend) + len(stored))}
	b.ReportAllocs()
	b.SetBytes(m.Size)
	for b.Loop() {
		if res := r.Deliver(context.Background(), m, pool); !res.Rcpts["b@dest.test"].Success() {
			b.Fatalf("delivery: %+v", res)
		}
	}
}
