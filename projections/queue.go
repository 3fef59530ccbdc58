// Package projections builds read models from journal events: the live
// queue (what `mta queue` and the supervisor's start-up replay see) and the
// audit listing of `mta replay`.
//
// The contract: a projection is a pure fold over events in sequence order.
// Feeding it the whole journal from sequence 1 always yields the same state,
// whether the events come from a live subscription or from an offline scan.
package projections

import (
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/lifecycle"
)

// The lifecycle's types, under the names the read models have always used.
type (
	// State is lifecycle.State.
	State = lifecycle.State
	// Envelope is lifecycle.Envelope.
	Envelope = lifecycle.Envelope
)

// Envelope states (see package lifecycle).
const (
	StateReceived  = lifecycle.StateReceived
	StateSplit     = lifecycle.StateSplit
	StateQueued    = lifecycle.StateQueued
	StateActive    = lifecycle.StateActive
	StateDeferred  = lifecycle.StateDeferred
	StateDelivered = lifecycle.StateDelivered
	StateBounced   = lifecycle.StateBounced
	StateExpired   = lifecycle.StateExpired
	StateDeleted   = lifecycle.StateDeleted
	StateLost      = lifecycle.StateLost
	// StateTransferring is being handed to another node (mta drain).
	StateTransferring = lifecycle.StateTransferring
	StateTransferred  = lifecycle.StateTransferred
)

// Fold is lifecycle.Fold.
func Fold(set map[string]*Envelope, ev events.Event) *Envelope { return lifecycle.Fold(set, ev) }

// Queue is the live-queue read model. Only live envelopes are kept in
// memory; counts cover every envelope ever seen. It is safe for concurrent
// use.
type Queue struct {
	mu       sync.RWMutex
	live     map[string]*entry
	counts   map[State]int
	bodyRefs map[string]int // live envelopes per stored body
	// suspended destination domains, until when (zero: until resumed)
	suspended map[string]time.Time
	seq       uint64
	// shared holds one copy of the strings many envelopes repeat (senders,
	// deferral reasons), at most maxShared of them.
	shared map[string]string
	// fold and scratch are where apply inflates an entry to fold an event.
	fold    map[string]*Envelope
	scratch Envelope
	// encoding counts the snapshots encoding entries they took (see put
	// and WriteSnapshot). It changes under the read lock or after it, and
	// is read under the write lock.
	encoding atomic.Int32
}

// maxShared bounds Queue.shared: past it the table starts again (sharing
// is an optimisation; an envelope keeps whichever copy it has).
const maxShared = 1 << 14

// share returns the copy of s that the queue already holds, or keeps s as
// that copy. q.mu is held.
func (q *Queue) share(s string) string {
	if s == "" {
		return s
	}
	if v, ok := q.shared[s]; ok {
		return v
	}
	if len(q.shared) >= maxShared {
		clear(q.shared)
	}
	q.shared[s] = s
	return s
}

// compact makes an envelope share what it repeats: its state, sender and
// last error with the other envelopes (200,000 deferred for one reason
// hold that reason once), its body key with its parent's ID, its pending
// recipients with its recipients. For envelopes decoded from a gob
// snapshot, whose every string is a copy of its own (the binary form's
// decoder shares as it reads). q.mu is held.
func (q *Queue) compact(e *Envelope) {
	e.State = State(q.share(string(e.State)))
	e.Sender, e.LastError = q.share(e.Sender), q.share(e.LastError)
	if e.BodyKey == e.Parent {
		e.BodyKey = e.Parent
	}
	for i := range e.Pending {
		if i < len(e.Recipients) && e.Pending[i] == e.Recipients[i] {
			e.Pending[i] = e.Recipients[i]
		}
	}
}

// NewQueue returns an empty queue projection.
func NewQueue() *Queue {
	return &Queue{live: map[string]*entry{}, counts: map[State]int{}, bodyRefs: map[string]int{}, suspended: map[string]time.Time{},
		shared: map[string]string{}, fold: map[string]*Envelope{}}
}

// Apply folds events (in sequence order) into the projection.
func (q *Queue) Apply(evs []events.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, ev := range evs {
		switch p := ev.Payload.(type) {
		case events.Suspended:
			q.suspended[p.Domain] = p.Until
			q.seq = ev.Seq
			continue
		case events.Resumed:
			delete(q.suspended, p.Domain)
			q.seq = ev.Seq
			continue
		}
		q.apply(ev)
	}
}

