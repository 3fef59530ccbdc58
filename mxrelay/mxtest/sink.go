package mxtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Sink is a running Postfix smtp-sink (a real SMTP server) that stores each
// transaction as a file.
type Sink struct {
	Addr string
	Dir  string
	cmd  *exec.Cmd
	out  syncBuffer
}

// syncBuffer is a bytes.Buffer safe to read while smtp-sink writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// StartSink runs smtp-sink on addr ("127.0.0.2:2525"); extra flags make it
// refuse commands (-f hard, -r soft). It returns once the port accepts.
func StartSink(addr string, extra ...string) (*Sink, error) {
	bin, err := exec.LookPath("smtp-sink")
	if err != nil {
		bin = "/usr/sbin/smtp-sink"
		if _, err := os.Stat(bin); err != nil {
			return nil, errors.New("smtp-sink is not installed: run `make test`, which installs postfix's tools")
		}
	}
	// smtp-sink drops to nobody when run as root: its directory must be
	// reachable by nobody.
	dir, err := os.MkdirTemp("", "ledgermail-sink-")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o777)
	args := append(append([]string(nil), extra...), "-d", dir+"/%M%S.", addr, "100")
	if os.Getuid() == 0 {
		args = append([]string{"-u", "nobody"}, args...)
	}
	s := &Sink{Addr: addr, Dir: dir}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, fmt.Errorf("smtp-sink did not listen on %s: %s", addr, s.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Messages returns the stored transactions (smtp-sink's X-Client-Addr,
// X-Mail-Args, X-Rcpt-Args lines, its Received header, then the message).
func (s *Sink) Messages() ([]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(s.Dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return out, nil
}

// Output is what smtp-sink printed.
func (s *Sink) Output() string { return s.out.String() }

// Close stops smtp-sink and removes its files.
func (s *Sink) Close() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
	os.RemoveAll(s.Dir)
}
