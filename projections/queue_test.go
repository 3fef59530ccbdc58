package projections

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ledgermail/ledgermail/events"
)

func ev(seq uint64, env string, p events.Payload) events.Event {
	return events.Event{Seq: seq, Time: time.Unix(int64(1000+seq), 0).UTC(), Envelope: env, Version: 1, Payload: p}
}

func TestQueueFoldLifecycle(t *testing.T) {
	q := NewQueue()
	q.Apply([]events.Event{
		ev(1, "A", events.Received{Sender: "s@x", Recipients: []string{"a@one", "b@two"}, BodyKey: "A", Size: 100}),
		ev(2, "A", events.PoliciesApplied{Prepend: "Received: x\r\n", Recipients: []string{"a@one", "b@two"}}),
		ev(3, "A", events.Split{Mode: "domain", Children: []events.Child{{ID: "A.1", Recipients: []string{"a@one"}}, {ID: "A.2", Recipients: []string{"b@two"}}}}),
	})
	s := q.Snapshot()
	if len(s.Envelopes) != 2 || s.Counts[StateQueued] != 2 || s.Counts[StateSplit] != 1 || s.Counts[StateReceived] != 0 {
		t.Fatalf("after split: %+v", s)
	}
	c, ok := q.Get("A.1")
	if !ok || c.Parent != "A" || c.BodyKey != "A" || c.Size != 100+13 || c.Prepend != "Received: x\r\n" || c.Received == nil {
		t.Fatalf("child A.1 in the live queue before its first attempt: %+v", c)
	}
	// Its first attempt ends deferred: the live queue slims it (the
	// actor of its next attempt reads the details from the journal).
	q.Apply([]events.Event{
		ev(4, "A.1", events.AttemptStarted{Attempt: 1, Recipients: []string{"a@one"}}),
		ev(5, "A.1", events.Deferred{Recipients: []string{"a@one"}, NextAttempt: time.Unix(9000, 0), Reason: "421 later"}),
	})
	if c, _ := q.Get("A.1"); c.Prepend != "" || c.Received != nil || c.State != StateDeferred {
		t.Fatalf("child A.1 deferred, not slimmed: %+v", c)
	}
	// The full fold (what an envelope actor rebuilds) keeps the header block.
	set := map[string]*Envelope{}
	for _, e := range []events.Event{
		ev(1, "A", events.Received{Sender: "s@x", Recipients: []string{"a@one"}, BodyKey: "A", Size: 100}),
		ev(2, "A", events.PoliciesApplied{Prepend: "Received: x\r\n", Recipients: []string{"a@one"}}),
		ev(3, "A", events.Split{Mode: "domain", Children: []events.Child{{ID: "A.1", Recipients: []string{"a@one"}}}}),
	} {
		Fold(set, e)
	}
	if set["A.1"].Prepend != "Received: x\r\n" || set["A.1"].Received.Sender != "s@x" {
		t.Fatalf("folded child: %+v", set["A.1"])
	}
	next := time.Unix(5000, 0).UTC()
	q.Apply([]events.Event{
		ev(4, "A.1", events.AttemptStarted{Attempt: 1}),
		ev(5, "A.1", events.Attempted{Attempt: 1, Results: []events.RcptResult{{Recipient: "a@one", Code: 451, Enhanced: "4.3.0", Message: "try later", Temporary: true}}}),
		ev(6, "A.1", events.Deferred{Recipients: []string{"a@one"}, NextAttempt: next, Reason: "451 4.3.0 try later"}),
		ev(7, "A.2", events.AttemptStarted{Attempt: 1}),
		ev(8, "A.2", events.Delivered{Recipients: []string{"b@two"}}),
	})
	s = q.Snapshot()
	if len(s.Envelopes) != 1 || s.Envelopes[0].ID != "A.1" {
		t.Fatalf("live: %+v", s.Envelopes)
	}
	e := s.Envelopes[0]
	if e.State != StateDeferred || e.Attempts != 1 || !e.NextAttempt.Equal(next) || !strings.Contains(e.LastError, "451") {
		t.Fatalf("deferred envelope: %+v", e)
	}
	if s.Counts[StateDelivered] != 1 || s.Counts[StateDeferred] != 1 || s.Counts[StateQueued] != 0 {
		t.Fatalf("counts: %v", s.Counts)
	}
	q.Apply([]events.Event{ev(9, "A.1", events.Bounced{Recipients: []string{"a@one"}, Reason: "550 no"})})
	if s = q.Snapshot(); len(s.Envelopes) != 0 || s.Counts[StateBounced] != 1 || s.Seq != 9 {
		t.Fatalf("after bounce: %+v", s)
	}
}

