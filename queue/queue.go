// Package queue owns the queue's lifecycle around the live projection:
// rebuilding it at start-up (snapshot plus the journal's tail), saving
// snapshots, the offline fold, operator actions (retry, delete) and the
// comparison that `mta replay --verify` relies on. cmd/mta only wires and
// prints; the admin API is an adapter over it.
//
// The contract: the journal is the truth. A snapshot is an optimisation
// whose covered records are still verified (checksums and chain) at
// start-up: before an offline command folds, and while `mta serve` already
// accepts mail (a corrupt record then stops the server); an operator
// action is an event appended to the journal, which
// the live projection then folds like any other.
package queue

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// SnapshotName is the queue projection's snapshot in the journal.
const SnapshotName = "queue"

// Rebuild loads the queue projection's latest snapshot, if any, and replays
// the journal after it (all of it without one), with progress on long
// journals, then checks the records the snapshot covers. A corrupt record
// stops it unless ignoreCorrupt.
func Rebuild(j *journal.Journal, q *projections.Queue, log *zap.Logger, ignoreCorrupt bool) error {
	_, check, err := RebuildUnchecked(j, q, log, ignoreCorrupt)
	if err != nil {
		return err
	}
	return refuseStart(check(nil))
}

// refuseStart is err as start-up reports it: a corrupt record with what to
// run next.
func refuseStart(err error) error {
	var ce *journal.CorruptError
	if errors.As(err, &ce) {
		return fmt.Errorf("%v; refusing to start (run `mta replay --verify` to list all, or `mta serve --ignore-corrupt`)", err)
	}
	return err
}

// RebuildUnchecked is Rebuild without the check of the records the
// snapshot covers: it returns that check instead, for the server to run
// once it accepts mail, and the snapshot's sequence number (0: none).
// The records replayed (the tail after the snapshot) are checked as they
// are read: a corrupt one stops RebuildUnchecked itself. The check's first problem is a *journal.CorruptError (with
// ignoreCorrupt, each is logged and the check goes on); it gives up with
// journal.ErrVerifyStopped once stop is closed.
//
// The queue does not depend on the covered records, the snapshot holds
// their fold; they matter to the audit trail, which the check still
// guards before anything can be archived or repaired over them.
func RebuildUnchecked(j *journal.Journal, q *projections.Queue, log *zap.Logger, ignoreCorrupt bool) (snapSeq uint64, check func(stop <-chan struct{}) error, err error) {
	total := j.LastSeq()
	start := time.Now()
	// Without a snapshot, the hot journal: what was archived is over.
	from := j.FirstSeq()
	report := func(ce *journal.CorruptError) error {
		log.Error("corrupt journal record ignored", zap.Uint64("seq", ce.Seq), zap.String("reason", ce.Reason))
		return nil
	}
	if !ignoreCorrupt {
		report = nil
	}
	check = func(<-chan struct{}) error { return nil }
	if _, sr, err := j.OpenSnapshot(SnapshotName); err == nil {
		// What decoding builds stays live, so collecting while the heap
		// grows from nothing to its size finds nothing to free (a soft
		// memory limit, [limits] memory_limit, still applies). The
		// snapshot streams in: it is not held whole beside the queue.
		gc := debug.SetGCPercent(-1)
		seq, lerr := q.LoadSnapshotFrom(sr, sr.Size())
		debug.SetGCPercent(gc)
		sr.Close()
		if lerr == nil {
			// The snapshot stands for the records it covers: check them
			// (checksums and chain, without decoding) so that a corrupt
			// record is still found and named.
			check = func(stop <-chan struct{}) error {
				began := time.Now()
				if err := j.VerifyUntil(seq, report, stop); err != nil {
					return err
				}
				log.Info("journal checked", zap.Uint64("to", seq), zap.Duration("took", time.Since(began)))
				return nil
			}
			from, snapSeq = seq+1, seq
			log.Info("queue snapshot loaded", zap.Uint64("seq", seq), zap.Int("live_envelopes", q.Len()), zap.Duration("took", time.Since(start)))
		} else {
			// LoadSnapshot left q untouched.
			log.Warn("queue snapshot unusable; replaying the whole journal", zap.Error(lerr))
		}
	} else if !errors.Is(err, journal.ErrNoSnapshot) {
		log.Warn("queue snapshot unusable; replaying the whole journal", zap.Error(err))
	}
	last := start
	err = replayTail(j, from, ignoreCorrupt, report, func(batch []events.Event) {
		q.Apply(batch)
		if time.Since(last) > 2*time.Second {
			last = time.Now()
			log.Info("replaying journal", zap.Uint64("seq", batch[len(batch)-1].Seq), zap.Uint64("of", total))
		}
	})
	if err != nil {
		return 0, nil, refuseStart(err)
	}
	log.Info("journal replayed", zap.Uint64("from", from), zap.Uint64("to", total), zap.Int("live_envelopes", q.Len()), zap.Duration("took", time.Since(start)))
	return snapSeq, check, nil
}

