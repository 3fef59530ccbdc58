package journal

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// writer is the single goroutine that assigns sequence numbers and commits.
// It takes one request, then every request already waiting (up to
// MaxBatch), and commits them all with one fsync.
func (j *Journal) writer() {
	defer close(j.stopped)
	for req := range j.reqs {
		group := []*appendReq{req}
	drain:
		for len(group) < j.opts.MaxBatch {
			select {
			case r, ok := <-j.reqs:
				if !ok {
					break drain
				}
				group = append(group, r)
			default:
				break drain
			}
		}
		j.commit(group)
	}
}

func (j *Journal) commit(group []*appendReq) {
	start := time.Now()
	now := start.UTC()
	batch := j.db.NewBatch()
	defer batch.Close()
	seq, sum := j.lastSeq, j.lastSum
	var ok []*appendReq
	var all []events.Event
	results := make(map[*appendReq][]events.Event, len(group))
	for _, req := range group {
		frames := make([][]byte, len(req.w.Events))
		evs := make([]events.Event, len(req.w.Events))
		var encErr error
		for i, e := range req.w.Events {
			if e.Time.IsZero() {
				e.Time = now
			}
			e.Time = e.Time.UTC()
			if e.Version == 0 {
				e.Version = events.CurrentVersion
			}
			b, err := events.Marshal(e)
			if err != nil {
				encErr = err
				break
			}
			frames[i], evs[i] = b, e
		}
		if encErr != nil {
			req.done <- appendRes{err: fmt.Errorf("journal: %w", encErr)}
			continue
		}
		for _, b := range req.w.Bodies {
			if err := batch.Set(bodyKey(b.Key), b.Data, nil); err != nil {
				encErr = err
				break
			}
		}
		for _, k := range req.w.DropBodies {
			if err := batch.Delete(bodyKey(k), nil); err != nil {
				encErr = err
				break
			}
		}
		if encErr != nil {
			req.done <- appendRes{err: fmt.Errorf("journal: stage body: %w", encErr)}
			continue
		}
		for i := range evs {
			seq++
			var rec []byte
			rec, sum = encodeRecord(seq, sum, frames[i])
			evs[i].Seq = seq
			if err := batch.Set(eventKey(seq), rec, nil); err != nil {
				encErr = err
			}
			if err := batch.Set(indexKey(evs[i].Envelope, seq), nil, nil); err != nil {
				encErr = err
			}
		}
		if encErr != nil {
			// The batch is now unusable as a whole: fail everyone.
			j.failAll(group, fmt.Errorf("journal: stage event: %w", encErr))
			return
		}
		ok = append(ok, req)
		results[req] = evs
		all = append(all, evs...)
	}
	if len(ok) == 0 {
		return
	}
	opt := pebble.Sync
	if j.opts.NoSync {
		opt = pebble.NoSync
	}
	if err := batch.Commit(opt); err != nil {
		err = fmt.Errorf("journal: commit: %w", err)
		for _, req := range ok {
			req.done <- appendRes{err: err}
		}
		return
	}
	j.lastSeq, j.lastSum = seq, sum
	j.committedSeq.Store(seq)
	j.mu.Lock()
	subs, onCommit := j.subs, j.onCommit
	j.mu.Unlock()
	if onCommit == nil {
		onCommit = j.opts.OnCommit
	}
	if onCommit != nil {
		onCommit(time.Since(start), len(all))
	}
	if len(all) > 0 {
		for _, fn := range subs {
			fn(all)
		}
	}
	for _, req := range ok {
		req.done <- appendRes{evs: results[req]}
	}
}

func (j *Journal) failAll(group []*appendReq, err error) {
	for _, req := range group {
		select {
		case req.done <- appendRes{err: err}:
		default: // already answered (encoding error)
		}
	}
}
