package queue

import (
	"fmt"
	"sort"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/projections"
)

// Compare lists the differences between the queue rebuilt from
// the journal and a reference taken at the same sequence number.
func Compare(rebuilt, ref projections.Snapshot) []string {
	var out []string
	want := map[string]*projections.Envelope{}
	for _, e := range ref.Envelopes {
		want[e.ID] = e
	}
	for _, e := range rebuilt.Envelopes {
		l, ok := want[e.ID]
		if !ok {
			out = append(out, fmt.Sprintf("envelope %s is live in the journal but not in the reference", e.ID))
			continue
		}
		if l.State != e.State || l.Attempts != e.Attempts {
			out = append(out, fmt.Sprintf("envelope %s: journal says %s after %d attempts, reference %s after %d", e.ID, e.State, e.Attempts, l.State, l.Attempts))
		}
		delete(want, e.ID)
	}
	for id := range want {
		out = append(out, fmt.Sprintf("envelope %s is in the reference but not live in the journal", id))
	}
	sort.Strings(out)
	return out
}

// Verifier folds the journal from scratch and, when it has a reference
// (a record of the queue kept independently of this fold: the server's
// saved snapshot or its live projection), takes the rebuilt state at the
// reference's sequence number to compare with it.
type Verifier struct {
	q      *projections.Queue
	ref    *projections.Snapshot
	atRef  *projections.Snapshot
	batch  []events.Event
	Events int // events folded
}

// NewVerifier starts a fold; ref may be nil (nothing to compare with).
func NewVerifier(ref *projections.Snapshot) *Verifier {
	return &Verifier{q: projections.NewQueue(), ref: ref}
}

// Add folds the next event (in sequence order).
func (v *Verifier) Add(e events.Event) {
	v.Events++
	v.batch = append(v.batch, e)
	if v.ref != nil && e.Seq == v.ref.Seq {
		v.flush()
		s := v.q.Snapshot()
		v.atRef = &s
	}
	if len(v.batch) == 1024 {
		v.flush()
	}
}

func (v *Verifier) flush() {
	v.q.Apply(v.batch)
	v.batch = v.batch[:0]
}

// Finish returns the rebuilt queue and the differences from the reference.
func (v *Verifier) Finish() (rebuilt projections.Snapshot, mismatches []string) {
	v.flush()
	rebuilt = v.q.Snapshot()
	switch {
	case v.ref == nil:
	case v.ref.Seq == 0:
		mismatches = Compare(projections.NewQueue().Snapshot(), *v.ref)
	case v.atRef == nil:
		mismatches = []string{fmt.Sprintf("the reference is as of sequence %d, past the end of the readable journal", v.ref.Seq)}
	default:
		mismatches = Compare(*v.atRef, *v.ref)
	}
	return rebuilt, mismatches
}