// replayTail reads the journal from seq from and hands its events to apply
// in batches, in order. Reading and decoding run on a goroutine of their
// own, a few batches ahead of apply (which folds them into the queue):
// start-up replays the tail on two cores. apply must not keep the batch.
func replayTail(j *journal.Journal, from uint64, ignoreCorrupt bool, report func(*journal.CorruptError) error, apply func([]events.Event)) error {
	const batchSize, ahead = 1024, 4
	full, free := make(chan []events.Event, ahead), make(chan []events.Event, ahead+1)
	for range ahead + 1 {
		free <- make([]events.Event, 0, batchSize)
	}
	var scanErr error
	go func() {
		defer close(full)
		batch := <-free
		fn := func(e events.Event) error {
			batch = append(batch, e)
			if len(batch) == batchSize {
				full <- batch
				batch = <-free
			}
			return nil
		}
		if ignoreCorrupt {
			scanErr = j.ScanTolerant(from, fn, report)
		} else {
			scanErr = j.Scan(from, fn)
		}
		if scanErr == nil && len(batch) > 0 {
			full <- batch
		}
	}()
	for batch := range full {
		apply(batch)
		free <- batch[:0]
	}
	return scanErr
}

// SaveSnapshot stores the queue projection (at shutdown and periodically)
// so that the next start replays only the journal's tail.
func SaveSnapshot(j *journal.Journal, q *projections.Queue, log *zap.Logger) uint64 {
	start := time.Now()
	seq, size, err := j.WriteSnapshot(SnapshotName, q.WriteSnapshot)
	if err != nil {
		log.Warn("queue snapshot not saved", zap.Error(err))
		return 0
	}
	log.Info("queue snapshot saved", zap.Uint64("seq", seq), zap.Int64("bytes", size), zap.Duration("took", time.Since(start)))
	return seq
}

// Fold rebuilds a fresh queue projection as start-up does (offline
// commands, repair): the saved snapshot, when there is one, then the hot
// journal after it. What was archived is over, and is not read; the
// snapshot carries what outlives it (suspended destinations).
func Fold(j *journal.Journal) (*projections.Queue, error) {
	q := projections.NewQueue()
	return q, Rebuild(j, q, zap.NewNop(), false)
}

// Snapshots saves queue snapshots while the server runs: every Interval
// when at least Every events have come since the last one, and as soon as
// Max events have (checked every Check, default 5 s), so that a kill -9
// under a heavy load replays at most about Max events at start-up. The
// first check counts from From, the snapshot start-up loaded: a start-up
// that replayed more than Max events saves one at once, and one that
// loaded a recent snapshot does not encode the whole queue again.
type Snapshots struct {
	Journal    *journal.Journal
	Queue      *projections.Queue
	Log        *zap.Logger
	Interval   time.Duration
	Every, Max uint64
	Check      time.Duration
	From       uint64 // the sequence number of the snapshot loaded at start (0: none)
	// Saved, if set, runs after each snapshot saved (serve returns the
	// encoding's memory to the operating system).
	Saved func()
}

// Run saves snapshots until done is closed.
func (s Snapshots) Run(done <-chan struct{}) {
	check := s.Check
	if check <= 0 {
		check = min(s.Interval, 5*time.Second)
	}
	t := time.NewTicker(check)
	defer t.Stop()
	lastSeq := s.From
	lastTime := time.Now()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			since := s.Journal.LastSeq() - min(lastSeq, s.Journal.LastSeq())
			if (since >= s.Every && time.Since(lastTime) >= s.Interval) || since >= s.Max {
				if n := SaveSnapshot(s.Journal, s.Queue, s.Log); n != 0 {
					lastSeq, lastTime = n, time.Now()
					if s.Saved != nil {
						s.Saved()
					}
				}
			}
		}
	}
}
