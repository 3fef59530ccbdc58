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
	defer j.bodies.closeShared()
	busy := false // the last group had company: more are likely on the way
	var window *time.Timer
	for req := range j.reqs {
		if j.special(req) {
			continue
		}
		group := []*appendReq{req}
		var wait <-chan time.Time
		if busy && j.opts.CommitWindow > 0 {
			if window == nil {
				window = time.NewTimer(j.opts.CommitWindow)
			} else {
				window.Reset(j.opts.CommitWindow)
			}
			wait = window.C
		}
	drain:
		for len(group) < j.opts.MaxBatch {
			var r *appendReq
			var ok bool
			select {
			case r, ok = <-j.reqs:
			default:
				if wait == nil {
					break drain
				}
				select { // in the window: wait for more, or for its end
				case r, ok = <-j.reqs:
				case <-wait:
					wait = nil
					break drain
				}
			}
			if !ok {
				break drain
			}
			if r.put != nil || r.run != nil {
				j.commit(group)
				group = group[:0]
				j.special(r)
				continue
			}
			group = append(group, r)
		}
		if wait != nil && !window.Stop() {
			<-window.C
		}
		busy = len(group) > 1
		if len(group) > 0 {
			j.commit(group)
		}
	}
}

// special answers a request that is not a Write; false for a Write.
func (j *Journal) special(req *appendReq) bool {
	switch {
	case req.put != nil:
		req.done <- appendRes{err: j.put(req.put)}
	case req.run != nil:
		req.done <- appendRes{err: j.run(req.run)}
	default:
		return false
	}
	return true
}

// run runs fn, turning a panic into an error.
func (j *Journal) run(fn func() error) (err error) {
	defer recoverRead(&err)
	return fn()
}

// put writes one key outside the event log (a snapshot), synced.
func (j *Journal) put(p *putReq) error {
	if err := j.Err(); err != nil {
		return err
	}
	b := j.db.NewBatch()
	defer b.Close()
	set := b.Set
	if p.del {
		set = func(k, _ []byte, o *pebble.WriteOptions) error { return b.Delete(k, o) }
	}
	if err := set(p.key, p.value, nil); err != nil {
		return err
	}
	if err := j.persist(b); err != nil {
		j.fail(fmt.Errorf("commit: %w", err))
		return j.Err()
	}
	return nil
}

// persist commits b and makes it durable. The index has no WAL (the log
// is its WAL): what is not re-created from the log (a snapshot, the
// archive mark) is made durable by flushing the memtable to a table.
func (j *Journal) persist(b *pebble.Batch) error {
	if err := j.commitBatch(b, pebble.NoSync); err != nil {
		return err
	}
	return j.flush()
}

