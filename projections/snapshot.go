package projections

import (
	"bytes"
	"encoding/gob"
	"fmt"
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
	// entries are the live envelopes as the queue holds them (the binary
	// form decodes into these, the gob form into Live).
	entries []*entry
}

// MarshalSnapshot returns the queue's state and the sequence number it is
// as of, consistently: it is encoded under the read lock, in place (about
// 0.1 µs per envelope), with no copy of the envelopes.
func (q *Queue) MarshalSnapshot() ([]byte, uint64, error) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	b, err := q.appendSnapshot(make([]byte, 0, 4096+len(q.live)*256))
	if err != nil {
		return nil, 0, err
	}
	return b, q.seq, nil
}

// LoadSnapshot replaces the queue's state with a snapshot's (the binary
// form, or the gob form of earlier versions); events after the returned
// sequence number must then be applied. On an error q is unchanged.
func (q *Queue) LoadSnapshot(data []byte) (uint64, error) {
	var st queueState
	// Strings are shared through a table of q's own once the snapshot is
	// whole: until then, through this one.
	tmp := &Queue{shared: map[string]string{}}
	if bytes.HasPrefix(data, []byte(snapMagic)) {
		// The decoder shares as it reads.
		if err := tmp.decodeSnapshot(data, &st); err != nil {
			return 0, fmt.Errorf("queue snapshot: %w", err)
		}
	} else {
		if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&st); err != nil {
			return 0, fmt.Errorf("queue snapshot: %w", err)
		}
		st.entries = make([]*entry, len(st.Live))
		for i, e := range st.Live {
			tmp.compact(e)
			st.entries[i] = new(entry)
			toEntry(e, st.entries[i])
		}
		st.Live = nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.live = make(map[string]*entry, len(st.entries))
	q.shared = tmp.shared
	// The body references are counted from the envelopes, keyed by their
	// own copies of the keys: what the snapshot lists is the same count
	// (live envelopes per body key), and counting is cheaper than looking
	// a million of them up.
	refs := make(map[string]int, len(st.entries))
	for _, x := range st.entries {
		q.live[x.id] = x
		if s := x.stateOf(); s.Live() {
			refs[x.bodyKey()]++
		}
	}
	q.counts, q.bodyRefs, q.seq = st.Counts, refs, st.Seq
	if q.counts == nil {
		q.counts = map[State]int{}
	}
	q.suspended = st.Suspended
	if q.suspended == nil {
		q.suspended = map[string]time.Time{}
	}
	return st.Seq, nil
}
