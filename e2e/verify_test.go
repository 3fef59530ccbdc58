package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// Offline `replay --verify` compares the fold of the journal with the queue
// snapshot the server saved, an independent record: a snapshot that
// disagrees is reported.
func TestReplayVerifyReportsMismatch(t *testing.T) {
	s, _ := deferredQueue(t, 3)
	// Online: compared with the running server's projection.
	out, _, code := s.mta("", "replay", "--verify")
	if code != 0 || !strings.Contains(out, "compared with the running server's queue") || !strings.Contains(out, "0 mismatches") {
		t.Fatalf("online verify: exit %d\n%s", code, out)
	}
	s.stop() // saves the snapshot
	out, _, code = s.mta("", "replay", "--verify")
	if code != 0 || !strings.Contains(out, "compared with the queue snapshot") || !strings.Contains(out, "0 mismatches") {
		t.Fatalf("offline verify of a sound journal: exit %d\n%s", code, out)
	}
	// Replace the snapshot with one that, at the same sequence number, has
	// no live envelope.
	j, err := journal.Open(journal.Options{Dir: filepath.Join(s.dir, "data", "journal")})
	if err != nil {
		t.Fatal(err)
	}
	seq, _, err := j.Snapshot("queue")
	if err != nil {
		t.Fatal(err)
	}
	q := projections.NewQueue()
	q.Apply([]events.Event{{Seq: seq, Envelope: "nobody", Payload: events.Delivered{}}})
	data, at, err := q.MarshalSnapshot()
	if err != nil || at != seq {
		t.Fatalf("forged snapshot at %d (want %d): %v", at, seq, err)
	}
	if err := j.PutSnapshot("queue", at, data); err != nil {
		t.Fatal(err)
	}
	j.Close()
	out, _, code = s.mta("", "replay", "--verify")
	if code != 1 || strings.Count(out, "is live in the journal but not in the reference") != 3 {
		t.Fatalf("verify against a disagreeing snapshot: exit %d\n%s", code, out)
	}
}
