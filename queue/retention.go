package queue

import (
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// Frontier returns the last record that may leave the hot journal: every
// envelope with a record up to it reached a final state before cutoff
// (the scan stops at the first record written at or after cutoff), and it
// is not after limit (the sequence number of the saved queue snapshot,
// from which start-up rebuilds the queue). Records of envelopes that are
// still live hold the frontier back: an envelope's history leaves the hot
// journal whole, and only once it is over.
func Frontier(j *journal.Journal, cutoff time.Time, limit uint64) (uint64, error) {
	from := j.FirstSeq()
	frontier := from - 1
	if limit < from {
		return frontier, nil
	}
	set := map[string]*projections.Envelope{}
	live := map[string]bool{}
	errStop := errors.New("stop")
	err := j.Scan(from, func(e events.Event) error {
		if e.Seq > limit || !e.Time.Before(cutoff) {
			return errStop
		}
		projections.Fold(set, e)
		touched := []string{e.Envelope}
		if sp, ok := e.Payload.(events.Split); ok {
			for _, c := range sp.Children {
				touched = append(touched, c.ID)
			}
		}
		for _, id := range touched {
			if env := set[id]; env != nil && env.State.Live() {
				live[id] = true
			} else {
				// Final: later events of it (an audit line) change
				// nothing, so it need not be kept.
				delete(live, id)
				delete(set, id)
			}
		}
		if len(live) == 0 {
			frontier = e.Seq
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return 0, err
	}
	return frontier, nil
}

// Retention is the sweep of [journal] retention: the history of envelopes
// that reached a final state more than Period ago leaves the hot journal,
// for the archive (Archive) or for good.
type Retention struct {
	Journal *journal.Journal
	Queue   *projections.Queue
	Period  time.Duration
	Archive bool
	// Bodies go to the archive with the events ([queue] keep_bodies).
	Bodies bool
	Log    *zap.Logger
	Now    func() time.Time

	mu sync.Mutex // one sweep at a time
}

// Sweep saves a queue snapshot (start-up rebuilds from it, so nothing
// after it may leave), then moves everything up to the frontier out.
func (r *Retention) Sweep() (journal.ArchiveResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	start := time.Now()
	snap := SaveSnapshot(r.Journal, r.Queue, r.Log)
	cutoff := now().Add(-r.Period)
	to, err := Frontier(r.Journal, cutoff, snap)
	if err != nil {
		return journal.ArchiveResult{}, err
	}
	res, err := r.Journal.ArchiveThrough(to, journal.ArchiveOptions{Keep: r.Archive, Bodies: r.Bodies})
	if err != nil {
		r.Log.Error("retention sweep failed", zap.Error(err))
		return res, err
	}
	if res.To >= res.From {
		r.Log.Info("retention sweep", zap.Uint64("from", res.From), zap.Uint64("to", res.To), zap.Bool("archived", r.Archive),
			zap.String("segment", res.Segment), zap.Int("bodies", res.Bodies), zap.Int64("freed_body_bytes", res.Freed),
			zap.Time("cutoff", cutoff), zap.Duration("took", time.Since(start)))
	}
	return res, nil
}

// Run sweeps every interval until done is closed.
func (r *Retention) Run(interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			r.Sweep()
		}
	}
}
