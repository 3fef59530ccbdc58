package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
	"go.uber.org/zap"
)

// A snapshot is saved as soon as Max events have come, long before the
// interval; fewer than Every events never make one.
func TestSnapshotsByEventCount(t *testing.T) {
	j, q, appendN, snapSeq := snapshotJournal(t)
	done := make(chan struct{})
	defer close(done)
	go Snapshots{Journal: j, Queue: q, Log: zap.NewNop(), Interval: time.Hour, Every: 5, Max: 40, Check: 10 * time.Millisecond}.Run(done)

	appendN(30)                        // over Every, under Max, within the interval: none
	time.Sleep(100 * time.Millisecond) // ten checks
	if s := snapSeq(); s != 0 {
		t.Fatalf("snapshot at %d after 30 events (max 40, interval 1h)", s)
	}
	appendN(15)
	deadline := time.Now().Add(5 * time.Second)
	for snapSeq() < 40 {
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot within 5 s of %d events (max 40); last at %d", j.LastSeq(), snapSeq())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Counting starts at the snapshot start-up loaded: a start after a recent
// snapshot does not encode the whole queue again at once; a start that
// replayed more than Max events does.
func TestSnapshotsCountFromTheLoadedOne(t *testing.T) {
	j, q, appendN, snapSeq := snapshotJournal(t)
	appendN(50)
	run := func(from uint64) chan struct{} {
		done := make(chan struct{})
		go Snapshots{Journal: j, Queue: q, Log: zap.NewNop(), Interval: time.Hour, Every: 5, Max: 40, Check: 10 * time.Millisecond, From: from}.Run(done)
		return done
	}
	done := run(45)                    // loaded a snapshot at 45: 5 events since, under Max
	time.Sleep(100 * time.Millisecond) // ten checks
	close(done)
	if s := snapSeq(); s != 0 {
		t.Fatalf("snapshot at %d right after loading one at 45", s)
	}
	done = run(5) // replayed 45 events, over Max: one at once
	defer close(done)
	deadline := time.Now().Add(5 * time.Second)
	for snapSeq() < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot within 5 s after replaying 45 events (max 40)")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// snapshotJournal opens a journal on disk with a queue projection
// subscribed; appendN journals n Received events, snapSeq returns the
// saved snapshot's sequence number (0: none).
func snapshotJournal(t *testing.T) (j *journal.Journal, q *projections.Queue, appendN func(int), snapSeq func() uint64) {
	t.Helper()
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	q = projections.NewQueue()
	j.Subscribe(q.Apply)
	appendN = func(n int) {
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("E%d-%d", j.LastSeq(), i)
			if _, err := j.Append(journal.Write{Events: []events.Event{{Envelope: id,
				Payload: events.Received{Sender: "a@x.test", Recipients: []string{"b@y.test"}, BodyKey: id}}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	snapSeq = func() uint64 {
		seq, _, err := j.Snapshot(SnapshotName)
		if err != nil {
			return 0
		}
		return seq
	}
	return j, q, appendN, snapSeq
}

// Start-up loads the snapshot and replays what follows it; a snapshot
// damaged in its middle is read to its end, refused there on its
// checksum, and the whole journal replayed instead: the queue is the same.
func TestRebuildRefusesADamagedSnapshot(t *testing.T) {
	j, q, appendN, _ := snapshotJournal(t)
	appendN(20)
	if seq := SaveSnapshot(j, q, zap.NewNop()); seq != 20 {
		t.Fatalf("snapshot at %d, want 20", seq)
	}
	appendN(5)
	rebuild := func() (*projections.Queue, uint64) {
		r := projections.NewQueue()
		snapSeq, _, err := RebuildUnchecked(j, r, zap.NewNop(), false)
		if err != nil {
			t.Fatal(err)
		}
		return r, snapSeq
	}
	if r, snapSeq := rebuild(); snapSeq != 20 || r.Len() != 25 {
		t.Fatalf("from the snapshot: loaded at %d, %d envelopes; want 20, 25", snapSeq, r.Len())
	}
	path := filepath.Join(j.Dir(), "SNAPSHOT-queue")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r, snapSeq := rebuild()
	if snapSeq != 0 || r.Len() != 25 || r.Count(projections.StateReceived) != 25 {
		t.Fatalf("damaged snapshot: loaded at %d, %d envelopes (%d received); want a whole replay of 25", snapSeq, r.Len(), r.Count(projections.StateReceived))
	}
}

// The tail after the snapshot is read on one goroutine and folded on
// another, a few batches apart: a tail of many batches folds into the same
// queue as the live one, and a corrupt record in it stops the rebuild with
// its sequence number.
func TestRebuildReplaysALongTail(t *testing.T) {
	j, q, appendN, _ := snapshotJournal(t)
	appendN(10)
	SaveSnapshot(j, q, zap.NewNop())
	const tail = 5*1024 + 7
	var w journal.Write
	for i := 0; i < tail; i++ {
		id := fmt.Sprintf("T%05d", i)
		w.Events = append(w.Events, events.Event{Envelope: id, Payload: events.Received{Sender: "a@x.test", Recipients: []string{"b@y.test"}, BodyKey: id}})
		if i%3 == 0 {
			w.Events = append(w.Events, events.Event{Envelope: id, Payload: events.Deleted{By: "test"}})
		}
	}
	if _, err := j.Append(w); err != nil {
		t.Fatal(err)
	}
	r := projections.NewQueue()
	snapSeq, _, err := RebuildUnchecked(j, r, zap.NewNop(), false)
	if err != nil {
		t.Fatal(err)
	}
	if snapSeq != 10 {
		t.Fatalf("snapshot at %d, want 10", snapSeq)
	}
	if d := Compare(r.Snapshot(), q.Snapshot()); len(d) > 0 {
		t.Fatalf("rebuilt queue differs from the live one: %v", d[:min(len(d), 5)])
	}
	if r.Len() != q.Len() || r.Count(projections.StateReceived) != 10+tail-(tail+2)/3 {
		t.Fatalf("%d envelopes rebuilt (%d received), %d live", r.Len(), r.Count(projections.StateReceived), q.Len())
	}

	// The tail's frame, damaged in its middle: every record in it is lost
	// to its checksum, and the first is named.
	segs, _ := filepath.Glob(filepath.Join(j.Dir(), "*", "*.seg"))
	more, _ := filepath.Glob(filepath.Join(j.Dir(), "*.seg"))
	segs = append(segs, more...)
	var largest string
	var size int64
	for _, p := range segs {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			largest, size = p, fi.Size()
		}
	}
	if largest == "" {
		t.Fatalf("no log segment in %s", j.Dir())
	}
	b, err := os.ReadFile(largest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-len(b)/4] ^= 0x20
	if err := os.WriteFile(largest, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = RebuildUnchecked(j, projections.NewQueue(), zap.NewNop(), false)
	if err == nil || !strings.Contains(err.Error(), "corrupt record at sequence 11:") {
		t.Fatalf("damaged tail: %v, want record 11 named as corrupt", err)
	}
}