func TestReplayFormats(t *testing.T) {
	e := ev(7, "A.1", events.Delivered{Recipients: []string{"a@one"}, Host: "127.0.0.1:25"})
	b, err := JSONLine(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"seq":7`, `"envelope":"A.1"`, `"type":"Delivered"`, `"version":1`, `"recipients":["a@one"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("json line %s lacks %s", b, want)
		}
	}
	var sb strings.Builder
	if err := WriteText(&sb, e); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sb.String(), "A.1") || !strings.Contains(sb.String(), "Delivered") {
		t.Errorf("text line %q", sb.String())
	}
	f := Filter{Envelope: "A"}
	if !f.Match(e) || f.Match(ev(1, "AB", events.Deleted{})) || !f.Match(ev(1, "A", events.Deleted{})) {
		t.Error("envelope filter")
	}
}

func TestBodyInUseUntilTheLastChildIsDone(t *testing.T) {
	q := NewQueue()
	q.Apply([]events.Event{ev(1, "B", events.Received{Sender: "s@x", Recipients: []string{"a@one", "b@two"}, BodyKey: "B"})})
	if !q.BodyInUse("B") {
		t.Fatal("received envelope's body not in use")
	}
	q.Apply([]events.Event{
		ev(2, "B", events.Split{Children: []events.Child{{ID: "B.1", Recipients: []string{"a@one"}}, {ID: "B.2", Recipients: []string{"b@two"}}}}),
		ev(3, "B.1", events.Delivered{Recipients: []string{"a@one"}}),
	})
	if !q.BodyInUse("B") {
		t.Fatal("body released while B.2 is live")
	}
	q.Apply([]events.Event{ev(4, "B.2", events.Bounced{Recipients: []string{"b@two"}})})
	if q.BodyInUse("B") {
		t.Fatal("body still in use after every child is final")
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	q := NewQueue()
	q.Apply([]events.Event{
		ev(1, "A", events.Received{Sender: "s@x", Recipients: []string{"a@one", "b@two"}, BodyKey: "A"}),
		ev(2, "A", events.Split{Children: []events.Child{{ID: "A.1", Recipients: []string{"a@one"}}, {ID: "A.2", Recipients: []string{"b@two"}}}}),
		ev(3, "A.1", events.Deferred{Recipients: []string{"a@one"}, NextAttempt: time.Unix(9000, 0).UTC(), Reason: "451"}),
	})
	data, seq, err := q.MarshalSnapshot()
	if err != nil || seq != 3 {
		t.Fatalf("%v %d", err, seq)
	}
	r := NewQueue()
	if s, err := r.LoadSnapshot(data); err != nil || s != 3 {
		t.Fatalf("%v %d", err, s)
	}
	// Applying the same tail to both gives the same state.
	tail := []events.Event{ev(4, "A.2", events.Delivered{Recipients: []string{"b@two"}})}
	q.Apply(tail)
	r.Apply(tail)
	a, b := q.Snapshot(), r.Snapshot()
	if fmt.Sprint(a.Counts) != fmt.Sprint(b.Counts) || len(a.Envelopes) != 1 || len(b.Envelopes) != 1 ||
		!b.Envelopes[0].NextAttempt.Equal(a.Envelopes[0].NextAttempt) || r.BodyInUse("A") != q.BodyInUse("A") {
		t.Fatalf("restored queue differs:\n%+v\n%+v", a, b)
	}
	if _, err := r.LoadSnapshot([]byte("garbage")); err == nil {
		t.Fatal("garbage snapshot loaded")
	}
}

func TestLenAndSelect(t *testing.T) {
	q := NewQueue()
	q.Apply([]events.Event{
		ev(1, "A", events.Received{Sender: "s@x", Recipients: []string{"a@one"}, BodyKey: "A"}),
		ev(2, "AB", events.Received{Sender: "s@x", Recipients: []string{"b@one"}, BodyKey: "AB"}),
	})
	if q.Len() != 2 {
		t.Fatalf("Len = %d", q.Len())
	}
	got := q.Select(func(e *Envelope) bool { return e.ID == "A" })
	if len(got) != 1 || got[0].ID != "A" {
		t.Fatalf("Select: %+v", got)
	}
	got[0].Sender = "changed"
	if e, _ := q.Get("A"); e.Sender != "s@x" {
		t.Fatal("Select returned the live envelope, not a copy")
	}
}

// What many envelopes repeat is held once: deferral reasons and senders
// folded from separate events, and everything a snapshot decodes.
func TestQueueSharesRepeatedStrings(t *testing.T) {
	q := NewQueue()
	var seq uint64
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("E%d", i)
		// Each event's strings are copies of their own, as decoded ones are.
		sender, reason := strings.Clone("s@x.test"), strings.Clone("connect: connection refused")
		q.Apply([]events.Event{
			ev(seq+1, id, events.Received{Sender: sender, Recipients: []string{"a@one"}, BodyKey: id, Size: 1}),
			ev(seq+2, id, events.PoliciesApplied{Recipients: []string{"a@one"}}),
			ev(seq+3, id, events.Split{Mode: "domain", Children: []events.Child{{ID: id + ".1", Recipients: []string{"a@one"}}}}),
			ev(seq+4, id+".1", events.Deferred{Recipients: []string{"a@one"}, NextAttempt: time.Unix(5000, 0), Reason: reason}),
		})
		seq += 4
	}
	same := func(q *Queue, what string, f func(*Envelope) string) {
		t.Helper()
		a := q.live["E0.1"].envelope()
		for _, id := range []string{"E1.1", "E2.1"} {
			b := q.live[id].envelope()
			if f(a) == "" || unsafe.StringData(f(a)) != unsafe.StringData(f(b)) {
				t.Errorf("%s: E0.1 and %s hold separate copies of %q", what, id, f(a))
			}
		}
	}
	same(q, "last error", func(e *Envelope) string { return e.LastError })
	same(q, "sender", func(e *Envelope) string { return e.Sender })
	r, _ := reloaded(t, q)
	same(r, "loaded last error", func(e *Envelope) string { return e.LastError })
	same(r, "loaded sender", func(e *Envelope) string { return e.Sender })
	same(r, "loaded state", func(e *Envelope) string { return string(e.State) })
	e := r.live["E0.1"].envelope()
	if e.BodyKey != "E0" || unsafe.StringData(e.BodyKey) != unsafe.StringData(e.Parent) {
		t.Errorf("loaded body key %q not shared with the parent ID %q", e.BodyKey, e.Parent)
	}
	if len(e.Pending) != 1 || unsafe.StringData(e.Pending[0]) != unsafe.StringData(e.Recipients[0]) {
		t.Errorf("loaded pending %q not shared with recipients %q", e.Pending, e.Recipients)
	}
	if n := r.bodyRefs["E0"]; n != 1 {
		t.Errorf("loaded body refs of E0: %d, want 1", n)
	}
}

