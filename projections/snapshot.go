package projections

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"
)

// queueState is a Queue snapshot decoded (and the gob form of earlier
// versions).
type queueState struct {
	Seq       uint64
	Live      []*Envelope
	Counts    map[State]int
	BodyRefs  map[string]int
	Suspended map[string]time.Time
	// live and refs are the queue's maps, built as the snapshot decodes
	// (newMaps, then add for each envelope).
	live map[string]*entry
	refs map[string]int
}

// newMaps makes st's maps for n envelopes.
func (st *queueState) newMaps(n int) {
	st.live, st.refs = make(map[string]*entry, n), make(map[string]int, n)
}

// add puts a decoded envelope in st's maps. The body references are
// counted from the envelopes, keyed by their own copies of the keys: what
// the snapshot lists is the same count (live envelopes per body key), and
// counting is cheaper than looking a million of them up.
func (st *queueState) add(x *entry) {
	st.live[x.id] = x
	if s := x.stateOf(); s.Live() {
		st.refs[x.bodyKey()]++
	}
}

// MarshalSnapshot returns the queue's state and the sequence number it is
// as of (WriteSnapshot, into memory: tests and small queues).
func (q *Queue) MarshalSnapshot() ([]byte, uint64, error) {
	var buf bytes.Buffer
	seq, err := q.WriteSnapshot(&buf)
	if err != nil {
		return nil, 0, err
	}
	return buf.Bytes(), seq, nil
}

// WriteSnapshot writes the queue's state to w in the binary form and
// returns the sequence number it is as of, consistently. The read lock is
// held only to take the envelopes' entries (a million pointers, some
// milliseconds), not while they are encoded (about a second at a
// million): until the encoding ends, the queue replaces the entries it
// changes instead of changing them (see put), so what was taken stays as
// it was while events are applied meanwhile.
func (q *Queue) WriteSnapshot(w io.Writer) (uint64, error) {
	q.mu.RLock()
	q.encoding.Add(1)
	defer q.encoding.Add(-1)
	st := &snapState{seq: q.seq, counts: maps.Clone(q.counts), suspended: maps.Clone(q.suspended),
		live: make([]*entry, 0, len(q.live))}
	for _, x := range q.live {
		st.live = append(st.live, x)
	}
	q.mu.RUnlock()
	if err := encodeSnapshot(w, st); err != nil {
		return 0, err
	}
	return st.seq, nil
}

// LoadSnapshot replaces the queue's state with a snapshot's (the binary
// form, or the gob form of earlier versions); events after the returned
// sequence number must then be applied. On an error q is unchanged.
func (q *Queue) LoadSnapshot(data []byte) (uint64, error) {
	return q.LoadSnapshotFrom(bytes.NewReader(data), int64(len(data)))
}

// LoadSnapshotFrom is LoadSnapshot reading the snapshot from r, which
// holds size bytes, as it decodes (the binary form is never held whole). r
// is read to its end before q changes: a reader that checks a checksum
// there (journal.SnapshotReader) refuses a damaged snapshot.
func (q *Queue) LoadSnapshotFrom(r io.Reader, size int64) (uint64, error) {
	var st queueState
	// Strings are shared through a table of q's own once the snapshot is
	// whole: until then, through this one.
	tmp := &Queue{shared: map[string]string{}}
	head := make([]byte, len(snapMagic))
	n, err := io.ReadFull(r, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("queue snapshot: %w", err)
	}
	if n == len(head) && string(head) == snapMagic {
		// The decoder shares as it reads.
		if err := tmp.decodeSnapshot(r, size-int64(n), &st, snapWindow); err != nil {
			return 0, fmt.Errorf("queue snapshot: %w", err)
		}
	} else {
		rest, err := io.ReadAll(r)
		if err != nil {
			return 0, fmt.Errorf("queue snapshot: %w", err)
		}
		data := append(head[:n], rest...)
		if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&st); err != nil {
			return 0, fmt.Errorf("queue snapshot: %w", err)
		}
		st.newMaps(len(st.Live))
		for _, e := range st.Live {
			tmp.compact(e)
			x := new(entry)
			toEntry(e, x)
			st.add(x)
		}
		st.Live = nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.live, q.shared = st.live, tmp.shared
	q.counts, q.bodyRefs, q.seq = st.Counts, st.refs, st.Seq
	if q.counts == nil {
		q.counts = map[State]int{}
	}
	q.suspended = st.Suspended
	if q.suspended == nil {
		q.suspended = map[string]time.Time{}
	}
	return st.Seq, nil
}
