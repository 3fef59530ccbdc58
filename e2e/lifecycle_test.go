package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// `mta queue delete` during an attempt that then defers: the attempt is
// journaled, the envelope stays deleted, and no AttemptStarted follows.
func TestDeleteDuringAttemptStaysDeleted(t *testing.T) {
	peer, err := mxtest.Start(mxtest.Script{DataDelay: 2 * time.Second, DataEnd: "451 4.3.0 try again later"}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peer.Close)
	s := newServer(t, serverOpts{smarthost: peer.Addr, queue: "keep_bodies = false"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	id := s.submit(t, "alice@example.test", "bob@dest.test")
	child := id + ".1"
	waitFor(t, "the attempt to start", 20*time.Second, func() bool {
		return strings.Contains(strings.Join(types(s.replay("--envelope", child)), " "), "AttemptStarted")
	})
	if out, errs, code := s.mta("", "queue", "delete", child); code != 0 {
		t.Fatalf("queue delete: exit %d %s %s", code, out, errs)
	}
	waitFor(t, "the attempt to end", 20*time.Second, func() bool {
		return strings.Contains(strings.Join(types(s.replay("--envelope", child)), " "), "Attempted")
	})
	// Three retry intervals (1 s each): long enough for a resurrected
	// envelope to start another attempt.
	time.Sleep(3 * time.Second)
	hist := types(s.replay("--envelope", child))
	joined := strings.Join(hist, " ")
	if strings.Count(joined, "AttemptStarted") != 1 {
		t.Fatalf("attempts after delete: %s", joined)
	}
	afterDelete := joined[strings.Index(joined, "Deleted"):]
	if strings.Contains(afterDelete, "Deferred") || strings.Contains(afterDelete, "AttemptStarted") {
		t.Fatalf("the deleted envelope changed again: %s", joined)
	}
	if q := s.queue(); len(q.Envelopes) != 0 || q.Counts["deleted"] != 1 {
		t.Fatalf("queue after delete: %+v", q)
	}
	b, _ := os.ReadFile(s.logFile)
	if strings.Contains(string(b), "read body") {
		t.Fatalf("the actor tried to read a dropped body:\n%s", b)
	}
}
