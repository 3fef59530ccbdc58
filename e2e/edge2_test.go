package e2e

import (
	"os"
	"strings"
	"testing"
)

// [policies] received_auth_user = true names the login in Received, as
// Postfix's smtpd_sasl_authenticated_header = yes; the default does not.
func TestReceivedAuthUserOptIn(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "[policies]\nreceived_auth_user = true\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	if msg := sk.messages(t)[0]; !strings.Contains(msg, "(authenticated sender: alice)") {
		t.Fatalf("received_auth_user = true, but:\n%s", msg)
	}
}

// A users file readable by group or others is refused in one line, exit 2.
func TestUsersFileModeIsChecked(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t)})
	s.addUser("alice", "secret", "alice@example.test")
	users := s.dir + "/data/users"
	if err := os.Chmod(users, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := run(t, "serve", "-c", s.config)
	if code != 2 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, "users") || !strings.Contains(errs, "0644") {
		t.Fatalf("serve with a 0644 users file: exit %d, %q", code, errs)
	}
	if _, errs, code := s.mta("", "users", "list"); code != 2 || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("users list with a 0644 users file: exit %d, %q", code, errs)
	}
	os.Chmod(users, 0o600)
	s.start()
}
