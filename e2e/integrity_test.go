package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A stored body that no longer matches the SHA-256 of its Received event
// is reported by replay --verify and never relayed: the envelope is
// deferred with the corruption as its reason.
func TestCorruptBodyIsDetected(t *testing.T) {
	sinkAddr := freePort(t)
	s := newServer(t, serverOpts{smarthost: sinkAddr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	bad := s.submit(t, "alice@example.test", "bob@dest.test", "--header", "Subject: to be damaged")
	s.submit(t, "alice@example.test", "carol@dest.test", "--header", "Subject: intact")
	s.stop()
	corruptBody(t, filepath.Join(s.dir, "data", "journal"), bad)

	out, _, code := s.mta("", "replay", "--verify")
	if code != 1 || !strings.Contains(out, "corrupt body "+bad) {
		t.Fatalf("replay --verify of a damaged body: exit %d\n%s", code, out)
	}
	sk := startSink(t, sinkAddr)
	s.start()
	waitFor(t, "the intact message", 30*time.Second, func() bool { return len(sk.messages(t)) == 1 })
	waitFor(t, "the damaged one to be deferred as corrupt", 30*time.Second, func() bool {
		for _, e := range s.queue().Envelopes {
			if strings.HasPrefix(e.ID, bad) && strings.Contains(e.LastError, "corrupt") {
				return true
			}
		}
		return false
	})
	if msg := sk.messages(t)[0]; !strings.Contains(msg, "Subject: intact") {
		t.Fatalf("relayed:\n%s", msg)
	}
	// Online, too.
	if out, _, code := s.mta("", "replay", "--verify"); code != 1 || !strings.Contains(out, "corrupt body "+bad) {
		t.Fatalf("online replay --verify: exit %d\n%s", code, out)
	}
}

// `mta journal head` prints the chain's head; `replay --verify --anchor`
// proves later that the journal still extends it, offline and online, and
// fails for a head it does not extend.
func TestJournalHeadAndAnchor(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	out, errs, code := s.mta("", "journal", "head")
	head := strings.TrimSpace(out)
	if code != 0 || !regexp.MustCompile(`^\d+:[0-9a-f]{64}$`).MatchString(head) {
		t.Fatalf("journal head (online): exit %d %q %s", code, out, errs)
	}
	s.submit(t, "alice@example.test", "carol@dest.test")
	waitDelivered(t, sk, s, "second delivery", 2)
	if out, _, code := s.mta("", "replay", "--verify", "--anchor", head); code != 0 || !strings.Contains(out, "extends anchor") {
		t.Fatalf("online verify --anchor: exit %d\n%s", code, out)
	}
	s.stop()
	if out, _, code := s.mta("", "replay", "--verify", "--anchor", head); code != 0 || !strings.Contains(out, "extends anchor") {
		t.Fatalf("offline verify --anchor: exit %d\n%s", code, out)
	}
	seq, _, _ := strings.Cut(head, ":")
	wrong := seq + ":" + strings.Repeat("0", 64)
	if out, _, code := s.mta("", "replay", "--verify", "--anchor", wrong); code != 1 || !strings.Contains(out, "does not extend the anchor") {
		t.Fatalf("verify against a wrong anchor: exit %d\n%s", code, out)
	}
	if _, errs, code := s.mta("", "replay", "--verify", "--anchor", "nonsense"); code != 2 {
		t.Fatalf("a malformed anchor: exit %d %s", code, errs)
	}
}
