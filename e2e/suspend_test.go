package e2e

import (
	"strings"
	"testing"
	"time"
)

// `mta queue suspend DOMAIN` stops deliveries there (nothing reaches the
// sink; the envelope waits, deferred with the suspension as its reason),
// survives a restart (journaled, and in the snapshot), and `mta queue
// resume DOMAIN` delivers what waited, at once; a suspension `--for` a
// while ends by itself; other domains are never held.
func TestSuspendAndResume(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	if out, errs, code := s.mta("", "queue", "suspend", "held.test"); code != 0 || !strings.Contains(out, "suspended: held.test until resumed") {
		t.Fatalf("suspend: exit %d: %s%s", code, out, errs)
	}
	held := s.submit(t, "alice@example.test", "a@held.test")
	s.submit(t, "alice@example.test", "b@free.test")
	waitFor(t, "the other domain's message", 30*time.Second, func() bool { return len(sk.messages(t)) == 1 })
	waitFor(t, "the held envelope deferred as suspended", 30*time.Second, func() bool {
		for _, e := range s.queue().Envelopes {
			if strings.HasPrefix(e.ID, held+".") && e.State == "deferred" && strings.Contains(e.LastError, "suspended") {
				return true
			}
		}
		return false
	})
	if out, _, _ := s.mta("", "queue"); !strings.Contains(out, "suspended: held.test until resumed") {
		t.Fatalf("mta queue does not show the suspension:\n%s", out)
	}
	for _, l := range s.replay("--envelope", held) {
		if l["type"] == "AttemptStarted" || l["type"] == "Attempted" {
			t.Fatalf("a suspended destination was tried: %v", l)
		}
	}

	// Across a restart: still suspended (offline, the queue says so too).
	s.stop()
	if out, _, _ := s.mta("", "queue"); !strings.Contains(out, "suspended: held.test") {
		t.Fatalf("offline mta queue does not show the suspension:\n%s", out)
	}
	s.start()
	s.mta("", "queue", "retry", "--all") // a retry does not override a suspension
	waitFor(t, "the retried envelope deferred again", 30*time.Second, func() bool {
		for _, e := range s.queue().Envelopes {
			if strings.HasPrefix(e.ID, held+".") && e.State == "deferred" {
				return true
			}
		}
		return false
	})
	if n := len(sk.messages(t)); n != 1 {
		t.Fatalf("%d messages at the sink while suspended, want 1", n)
	}
	if out, errs, code := s.mta("", "queue", "resume", "held.test"); code != 0 || !strings.Contains(out, "1 envelope(s) retried") {
		t.Fatalf("resume: exit %d: %s%s", code, out, errs)
	}
	waitFor(t, "the held message delivered after resume", 30*time.Second, func() bool { return len(sk.messages(t)) == 2 })

	// --for: it ends by itself.
	if _, errs, code := s.mta("", "queue", "suspend", "brief.test", "--for", "3s"); code != 0 {
		t.Fatalf("suspend --for: %s", errs)
	}
	s.submit(t, "alice@example.test", "c@brief.test")
	waitFor(t, "the briefly suspended message delivered", 60*time.Second, func() bool { return len(sk.messages(t)) == 3 })
	if _, errs, code := s.mta("", "queue", "resume", "nothing.test"); code == 0 || !strings.Contains(errs, "not suspended") {
		t.Fatalf("resume of a domain not suspended: exit %d: %s", code, errs)
	}
}
