package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tmpfsDataDir mounts a small tmpfs as the server's data_dir (root only).
func tmpfsDataDir(t *testing.T, dir string, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a tmpfs to fill needs root (run `make test` as root, as CI does)")
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", data).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", data).Run() })
	return data
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fill writes a file until only leave bytes are free (0: until ENOSPC).
func fill(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		free := freeBytes(t, filepath.Dir(path))
		if free <= leave {
			return
		}
		n := int64(len(chunk))
		if free-leave < n {
			n = free - leave
		}
		if _, err := f.Write(chunk[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// Below journal.min_free new mail is refused with 452 4.3.1, mail accepted
// before is still delivered, and mail is accepted again once space returns.
// A disk that fills up completely fails the journal: the message concerned
// is not acknowledged and the server exits 1 with one line, no panic trace.
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	data := tmpfsDataDir(t, dir, "48m")
	sinkAddr := freePort(t)
	s := newServer(t, serverOpts{smarthost: sinkAddr, dir: dir, extra: "[journal]\nmin_free = \"12MiB\"\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	before := s.submit(t, "alice@example.test", "bob@dest.test")

	filler := filepath.Join(data, "filler")
	fill(t, filler, 6<<20)
	out, code := swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
		"--from", "alice@example.test", "--to", "bob@dest.test")
	if code == 0 || !strings.Contains(out, "452 4.3.1") {
		t.Fatalf("below min_free: exit %d\n%s", code, out)
	}
	// Still up, and still delivering what it had accepted.
	sk := startSink(t, sinkAddr)
	waitFor(t, "the message accepted before the disk filled to be delivered", 60*time.Second, func() bool {
		return len(sk.messages(t)) == 1
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	after := s.submit(t, "alice@example.test", "carol@dest.test")
	waitDelivered(t, sk, s, "the message accepted after space returned", 2)

	// Completely full, with no reserve configured: a write error reaches
	// the journal.
	s.stop()
	s.rewrite(func(cfg string) string { return strings.Replace(cfg, `min_free = "12MiB"`, `min_free = 0`, 1) })
	s.start()
	bodyFile := filepath.Join(dir, "body.txt")
	os.WriteFile(bodyFile, []byte(strings.Repeat("a full disk\n", 20000)), 0o644)
	fill(t, filler, 0)
	out, _ = swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
		"--from", "alice@example.test", "--to", "dave@dest.test", "--body", "@"+bodyFile)
	if queuedRE.MatchString(out) || !strings.Contains(out, "451 4.3.0") {
		t.Fatalf("a message on a full disk: want 451 4.3.0, got:\n%s", out)
	}
	var exitErr error
	select {
	case exitErr = <-s.waitDone:
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not stop after its journal failed; swaks said:\n%s", out)
	}
	s.cmd = nil
	var ee *exec.ExitError
	if !errors.As(exitErr, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit after the journal failed: %v", exitErr)
	}
	logb, _ := os.ReadFile(s.logFile)
	log := string(logb)
	if strings.Contains(log, "goroutine ") || strings.Contains(log, "panic:") || strings.Count(log, "journal failed") != 1 {
		t.Fatalf("log of a full disk:\n%s", log)
	}
	if !strings.Contains(log, "no space left on device") {
		t.Fatalf("the log line does not name the cause:\n%s", log)
	}

	// Started on the full disk: no flood, no trace; it exits 1 or serves.
	cmd := exec.Command(mtaBin, "serve", "-c", s.config)
	var outb strings.Builder
	cmd.Stdout, cmd.Stderr = &outb, &outb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	if o := outb.String(); strings.Contains(o, "goroutine ") || strings.Count(o, "\n") > 20 {
		t.Fatalf("start on a full disk logged:\n%s", o)
	}

	// Space back: nothing acknowledged was lost, and the journal verifies.
	os.Remove(filler)
	s.start()
	waitDelivered(t, sk, s, "nothing left to deliver", 2)
	for _, id := range []string{before, after} {
		if n := len(s.replay("--envelope", id)); n == 0 {
			t.Errorf("envelope %s is gone from the journal", id)
		}
	}
	s.stop()
	if out, _, code := s.mta("", "replay", "--verify"); code != 0 {
		t.Fatalf("replay --verify after the full disk: exit %d\n%s", code, out)
	}
}
