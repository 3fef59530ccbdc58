package policy

import (
	"bufio"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// Against a real spamd (Debian's spamd package, installed by `make test`).
func TestSpamdGTUBE(t *testing.T) {
	bin, err := exec.LookPath("spamd")
	if err != nil {
		bin = "/usr/sbin/spamd"
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--listen="+addr, "-u", "nobody", "--max-children=1", "--syslog=stderr", "--pidfile="+t.TempDir()+"/spamd.pid")
	if err := cmd.Start(); err != nil {
		t.Fatalf("spamd is not installed (%v): run `make test`, which installs it", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("spamd did not start listening")
		}
		time.Sleep(100 * time.Millisecond)
	}
	s := Spamd{Addr: addr, Timeout: 30 * time.Second}
	res, err := s.Check(context.Background(), []byte("From: a@x.test\r\nSubject: spam\r\n\r\n"+gtube+"\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Spam || res.Score < 100 || !contains(res.Symbols, "GTUBE") {
		t.Fatalf("GTUBE verdict: %+v", res)
	}
	h := res.Headers()
	if !strings.HasPrefix(h, "X-Spam-Flag: YES\r\n") || !strings.Contains(h, "X-Spam-Status: Yes, score=") || !strings.Contains(h, "GTUBE") {
		t.Fatalf("headers:\n%s", h)
	}
	for _, l := range strings.Split(h, "\r\n") {
		if len(l) > 100 {
			t.Errorf("header line of %d bytes", len(l))
		}
	}
	ham, err := s.Check(context.Background(), []byte("From: a@x.test\r\nTo: b@y.test\r\nSubject: lunch\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@x.test>\r\n\r\nSee you at noon.\r\n"))
	if err != nil || ham.Spam {
		t.Fatalf("ham: %+v %v", ham, err)
	}
}

// Protocol edge cases with a scripted spamd: timeouts and bad answers are
// errors (the caller passes the message untagged), never a verdict.
func TestSpamdProtocolErrors(t *testing.T) {
	serve := func(answer string, delay time.Duration) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					bufio.NewReader(c).ReadString('\n')
					time.Sleep(delay)
					c.Write([]byte(answer))
				}()
			}
		}()
		return ln.Addr().String()
	}
	for name, c := range map[string]struct {
		answer string
		delay  time.Duration
	}{
		"timeout":      {"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9 / 5\r\n\r\n", 2 * time.Second},
		"error status": {"SPAMD/1.0 76 Bad header line\r\n\r\n", 0},
		"no verdict":   {"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", 0},
		"garbage":      {"HTTP/1.1 200 OK\r\n\r\n", 0},
	} {
		addr := serve(c.answer, c.delay)
		_, err := Spamd{Addr: addr, Timeout: 300 * time.Millisecond}.Check(context.Background(), []byte("x\r\n"))
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
