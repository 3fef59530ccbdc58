package projections

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"maps"
	"time"
)

// queueState is the gob form of a Queue snapshot.
type queueState struct {
	Seq       uint64
	Live      []*Envelope
	Counts    map[State]int
	BodyRefs  map[string]int
	Suspended map[string]time.Time
}

// MarshalSnapshot returns the queue's state and the sequence number it is
// as of, consistently (under the lock).
func (q *Queue) MarshalSnapshot() ([]byte, uint64, error) {
	// Copy under the lock (Fold mutates envelopes in place), encode after:
	// the journal's writer waits on this lock only for the copy.
	q.mu.RLock()
	st := queueState{Seq: q.seq, Live: make([]*Envelope, 0, len(q.live)), Counts: make(map[State]int, len(q.counts)),
		BodyRefs: make(map[string]int, len(q.bodyRefs))}
	for _, e := range q.live {
		st.Live = append(st.Live, e.Clone())
	}
	for k, v := range q.counts {
		st.Counts[k] = v
	}
	for k, v := range q.bodyRefs {
		st.BodyRefs[k] = v
	}
	st.Suspended = maps.Clone(q.suspended)
	q.mu.RUnlock()
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(&st); err != nil {
		return nil, 0, fmt.Errorf("queue snapshot: %w", err)
	}
	return b.Bytes(), st.Seq, nil
}

// LoadSnapshot replaces the queue's state with a snapshot's; events after
// the returned sequence number must then be applied.
func (q *Queue) LoadSnapshot(data []byte) (uint64, error) {
	var st queueState
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&st); err != nil {
		return 0, fmt.Errorf("queue snapshot: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.live = make(map[string]*Envelope, len(st.Live))
	q.shared = map[string]string{}
	// The body counts keyed by the envelopes' own copies of the keys.
	refs := make(map[string]int, len(st.BodyRefs))
	for _, e := range st.Live {
		q.compact(e)
		q.live[e.ID] = e
		if n, ok := st.BodyRefs[e.BodyKey]; ok {
			refs[e.BodyKey] = n
		}
	}
	for k, n := range st.BodyRefs {
		if _, ok := refs[k]; !ok {
			refs[k] = n
		}
	}
	q.counts, q.bodyRefs, q.seq = st.Counts, refs, st.Seq
	if q.counts == nil {
		q.counts = map[State]int{}
	}
	if q.bodyRefs == nil {
		q.bodyRefs = map[string]int{}
	}
	q.suspended = st.Suspended
	if q.suspended == nil {
		q.suspended = map[string]time.Time{}
	}
	return st.Seq, nil
}
