// Package projections builds read models from journal events: the live
// queue (what `mta queue` and the supervisor's start-up replay see) and the
// audit listing of `mta replay`.
//
// The contract: a projection is a pure fold over events in sequence order.
// Feeding it the whole journal from sequence 1 always yields the same state,
// whether the events come from a live subscription or from an offline scan.
package projections

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// State is an envelope's place in its lifecycle.
type State string

// Envelope states. Live states keep the envelope in the queue; final states
// remove it.
const (
	StateReceived  State = "received"  // accepted, policies not applied yet
	StateSplit     State = "split"     // final for a parent: its children carry on
	StateQueued    State = "queued"    // waiting for its first attempt
	StateActive    State = "active"    // an attempt is under way
	StateDeferred  State = "deferred"  // waiting for a retry
	StateDelivered State = "delivered" // every recipient done, none bounced
	StateBounced   State = "bounced"   // at least one recipient failed permanently
	StateExpired   State = "expired"
	StateDeleted   State = "deleted"
	StateLost      State = "lost" // unreadable after storage damage (mta journal repair)
)

// Live reports whether an envelope in state s still needs work.
func (s State) Live() bool {
	switch s {
	case StateReceived, StateQueued, StateActive, StateDeferred:
		return true
	}
	return false
}

// Envelope is the folded state of one envelope.
type Envelope struct {
	ID          string    `json:"id"`
	Parent      string    `json:"parent"`
	State       State     `json:"state"`
	Sender      string    `json:"sender"`
	Recipients  []string  `json:"recipients"`
	Pending     []string  `json:"-"`
	Size        int64     `json:"size"`
	Arrived     time.Time `json:"arrived"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error"`

	BodyKey string `json:"-"`
	Prepend string `json:"-"`
	LastSeq uint64 `json:"-"`
	// Received is the accepting event (client, TLS, AUTH: for headers).
	Received *events.Received `json:"-"`
}

// Clone returns a deep copy.
func (e *Envelope) Clone() *Envelope {
	c := *e
	c.Recipients = append([]string(nil), e.Recipients...)
	c.Pending = append([]string(nil), e.Pending...)
	return &c
}

// Fold applies one event to a set of envelopes keyed by ID, creating the
// envelopes that Received and Split introduce. It returns the envelope the
// event concerns (nil for an event about an unknown envelope).
func Fold(set map[string]*Envelope, ev events.Event) *Envelope {
	env := set[ev.Envelope]
	switch p := ev.Payload.(type) {
	case events.Received:
		env = &Envelope{
			ID: ev.Envelope, Parent: p.Parent, State: StateReceived, Sender: p.Sender,
			Recipients: append([]string(nil), p.Recipients...), Pending: append([]string(nil), p.Recipients...),
			Size: p.Size, Arrived: ev.Time, BodyKey: p.BodyKey, Received: &p,
		}
		set[ev.Envelope] = env
	case events.PoliciesApplied:
		if env != nil {
			env.Prepend = p.Prepend
			env.Recipients = append([]string(nil), p.Recipients...)
			env.Pending = append([]string(nil), p.Recipients...)
		}
	case events.Split:
		if env == nil {
			return nil
		}
		env.State = StateSplit
		env.Pending = nil
		for _, c := range p.Children {
			set[c.ID] = &Envelope{
				ID: c.ID, Parent: env.ID, State: StateQueued, Sender: env.Sender,
				Recipients: append([]string(nil), c.Recipients...), Pending: append([]string(nil), c.Recipients...),
				Size: env.Size + int64(len(env.Prepend)), Arrived: env.Arrived, BodyKey: env.BodyKey,
				Prepend: env.Prepend, Received: env.Received,
			}
		}
	case events.AttemptStarted:
		if env != nil {
			env.State = StateActive
			env.Attempts = p.Attempt
		}
	case events.Attempted:
		if env != nil {
			for _, r := range p.Results {
				if r.Code >= 400 || r.Code == 0 {
					env.LastError = r.Message
					if r.Code != 0 {
						env.LastError = strings.TrimSpace(strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Message)
					}
				}
			}
		}
	case events.Deferred:
		if env != nil {
			env.State = StateDeferred
			env.NextAttempt = p.NextAttempt
			env.LastError = p.Reason
		}
	case events.Delivered:
		if env != nil {
			env.Pending = without(env.Pending, p.Recipients)
			env.finishIfDone()
		}
	case events.Bounced:
		if env != nil {
			env.Pending = without(env.Pending, p.Recipients)
			env.LastError = p.Reason
			if len(env.Pending) == 0 {
				env.State = StateBounced
			}
		}
	case events.Expired:
		if env != nil {
			env.Pending = nil
			env.State = StateExpired
		}
	case events.RetryRequested:
		if env != nil && env.State == StateDeferred {
			env.NextAttempt = ev.Time
		}
	case events.Deleted:
		if env != nil {
			env.Pending = nil
			env.State = StateDeleted
		}
	case events.Lost:
		if env != nil && env.State.Live() {
			env.Pending = nil
			env.State = StateLost
			env.LastError = p.Reason
		}
	}
	if env != nil {
		env.LastSeq = ev.Seq
	}
	return env
}

