// Package lifecycle is the one state machine of an envelope: which event
// may follow which, and what each does to the envelope. The live queue
// projection, the envelope actors, replay, verification and operator
// actions all fold events with it, so they cannot disagree.
//
// The contract:
//   - Fold applies one event to a set of envelopes; it is pure and
//     deterministic: the same events in sequence order give the same state.
//   - Split, Delivered, Bounced, Expired, Deleted and Lost are final states
//     and absorb every later event: an attempt that ends after its envelope
//     was deleted is an Attempted record in the journal and changes nothing.
//   - An event that may not follow the envelope's state (Allowed) changes
//     nothing either; it stays in the journal for the audit.
//   - Fold replaces an envelope's slices (Recipients, Pending), never writes
//     into them, so a shallow copy of an Envelope shares nothing that
//     changes (the queue projection's listings rely on it).
package lifecycle

import (
	"strconv"
	"strings"
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
	// StateTransferring: being handed to another node (TransferStarted);
	// live, but never delivered here until TransferAborted.
	StateTransferring State = "transferring"
	StateTransferred  State = "transferred" // final: another node has it
)

// Final reports whether s absorbs every later event.
func (s State) Final() bool { return s != "" && !s.Live() }

// Allowed reports whether an event of type t may change an envelope in
// state from. Received creates an envelope (from ""); Attempted is
// always journaled but after a final state it changes nothing.
func Allowed(from State, t events.Type) bool {
	if from.Final() {
		return false
	}
	switch from {
	case "":
		return t == events.TypeReceived || t == events.TypeTransferredIn
	case StateTransferring:
		switch t {
		case events.TypeTransferredOut, events.TypeTransferAborted, events.TypeDeleted, events.TypeLost:
			return true
		}
		return false
	case StateReceived:
		switch t {
		case events.TypePoliciesApplied, events.TypeSplit, events.TypeDeferred, events.TypeRetryRequested,
			events.TypeDeleted, events.TypeLost, events.TypeExpired, events.TypeBounced:
			return true
		}
		return false
	}
	// queued, active, deferred
	switch t {
	case events.TypeAttemptStarted, events.TypeAttempted, events.TypeDeferred, events.TypeDelivered, events.TypeBounced,
		events.TypeExpired, events.TypeRetryRequested, events.TypeDeleted, events.TypeLost:
		return true
	case events.TypeTransferStarted:
		return from == StateQueued || from == StateDeferred
	}
	return false
}

// Live reports whether an envelope in state s still needs work.
func (s State) Live() bool {
	switch s {
	case StateReceived, StateQueued, StateActive, StateDeferred, StateTransferring:
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
	// Warned: a delay warning went to the sender (it goes once).
	Warned bool `json:"-"`

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
	var from State
	if env != nil {
		from = env.State
	}
	if !creates(ev.Payload) && env != nil && !Allowed(from, ev.Type()) {
		// A final state absorbs it (or it may not follow this state): the
		// event stays in the journal and changes nothing.
		return env
	}
	switch p := ev.Payload.(type) {
	case events.Received:
		env = &Envelope{
			ID: ev.Envelope, Parent: p.Parent, State: StateReceived, Sender: p.Sender,
			Recipients: append([]string(nil), p.Recipients...), Pending: append([]string(nil), p.Recipients...),
			Size: p.Size, Arrived: ev.Time, BodyKey: p.BodyKey, Received: &p,
		}
		set[ev.Envelope] = env
	case events.TransferredIn:
		if env != nil {
			return env // the ID is taken: a transfer is idempotent
		}
		// Ready for delivery: the body is the message as the origin would
		// have sent it.
		env = &Envelope{
			ID: ev.Envelope, State: StateQueued, Sender: p.Sender,
			Recipients: append([]string(nil), p.Recipients...), Pending: append([]string(nil), p.Recipients...),
			Size: p.Size, Arrived: p.Arrived, Attempts: p.Attempts, BodyKey: p.BodyKey,
			Received: &events.Received{Sender: p.Sender, Recipients: p.Recipients, BodyKey: p.BodyKey, BodySHA256: p.BodySHA256,
				Size: p.Size, Listener: "transfer/" + p.Origin, AuthUser: p.AuthUser, ClientAddr: p.ClientAddr},
		}
		set[ev.Envelope] = env
	case events.TransferStarted:
		if env != nil {
			env.State = StateTransferring
		}
	case events.TransferredOut:
		if env != nil {
			env.Pending = nil
			env.State = StateTransferred
		}
	case events.TransferAborted:
		if env != nil {
			env.State = StateDeferred
			env.NextAttempt = ev.Time
			env.LastError = "transfer to " + p.Peer + " aborted: " + p.Reason
		}
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
			if p.DelayDSN != "" {
				env.Warned = true
			}
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

// creates reports whether p creates its envelope.
func creates(p events.Payload) bool {
	switch p.(type) {
	case events.Received, events.TransferredIn:
		return true
	}
	return false
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