// apply folds one envelope event: the envelope it concerns is inflated
// from its entry into q.fold, folded, and put back (with the children a
// split creates). q.mu is held.
func (q *Queue) apply(ev events.Event) {
	set := q.fold
	defer clear(set)
	var before State
	if old := q.live[ev.Envelope]; old != nil {
		before = old.stateOf()
		old.fill(&q.scratch)
		set[ev.Envelope] = &q.scratch
	}
	wasLive := before.Live()
	children := q.newChildren(ev)
	env := Fold(set, ev)
	q.seq = ev.Seq
	if env == nil {
		return
	}
	if before != "" {
		q.counts[before]--
	}
	q.counts[env.State]++
	for _, id := range children {
		c := set[id]
		q.counts[c.State]++
		if c.BodyKey == c.Parent {
			c.BodyKey = c.Parent
		}
		q.bodyRefs[c.BodyKey]++
		// Not slimmed yet: its first attempt follows at once and takes
		// the header block and the Received details from here (shared
		// with the parent's, not copied).
		q.put(c)
	}
	if keepsDetails(env) {
		// A child's first attempt, queued or running.
	} else if env.State != StateReceived {
		slim(env)
	}
	if isLive := env.State.Live(); isLive != wasLive {
		if isLive {
			q.bodyRefs[env.BodyKey]++
		} else if q.bodyRefs[env.BodyKey]--; q.bodyRefs[env.BodyKey] <= 0 {
			delete(q.bodyRefs, env.BodyKey)
		}
	}
	if !env.State.Live() {
		delete(q.live, env.ID)
		return
	}
	// Each event decodes its own copies: keep one.
	env.Sender, env.LastError = q.share(env.Sender), q.share(env.LastError)
	q.put(env)
}

// put stores e as its entry. q.mu is held.
//
// While a snapshot encodes the entries it took (WriteSnapshot, without the
// lock), an entry is replaced rather than changed, so that what was taken
// stays as it was; otherwise it is changed in place. (Always replacing
// would scatter a large queue's entries over half-used memory: some 100
// MB more at a million.)
func (q *Queue) put(e *Envelope) {
	x := q.live[e.ID]
	switch {
	case x == nil:
		x = new(entry)
		q.live[e.ID] = x
	case q.encoding.Load() > 0:
		x = &entry{rcpts: x.rcpts} // keeps the joined recipients when the same
		q.live[e.ID] = x
	}
	toEntry(e, x)
}

// keepsDetails says whether an envelope keeps its header block and
// Received details in the live queue: a child until its first attempt
// ends. In-flight envelopes are few; a deferred one is slimmed.
func keepsDetails(e *Envelope) bool {
	return e.Parent != "" && e.Attempts <= 1 && e.Received != nil && (e.State == StateQueued || e.State == StateActive)
}

// slim drops what the live queue does not need once an envelope is past
// its policies and its first attempt (the header block to prepend, the
// Received details): the envelope actor reads those from the journal. It
// keeps a large queue small.
func slim(e *Envelope) {
	e.Prepend = ""
	e.Received = nil
}

func (q *Queue) newChildren(ev events.Event) []string {
	s, ok := ev.Payload.(events.Split)
	if !ok {
		return nil
	}
	ids := make([]string, len(s.Children))
	for i, c := range s.Children {
		ids[i] = c.ID
	}
	return ids
}

// Count returns how many envelopes are in state s.
func (q *Queue) Count(s State) int {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.counts[s]
}

// BodyInUse reports whether a live envelope still needs the stored body.
func (q *Queue) BodyInUse(key string) bool {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.bodyRefs[key] > 0
}

// BodyRefs returns how many live envelopes share the stored body key.
func (q *Queue) BodyRefs(key string) int {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.bodyRefs[key]
}

// Get returns a copy of a live envelope.
func (q *Queue) Get(id string) (*Envelope, bool) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	x, ok := q.live[id]
	if !ok {
		return nil, false
	}
	return x.envelope().Clone(), true
}

// Snapshot is what `mta queue --json` prints.
type Snapshot struct {
	Counts    map[State]int `json:"counts"`
	Envelopes []*Envelope   `json:"envelopes"`
	Seq       uint64        `json:"seq"`
	// Suspended destination domains and until when (zero: until resumed).
	Suspended map[string]time.Time `json:"suspended,omitempty"`
	// Held are the envelopes the running server's scheduler holds for
	// their destination's budget, with which ("connections", "rate"); only
	// the admin API fills it in.
	Held map[string]string `json:"held,omitempty"`
}