func (e *Envelope) finishIfDone() {
	if len(e.Pending) > 0 {
		return
	}
	if e.State != StateBounced {
		e.State = StateDelivered
	}
}

func without(list, remove []string) []string {
	drop := make(map[string]bool, len(remove))
	for _, r := range remove {
		drop[r] = true
	}
	out := list[:0:0]
	for _, r := range list {
		if !drop[r] {
			out = append(out, r)
		}
	}
	return out
}

// Queue is the live-queue read model. Only live envelopes are kept in
// memory; counts cover every envelope ever seen. It is safe for concurrent
// use.
type Queue struct {
	mu       sync.RWMutex
	live     map[string]*Envelope
	counts   map[State]int
	bodyRefs map[string]int // live envelopes per stored body
	seq      uint64
}

// NewQueue returns an empty queue projection.
func NewQueue() *Queue {
	return &Queue{live: map[string]*Envelope{}, counts: map[State]int{}, bodyRefs: map[string]int{}}
}

// Apply folds events (in sequence order) into the projection.
func (q *Queue) Apply(evs []events.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, ev := range evs {
		var before State
		if old := q.live[ev.Envelope]; old != nil {
			before = old.State
		}
		wasLive := before.Live()
		children := q.newChildren(ev)
		env := Fold(q.live, ev)
		q.seq = ev.Seq
		if env == nil {
			continue
		}
		if before != "" {
			q.counts[before]--
		}
		q.counts[env.State]++
		for _, id := range children {
			c := q.live[id]
			q.counts[c.State]++
			q.bodyRefs[c.BodyKey]++
			slim(c)
		}
		if env.State != StateReceived {
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
		}
	}
}

// slim drops what the live queue does not need once an envelope is past
// its policies (the header block to prepend, the Received details): the
// envelope actor reads those from the journal. It keeps a large queue small.
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

// Get returns a copy of a live envelope.
func (q *Queue) Get(id string) (*Envelope, bool) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	e, ok := q.live[id]
	if !ok {
		return nil, false
	}
	return e.Clone(), true
}

// Snapshot is what `mta queue --json` prints.
type Snapshot struct {
	Counts    map[State]int `json:"counts"`
	Envelopes []*Envelope   `json:"envelopes"`
	Seq       uint64        `json:"seq"`
}

// Snapshot returns the counts and every live envelope, oldest first.
func (q *Queue) Snapshot() Snapshot {
	q.mu.RLock()
	defer q.mu.RUnlock()
	s := Snapshot{Counts: map[State]int{}, Envelopes: make([]*Envelope, 0, len(q.live)), Seq: q.seq}
	for k, v := range q.counts {
		if v != 0 {
			s.Counts[k] = v
		}
	}
	for _, e := range q.live {
		s.Envelopes = append(s.Envelopes, e.Clone())
	}
	sort.Slice(s.Envelopes, func(a, b int) bool {
		x, y := s.Envelopes[a], s.Envelopes[b]
		if !x.Arrived.Equal(y.Arrived) {
			return x.Arrived.Before(y.Arrived)
		}
		return x.ID < y.ID
	})
	return s
}

// Live returns copies of every live envelope (for the supervisor's start-up
// scheduling).
func (q *Queue) Live() []*Envelope { return q.Snapshot().Envelopes }

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
	for _, e := range q.live {
		if match(e) {
			out = append(out, e.Clone())
		}
	}
	return out
}
