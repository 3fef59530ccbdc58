package queue

import (
	"strings"
	"testing"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/projections"
)

// The verifier compares the fold at the reference's sequence number, and
// a reference that disagrees is reported; one that agrees is not.
func TestVerifierReportsMismatch(t *testing.T) {
	evs := []events.Event{
		{Seq: 1, Envelope: "A", Payload: events.Received{Sender: "a@x", Recipients: []string{"b@y"}}},
		{Seq: 2, Envelope: "B", Payload: events.Received{Sender: "a@x", Recipients: []string{"c@y"}}},
		{Seq: 3, Envelope: "A", Payload: events.Deleted{}},
	}
	live := projections.NewQueue()
	live.Apply(evs[:2])
	ref := live.Snapshot() // as of sequence 2: A and B live
	v := NewVerifier(&ref)
	for _, e := range evs {
		v.Add(e)
	}
	rebuilt, mm := v.Finish()
	if len(mm) != 0 || len(rebuilt.Envelopes) != 1 {
		t.Fatalf("agreeing reference: mismatches %v, rebuilt %d", mm, len(rebuilt.Envelopes))
	}
	wrong := projections.NewQueue()
	wrong.Apply(evs[:1])
	wrong.Apply([]events.Event{{Seq: 2, Envelope: "nobody", Payload: events.Delivered{}}})
	bad := wrong.Snapshot()
	v = NewVerifier(&bad)
	for _, e := range evs {
		v.Add(e)
	}
	if _, mm := v.Finish(); len(mm) != 1 || !strings.Contains(mm[0], "envelope B is live in the journal but not in the reference") {
		t.Fatalf("disagreeing reference: %v", mm)
	}
}