// Snapshot returns the counts and every live envelope, oldest first, all
// as of one sequence number (Seq): it holds the read lock while it copies,
// which delays the journal's writer (it folds every commit into this
// projection) for as long. For `replay --verify` and snapshots; listings
// use List.
func (q *Queue) Snapshot() Snapshot {
	q.mu.RLock()
	s := Snapshot{Counts: q.countsLocked(), Seq: q.seq, Suspended: maps.Clone(q.suspended)}
	vals := make([]Envelope, len(q.live))
	i := 0
	for _, x := range q.live {
		x.fill(&vals[i]) // see List: copies share no mutable state
		i++
	}
	q.mu.RUnlock()
	s.Envelopes = pointers(vals)
	sortEnvelopes(s.Envelopes)
	return s
}

// listChunk is how many envelopes List copies per hold of the read lock.
const listChunk = 4096

// List returns the counts and every live envelope, oldest first, without
// holding the lock the write path needs for more than a chunk of copies at a
// time: counts and Seq are as of the start; each envelope is as it was when
// copied (one that finished meanwhile may still be listed). It is what `mta
// queue` prints, so listing a million envelopes does not stall accepting.
//
// Copies are shallow: lifecycle.Fold replaces an envelope's slices, it
// never writes into them, so a copy shares nothing that changes.
func (q *Queue) List() Snapshot {
	q.mu.RLock()
	s := Snapshot{Counts: q.countsLocked(), Seq: q.seq, Suspended: maps.Clone(q.suspended)}
	ptrs := make([]*entry, 0, len(q.live))
	for _, x := range q.live {
		ptrs = append(ptrs, x)
	}
	q.mu.RUnlock()
	vals := make([]Envelope, len(ptrs))
	for i := 0; i < len(ptrs); i += listChunk {
		q.mu.RLock()
		for k, x := range ptrs[i:min(i+listChunk, len(ptrs))] {
			x.fill(&vals[i+k])
		}
		q.mu.RUnlock()
	}
	s.Envelopes = pointers(vals)
	sortEnvelopes(s.Envelopes)
	return s
}

func pointers(vals []Envelope) []*Envelope {
	out := make([]*Envelope, len(vals))
	for i := range vals {
		out[i] = &vals[i]
	}
	return out
}

func (q *Queue) countsLocked() map[State]int {
	out := map[State]int{}
	for k, v := range q.counts {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func sortEnvelopes(envs []*Envelope) {
	sort.Slice(envs, func(a, b int) bool {
		x, y := envs[a], envs[b]
		if !x.Arrived.Equal(y.Arrived) {
			return x.Arrived.Before(y.Arrived)
		}
		return x.ID < y.ID
	})
}

// Live returns copies of every live envelope (for the supervisor's start-up
// scheduling).
func (q *Queue) Live() []*Envelope { return q.List().Envelopes }

// Len returns the number of live envelopes.
func (q *Queue) Len() int {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return len(q.live)
}

// Select returns copies of the live envelopes for which match is true
// (match runs under the read lock and must not call the queue).
func (q *Queue) Select(match func(*Envelope) bool) []*Envelope {
	q.mu.RLock()
	defer q.mu.RUnlock()
	var out []*Envelope
	var e Envelope
	for _, x := range q.live {
		if x.fill(&e); match(&e) {
			out = append(out, e.Clone())
		}
	}
	return out
}

// Suspension says whether deliveries to domain are suspended at now, and
// until when (zero: until resumed).
func (q *Queue) Suspension(domain string, now time.Time) (until time.Time, suspended bool) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	until, ok := q.suspended[domain]
	if !ok || !until.IsZero() && !now.Before(until) {
		return time.Time{}, false
	}
	return until, true
}

// Suspensions returns the suspended domains (including lapsed ones not
// yet resumed) and until when.
func (q *Queue) Suspensions() map[string]time.Time {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return maps.Clone(q.suspended)
}

// Range calls f with each live envelope, in no order, without copying the
// queue: f's envelope is valid only during the call (it is reused; its
// strings and slices may be kept, never written into). The read lock is
// held for a chunk of envelopes at a time, never while f runs, so f may
// call the queue. For the supervisor's start-up scheduling of a large
// queue, where List's sorted copy of every envelope would cost a million
// Envelopes.
func (q *Queue) Range(f func(*Envelope)) {
	q.mu.RLock()
	ptrs := make([]*entry, 0, len(q.live))
	for _, x := range q.live {
		ptrs = append(ptrs, x)
	}
	q.mu.RUnlock()
	var chunk [listChunk]Envelope
	for i := 0; i < len(ptrs); i += listChunk {
		part := ptrs[i:min(i+listChunk, len(ptrs))]
		q.mu.RLock()
		for k, x := range part {
			x.fill(&chunk[k])
		}
		q.mu.RUnlock()
		for k := range part {
			f(&chunk[k])
		}
	}
}
