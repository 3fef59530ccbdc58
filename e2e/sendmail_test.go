package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sendmailPipe runs `cmd args...` with msg on standard input, the way cron
// pipes a job's output into sendmail, and returns the exit code.
func sendmailPipe(t *testing.T, bin string, msg string, args ...string) (int, string) {
	t.Helper()
	c := exec.Command("sh", append([]string{"-c", `printf '%s' "$MSG" | "$0" "$@"`, bin}, args...)...)
	c.Env = append(os.Environ(), "MSG="+msg)
	out, err := c.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// `mta sendmail` keeps mail while the server is down (maildrop) and the
// server queues it when it starts and while it runs; -t takes To/Cc/Bcc and
// removes Bcc; a symlink named sendmail behaves the same; sysexits codes.
func TestSendmailMaildrop(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	// Server down: the message waits in the maildrop.
	code, out := sendmailPipe(t, mtaBin, "Subject: from cron\nTo: Ann <ann@dest.test>\nBcc: hidden@dest.test\n\ncron output\n.\nnot part of the message\n",
		"sendmail", "-t", "-c", s.config, "extra@dest.test")
	if code != 0 {
		t.Fatalf("sendmail with the server down: exit %d %s", code, out)
	}
	if files, _ := filepath.Glob(filepath.Join(s.dir, "data", "maildrop", "*.msg")); len(files) != 1 {
		t.Fatalf("maildrop holds %v", files)
	}
	s.start()
	waitFor(t, "the dropped message delivered", 30*time.Second, func() bool { return len(sk.messages(t)) == 1 })
	msg := sk.messages(t)[0]
	for _, want := range []string{"X-Rcpt-Args: <ann@dest.test>", "X-Rcpt-Args: <hidden@dest.test>", "X-Rcpt-Args: <extra@dest.test>",
		"X-Mail-Args: <root@mta.test>", "Subject: from cron", "cron output"} {
		if !strings.Contains(msg, want) {
			t.Errorf("relayed message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "Bcc:") || strings.Contains(msg, "not part of the message") {
		t.Errorf("Bcc kept or the text after the lone dot sent:\n%s", msg)
	}
	if files, _ := filepath.Glob(filepath.Join(s.dir, "data", "maildrop", "*.msg")); len(files) != 0 {
		t.Errorf("maildrop not emptied: %v", files)
	}
	hist := s.replay()
	if hist[0]["listener"] != "sendmail" || hist[0]["auth_user"] != "root" {
		t.Errorf("Received event: %v", hist[0])
	}
	// Server running, through a symlink named sendmail, -i keeps a lone dot.
	link := filepath.Join(s.dir, "sendmail")
	if err := os.Symlink(mtaBin, link); err != nil {
		t.Fatal(err)
	}
	if code, out := sendmailPipe(t, link, "Subject: second\n\nline\n.\nstill here\n", "-i", "-f", "ops@example.test", "-c", s.config, "bob@dest.test"); code != 0 {
		t.Fatalf("sendmail via symlink: exit %d %s", code, out)
	}
	waitFor(t, "the second message", 30*time.Second, func() bool { return len(sk.messages(t)) == 2 })
	for _, m := range sk.messages(t) {
		if strings.Contains(m, "Subject: second") && (!strings.Contains(m, "still here") || !strings.Contains(m, "X-Mail-Args: <ops@example.test>")) {
			t.Errorf("-i / -f not honoured:\n%s", m)
		}
	}
	// sysexits: no recipient 64, a bad address 67.
	if code, _ := sendmailPipe(t, mtaBin, "Subject: x\n\ny\n", "sendmail", "-c", s.config); code != 64 {
		t.Errorf("no recipients: exit %d, want 64", code)
	}
	if code, _ := sendmailPipe(t, mtaBin, "Subject: x\n\ny\n", "sendmail", "-c", s.config, "not an address"); code != 67 {
		t.Errorf("bad recipient: exit %d, want 67", code)
	}
	// The maildrop cannot be written: 75 (EX_TEMPFAIL), the caller retries.
	bad := filepath.Join(s.dir, "bad.toml")
	os.WriteFile(bad, []byte("data_dir = \"/proc/ledgermail-no-such-dir\"\n"), 0o644)
	if code, out := sendmailPipe(t, mtaBin, "Subject: x\n\ny\n", "sendmail", "-c", bad, "bob@dest.test"); code != 75 {
		t.Errorf("unwritable maildrop: exit %d (%s), want 75", code, out)
	}
}
