package queue

import (
	"fmt"
	"os"
	"path/filepath"
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
