package projections

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// snapQueue is a queue with every kind of live envelope a snapshot holds:
// a root still holding its Received details, a child before its first
// attempt (header block and details kept), a deferred and warned child,
// a suspended destination.
func snapQueue() *Queue {
	q := NewQueue()
	q.Apply([]events.Event{
		ev(1, "R", events.Received{Sender: "s@x", Recipients: []string{"r@one"}, BodyKey: "R", BodySHA256: "ab", Size: 10,
			Listener: "submission/127.0.0.1:587", ClientAddr: "127.0.0.1:1", AuthUser: "alice"}),
		ev(2, "A", events.Received{Sender: "s@x", Recipients: []string{"a@one", "b@two"}, BodyKey: "A", Size: 20}),
		ev(3, "A", events.PoliciesApplied{Prepend: "Received: x\r\n", Recipients: []string{"a@one", "b@two"}}),
		ev(4, "A", events.Split{Mode: "domain", Children: []events.Child{{ID: "A.1", Recipients: []string{"a@one"}}, {ID: "A.2", Recipients: []string{"b@two"}}}}),
		ev(5, "A.1", events.AttemptStarted{Attempt: 1, Recipients: []string{"a@one"}}),
		ev(6, "A.1", events.Deferred{Recipients: []string{"a@one"}, NextAttempt: time.Unix(9000, 0).UTC(), Reason: "451 4.4.1 later", DelayDSN: "D"}),
		ev(7, "", events.Suspended{Domain: "two", Until: time.Unix(9500, 0).UTC()}),
	})
	return q
}

func sortedEnvelopes(q *Queue) []*Envelope {
	s := q.Snapshot()
	sort.Slice(s.Envelopes, func(i, j int) bool { return s.Envelopes[i].ID < s.Envelopes[j].ID })
	return s.Envelopes
}

// Every field of every live envelope, the counts, the body references and
// the suspensions come back as they were.
func TestSnapshotBinaryFormRoundTrip(t *testing.T) {
	q := snapQueue()
	data, seq, err := q.MarshalSnapshot()
	if err != nil || seq != 7 || !bytes.HasPrefix(data, []byte(snapMagic)) {
		t.Fatalf("MarshalSnapshot: %v, seq %d, %q", err, seq, data[:min(len(data), 8)])
	}
	r := NewQueue()
	if s, err := r.LoadSnapshot(data); err != nil || s != 7 {
		t.Fatalf("LoadSnapshot: %v %d", err, s)
	}
	want, got := sortedEnvelopes(q), sortedEnvelopes(r)
	if len(want) != 3 || want[1].Prepend == "" || want[1].Received == nil || !want[0].Warned || want[2].Received == nil {
		t.Fatalf("test queue is not what the test needs: %+v", want)
	}
	if !reflect.DeepEqual(want, got) {
		for i := range want {
			t.Errorf("want %+v\n got %+v", *want[i], *got[i])
		}
	}
	if !reflect.DeepEqual(q.counts, r.counts) || !reflect.DeepEqual(q.bodyRefs, r.bodyRefs) || !reflect.DeepEqual(q.suspended, r.suspended) || r.seq != 7 {
		t.Fatalf("counts %v / %v, refs %v / %v, suspended %v / %v", q.counts, r.counts, q.bodyRefs, r.bodyRefs, q.suspended, r.suspended)
	}
}

// A snapshot saved by an earlier version (gob) still loads.
func TestSnapshotGobFormStillLoads(t *testing.T) {
	q := snapQueue()
	b := gobSnapshot(t, q)
	r := NewQueue()
	if s, err := r.LoadSnapshot(b); err != nil || s != 7 {
		t.Fatalf("LoadSnapshot(gob): %v %d", err, s)
	}
	if want, got := sortedEnvelopes(q), sortedEnvelopes(r); !reflect.DeepEqual(want, got) {
		t.Fatalf("gob snapshot loaded differently:\n%+v\n%+v", want, got)
	}
}

// A snapshot cut anywhere is an error, and the queue keeps its state.
func TestSnapshotTruncatedIsAnError(t *testing.T) {
	data, _, err := snapQueue().MarshalSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := NewQueue()
	r.Apply([]events.Event{ev(1, "K", events.Received{Sender: "s@x", Recipients: []string{"k@one"}, BodyKey: "K"})})
	for n := len(snapMagic); n < len(data); n++ {
		if _, err := r.LoadSnapshot(data[:n]); err == nil {
			t.Fatalf("a snapshot cut at %d of %d bytes loaded", n, len(data))
		}
	}
	if _, err := r.LoadSnapshot(append(append([]byte(nil), data...), 0)); err == nil {
		t.Fatal("a snapshot with a byte after its end loaded")
	}
	if _, ok := r.Get("K"); !ok || r.Len() != 1 {
		t.Fatalf("a failed load changed the queue: %d live", r.Len())
	}
}