// The shared-string table stays within its bound: past it, it starts
// again, and a string kept before is still returned as it was.
func TestQueueSharedTableIsBounded(t *testing.T) {
	q := NewQueue()
	first := q.share(strings.Clone("reason 0"))
	for i := 1; i <= 2*maxShared; i++ {
		q.share(fmt.Sprintf("reason %d", i))
		if len(q.shared) > maxShared {
			t.Fatalf("%d strings shared, bound %d", len(q.shared), maxShared)
		}
	}
	again := strings.Clone("reason 0")
	if got := q.share(again); got != first || unsafe.StringData(got) != unsafe.StringData(again) {
		t.Fatalf("after the table started again: %q", got)
	}
	if got := q.share(strings.Clone("reason 0")); unsafe.StringData(got) != unsafe.StringData(again) {
		t.Fatal("a string shared after the restart is not shared")
	}
}

// Range visits every live envelope once, in chunks, and its function may
// call the queue (no lock is held while it runs).
func TestRangeVisitsEachLiveEnvelopeOnce(t *testing.T) {
	q := NewQueue()
	const n = listChunk + 10
	var evs []events.Event
	for i := range n {
		id := fmt.Sprintf("E%d", i)
		evs = append(evs, ev(uint64(i+1), id, events.Received{Sender: "s@x", Recipients: []string{"a@one"}, BodyKey: id}))
	}
	evs = append(evs, ev(n+1, "E0", events.Deleted{}))
	q.Apply(evs)
	seen := map[string]int{}
	q.Range(func(e *Envelope) {
		seen[e.ID]++
		if _, ok := q.Get(e.ID); !ok {
			t.Errorf("%s listed but not live", e.ID)
		}
	})
	if len(seen) != n-1 || seen["E0"] != 0 {
		t.Fatalf("Range saw %d envelopes (E0 %d times), want %d without E0", len(seen), seen["E0"], n-1)
	}
	for id, k := range seen {
		if k != 1 {
			t.Fatalf("%s seen %d times", id, k)
		}
	}
}
