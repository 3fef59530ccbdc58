package e2e

import (
	"os"
	"strconv"
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

// SIGTERM under delivery load with a slow next hop (1 s between the final
// dot and its 250): the deliveries in flight finish and are journaled
// within shutdown_grace, so after the restart every message arrives once:
// 0 lost, 0 duplicated.
func TestSIGTERMDoesNotDuplicateDeliveries(t *testing.T) {
	peer, err := mxtest.Start(mxtest.Script{DataDelay: time.Second}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peer.Close)
	s := newServer(t, serverOpts{smarthost: peer.Addr, trusted: true, relay: `mode = "static"
smarthost = "` + peer.Addr + `"
max_connections_per_domain = 10`})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	const n = 60
	bulk(t, s, "dest.test", n)
	waitFor(t, "deliveries under way", 30*time.Second, func() bool { return len(peer.Messages()) >= 5 })
	s.stop() // SIGTERM with deliveries in flight
	s.start()
	waitFor(t, "every message delivered", 90*time.Second, func() bool { return len(peer.Messages()) >= n && len(s.queue().Envelopes) == 0 })
	seen := map[string]int{}
	for _, m := range peer.Messages() {
		for _, l := range strings.Split(m, "\n") {
			if subj, ok := strings.CutPrefix(strings.TrimSpace(l), "Subject: "); ok {
				seen[subj]++
			}
		}
	}
	for i := 0; i < n; i++ {
		subj := "bulk " + strconv.Itoa(i)
		if seen[subj] != 1 {
			t.Errorf("%q arrived %d times", subj, seen[subj])
		}
	}
}