// flush writes the memtable to a table, turning a panic into an error.
func (j *Journal) flush() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("flush: %v", r)
		}
	}()
	return j.db.Flush()
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
	// One frame in the log for the whole group: its small bodies, then
	// what the commit says.
	seg, fstart, err := j.bodies.beginFrame()
	if err != nil {
		j.fail(fmt.Errorf("write the log: %w", err))
		j.failAll(group, j.Err())
		return
	}
	fr := &frame{seg: seg, start: fstart}
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
		refs, err := j.placeBodies(req.w, fr)
		if err != nil {
			// A write to the log failed (a full disk): as for any
			// write, fail-stop, for this group and every later one.
			j.fail(fmt.Errorf("write the log: %w", err))
			j.failAll(group, j.Err())
			return
		}
		fillBodyRefs(evs, frames, refs, &encErr)
		if encErr != nil {
			req.done <- appendRes{err: fmt.Errorf("journal: %w", encErr)}
			continue
		}
		for k, ref := range refs {
			fr.refs = append(fr.refs, frameRef{key: k, ref: ref})
		}
		fr.drops = append(fr.drops, req.w.DropBodies...)
		for i := range evs {
			seq++
			var rec []byte
			rec, sum = encodeRecord(seq, sum, frames[i])
			evs[i].Seq = seq
			fr.records = append(fr.records, rec)
			fr.envs = append(fr.envs, evs[i].Envelope)
		}
		ok = append(ok, req)
		results[req] = evs
		all = append(all, evs...)
	}
	content, recOff := fr.content(j.cbuf)
	zipped := zip(j.zbuf, content)
	if cap(zipped) <= 1<<20 {
		j.zbuf = zipped[:0] // kept for the next commit; a rare huge one is not
	}
	if cap(content) <= 1<<20 {
		j.cbuf = content[:0] // likewise: only zipped is written
	}
	coff, err := j.bodies.endFrame(fr.start, zipped, true)
	if err != nil {
		j.fail(fmt.Errorf("write the log: %w", err))
		j.failAll(ok, j.Err())
		return
	}
	if len(ok) == 0 {
		return // the frame holds nothing (and is durable with the next)
	}
	if !j.opts.NoSync {
		// The one fsync of the commit: the frame and its bodies.
		if err := j.bodies.syncShared(); err != nil {
			// After a failed fsync the file's state is unknown: fail-stop.
			j.fail(err)
			j.failAll(ok, j.Err())
			return
		}
	}
	pf := &parsedFrame{refs: fr.refs, drops: fr.drops, records: fr.records, start: fr.start, zipped: true, end: coff + int64(len(zipped))}
	for _, o := range recOff {
		pf.recOff = append(pf.recOff, int64(o))
	}
	dropped, err := j.stageFrame(batch, seg, pf, all)
	if err != nil {
		j.fail(fmt.Errorf("stage the index: %w", err))
		j.failAll(ok, j.Err())
		return
	}
	// The frame is durable: the index has no WAL and needs no fsync (what
	// a crash takes from its memtable is re-indexed from the log at Open).
	if err := j.commitBatch(batch, pebble.NoSync); err != nil {
		// Pebble may have applied the batch to its memtable and fails on
		// the next write: fail-stop.
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
	j.reclaimDropped(dropped)
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

// placeBodies writes w's small bodies into the frame being written (the
// shared segment) and returns where each of its bodies is, by key.
func (j *Journal) placeBodies(w Write, fr *frame) (map[string]BodyRef, error) {
	var refs map[string]BodyRef
	for _, body := range w.Bodies {
		var ref BodyRef
		if body.File != nil {
			ref = BodyRef{Segment: body.File.seg, Length: body.File.n}
		} else {
			var err error
			if ref, err = j.bodies.appendShared(body.Data); err != nil {
				return nil, err
			}
		}
		if refs == nil {
			refs = map[string]BodyRef{}
		}
		refs[body.Key] = ref
	}
	return refs, nil
}

// fillBodyRefs records in each Received event whose body was stored in
// this Write where it went, re-encoding its frame.
func fillBodyRefs(evs []events.Event, frames [][]byte, refs map[string]BodyRef, encErr *error) {
	if len(refs) == 0 {
		return
	}
	for i, e := range evs {
		rcv, ok := e.Payload.(events.Received)
		if !ok {
			continue
		}
		ref, ok := refs[rcv.BodyKey]
		if !ok {
			continue
		}
		rcv.BodySegment, rcv.BodyOffset = ref.Segment, ref.Offset
		evs[i].Payload = rcv
		b, err := events.Marshal(evs[i])
		if err != nil {
			*encErr = err
			return
		}
		frames[i] = b
	}
}

// reclaimDropped deletes the segments (other than the current shared one)
// that the bodies just dropped were the last users of, and frees the space
// of those in segments that stay. Failing to is only logged:
// ReclaimSegments finds them later.
func (j *Journal) reclaimDropped(refs []BodyRef) {
	var stay []BodyRef
	done := map[uint64]bool{}
	for _, r := range refs {
		if done[r.Segment] {
			continue
		}
		done[r.Segment] = true
		n, err := j.removeIfUnused(r.Segment)
		if err != nil && j.opts.Logger != nil {
			j.opts.Logger.Warn("could not delete an unused body segment", zap.String("segment", segmentName(r.Segment)), zap.Error(err))
		}
		if n == 0 {
			for _, o := range refs {
				if o.Segment == r.Segment {
					stay = append(stay, o)
				}
			}
		}
	}
	j.punchHoles(stay)
}
