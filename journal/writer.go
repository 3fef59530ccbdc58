package journal

import (
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
)

// writer is the single goroutine that assigns sequence numbers and commits.
// It takes one request, then every request already waiting (up to
// MaxBatch), and commits them all with one fsync.
func (j *Journal) writer() {
	defer close(j.stopped)
	j.writerID.Store(goid())
	for req := range j.reqs {
		if req.put != nil {
			req.done <- appendRes{err: j.put(req.put)}
			continue
		}
		group := []*appendReq{req}
	drain:
		for len(group) < j.opts.MaxBatch {
			select {
			case r, ok := <-j.reqs:
				if !ok {
					break drain
				}
				if r.put != nil {
					j.commit(group)
					group = group[:0]
					r.done <- appendRes{err: j.put(r.put)}
					continue
				}
				group = append(group, r)
			default:
				break drain
			}
		}
		if len(group) > 0 {
			j.commit(group)
		}
	}
}

// put writes one key outside the event log (a snapshot), synced.
func (j *Journal) put(p *putReq) error {
	if err := j.Err(); err != nil {
		return err
	}
	b := j.db.NewBatch()
	defer b.Close()
	if err := b.Set(p.key, p.value, nil); err != nil {
		return err
	}
	if err := j.commitBatch(b, pebble.Sync); err != nil {
		j.fail(fmt.Errorf("commit: %w", err))
		return j.Err()
	}
	return nil
}

func (j *Journal) commit(group []*appendReq) {
	if err := j.Err(); err != nil {
		j.failAll(group, err)
		return
	}
	start := time.Now()
	now := start.UTC()
	batch := j.db.NewBatch()
	defer batch.Close()
	seq, sum := j.lastSeq, j.lastLink
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
	if err := j.commitBatch(batch, opt); err != nil {
		// Pebble may have applied the batch to its memtable without the
		// WAL being durable, and fails on the next write: fail-stop.
		j.fail(fmt.Errorf("commit: %w", err))
		j.failAll(ok, j.Err())
		return
	}
	j.lastSeq, j.lastLink = seq, sum
	j.setHead(seq, sum)
	j.committedSeq.Store(seq)
	if err := j.writeCommitted(seq); err != nil && j.opts.Logger != nil {
		j.opts.Logger.Warn("could not record the committed sequence number", zap.Error(err))
	}
	j.subMu.Lock()
	subs, onCommit := j.subs, j.onCommit
	j.subMu.Unlock()
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

// commitBatch commits, turning Pebble's fatal commit error (see fatal) or
// a panic inside Pebble into an error.
func (j *Journal) commitBatch(b *pebble.Batch, opt *pebble.WriteOptions) (err error) {
	j.inCommit.Store(true)
	defer func() {
		j.inCommit.Store(false)
		if r := recover(); r != nil {
			if f, ok := r.(fatalInCommit); ok {
				err = errors.New(f.msg)
				return
			}
			err = fmt.Errorf("%v", r)
		}
	}()
	return b.Commit(opt)
}

func (j *Journal) failAll(group []*appendReq, err error) {
	for _, req := range group {
		select {
		case req.done <- appendRes{err: err}:
		default: // already answered (encoding error)
		}
	}
}
