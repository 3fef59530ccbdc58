// Package etcdtest runs a real etcd server (Debian's etcd-server) on
// loopback for tests.
package etcdtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Server is a running etcd.
type Server struct {
	Endpoint string // host:port of its client URL
	cmd      *exec.Cmd
	t        testing.TB
	dir      string
	peer     string
}

// Start starts etcd in a temporary directory; it is stopped when the test
// ends. A machine without etcd fails the test: `make test` installs it.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatalf("etcd not found (Debian's etcd-server; make test installs it): %v", err)
	}
	s := &Server{t: t, dir: t.TempDir(), Endpoint: freeAddr(t), peer: freeAddr(t)}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	c := "http://" + s.Endpoint
	p := "http://" + s.peer
	cmd := exec.Command("etcd", "--name", "test", "--data-dir", filepath.Join(s.dir, "data"),
		"--listen-client-urls", c, "--advertise-client-urls", c,
		"--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
		"--initial-cluster", "test="+p, "--log-level", "error")
	logf, err := os.OpenFile(filepath.Join(s.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start etcd: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.Endpoint, 200*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "etcd.log"))
	s.t.Fatalf("etcd did not listen on %s within 20 s:\n%s", s.Endpoint, log)
}

// Stop kills etcd (idempotent).
func (s *Server) Stop() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart starts etcd again on the same address and data.
func (s *Server) Restart() { s.Stop(); s.start() }

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr())
}