// gobSnapshot is q's snapshot in the gob form of earlier versions.
func gobSnapshot(tb testing.TB, q *Queue) []byte {
	st := queueState{Seq: q.seq, Counts: q.counts, BodyRefs: q.bodyRefs, Suspended: q.suspended}
	for _, x := range q.live {
		st.Live = append(st.Live, x.envelope().Clone())
	}
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(&st); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// Decoding streams through a window: whatever its size (smaller than an
// item, so that it grows; a few bytes, so that it refills at every item)
// and however the reader splits its reads, the envelopes come back the
// same; a stream that fails at its end (a checksum) fails the decoding.
func TestSnapshotDecodesThroughAWindow(t *testing.T) {
	q := snapQueue()
	data, _, err := q.MarshalSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	body := data[len(snapMagic):]
	want := sortedEnvelopes(q)
	for _, window := range []int{1, 3, 7, 64, 1 << 20} {
		for name, src := range map[string]func() io.Reader{
			"whole reads":   func() io.Reader { return bytes.NewReader(body) },
			"one byte each": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(body)) },
		} {
			tmp := &Queue{shared: map[string]string{}}
			var st queueState
			if err := tmp.decodeSnapshot(src(), int64(len(body)), &st, window); err != nil {
				t.Fatalf("window %d, %s: %v", window, name, err)
			}
			r := NewQueue()
			r.live = st.live
			r.counts = st.Counts
			if got := sortedEnvelopes(r); !reflect.DeepEqual(got, want) {
				t.Fatalf("window %d, %s: envelopes differ", window, name)
			}
		}
	}
	failing := io.MultiReader(bytes.NewReader(data), iotest.ErrReader(errors.New("fails its checksum")))
	if _, err := NewQueue().LoadSnapshotFrom(failing, int64(len(data))); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("a stream failing at its end loaded: %v", err)
	}
}

// reloaded is q saved and loaded into a new queue, and the snapshot.
func reloaded(t *testing.T, q *Queue) (*Queue, []byte) {
	t.Helper()
	data, _, err := q.MarshalSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := NewQueue()
	if _, err := r.LoadSnapshot(data); err != nil {
		t.Fatal(err)
	}
	return r, data
}

// A snapshot of more envelopes than go to the maps at a time (snapChunk)
// loads whole: every envelope, and the body references counted from them.
func TestSnapshotLoadsInChunks(t *testing.T) {
	const n = 3*snapChunk + 11
	q := deferredQueue(n)
	r, data := reloaded(t, q)
	if q.Len() != n || r.Len() != n || !reflect.DeepEqual(sortedEnvelopes(r), sortedEnvelopes(q)) {
		t.Fatalf("%d envelopes loaded of %d, or they differ", r.Len(), q.Len())
	}
	if !reflect.DeepEqual(r.bodyRefs, q.bodyRefs) {
		t.Fatalf("body references: %d keys loaded, %d live", len(r.bodyRefs), len(q.bodyRefs))
	}
	// Cut short in the middle of the envelopes: refused, r unchanged.
	if _, err := r.LoadSnapshot(data[:len(data)/2]); err == nil {
		t.Fatal("a truncated snapshot loaded")
	}
	if r.Len() != n {
		t.Fatalf("a refused snapshot changed the queue: %d envelopes", r.Len())
	}
}

// A snapshot encodes outside the lock while events are applied: each one
// is exactly the fold of the events up to the sequence number it names.
func TestSnapshotWhileApplying(t *testing.T) {
	const n = 3000
	var evs []events.Event
	now := time.Now()
	for k := 0; k < n; k++ {
		id := fmt.Sprintf("01A20FC4916BCB%06X", k)
		evs = append(evs,
			events.Event{Seq: uint64(3*k + 1), Time: now, Envelope: id, Payload: events.Received{Sender: "a@x.test", Recipients: []string{"b@y.test", "c@y.test"}, BodyKey: id, Size: 10}},
			events.Event{Seq: uint64(3*k + 2), Time: now, Envelope: id, Payload: events.Deferred{Recipients: []string{"b@y.test"}, NextAttempt: now.Add(time.Hour), Reason: "try later"}},
			events.Event{Seq: uint64(3*k + 3), Time: now, Envelope: id, Payload: events.Deferred{Recipients: []string{"c@y.test"}, NextAttempt: now.Add(2 * time.Hour), Reason: fmt.Sprint("again ", k)}},
		)
	}
	q := NewQueue()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < len(evs); i += 7 {
			q.Apply(evs[i:min(i+7, len(evs))])
		}
	}()
	var snaps [][]byte
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		data, _, err := q.MarshalSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, data)
	}
	if len(snaps) < 2 {
		t.Fatalf("only %d snapshots taken while applying", len(snaps))
	}
	for _, data := range snaps {
		r := NewQueue()
		seq, err := r.LoadSnapshot(data)
		if err != nil {
			t.Fatal(err)
		}
		ref := NewQueue()
		ref.Apply(evs[:seq])
		if !reflect.DeepEqual(sortedEnvelopes(r), sortedEnvelopes(ref)) || !reflect.DeepEqual(r.bodyRefs, ref.bodyRefs) {
			t.Fatalf("snapshot at %d differs from the fold of the events up to it", seq)
		}
	}
}
