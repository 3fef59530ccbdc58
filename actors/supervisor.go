package actors

import (
	"container/heap"
	"context"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/projections"
)

// Messages to the supervisor.
type (
	enqueue  struct{ id string }
	retryNow struct{ id string }
	// schedule asks for envelope id to be worked on again at at.
	schedule struct {
		id string
		at time.Time
	}
	// children reports envelopes created by a split.
	children struct{ ids []string }
	// finished reports that an envelope actor stopped.
	finished struct{ id string }
	tick     struct{}
	// countDestinations asks how many delivery actors are alive (tests).
	countDestinations struct{}
	// destinationsQuery asks for each destination's DestinationState.
	destinationsQuery struct{}
	// heldQuery asks which envelopes wait for their destination's budget.
	heldQuery struct{}
	// budget: a destination's rate budget has refilled.
	budget struct{}
	// drain stops the supervisor from starting anything new; done is closed
	// once no envelope actor runs.
	drain struct{ done chan struct{} }
	// withhold takes an envelope out of scheduling (a transfer to another
	// node); the answer is false while an attempt of it runs.
	withhold struct{ id string }
	// release puts a withheld envelope back, ready now.
	release struct{ id string }
)

type supervisor struct {
	o       Options
	ctx     context.Context
	workers *workers // the goroutines its children's turns run on
	due     dueHeap
	ready   *readyQueues          // due, waiting for a free slot of their destination
	dests   map[string]*actor.PID // delivery actor per destination domain
	routed  map[string]int        // requests given to each delivery actor
	active  map[string]string     // envelope actors running -> their destination lane
	again   map[string]bool       // became due while its actor was still running
	// withheld envelopes are being handed to another node: never started.
	withheld map[string]bool
	timer    *time.Timer
	// budgetTimer wakes fill when a rate-limited destination may go on.
	budgetTimer *time.Timer
	// drained is set by drain (shutdown): nothing new starts, and it is
	// closed when the last running envelope actor finishes.
	drained chan struct{}
	self    *actor.PID
	send    func(pid *actor.PID, msg any)
}

func newSupervisor(o Options, ctx context.Context) *supervisor {
	sup := &supervisor{o: o, ctx: ctx, workers: newWorkers(300, 5*time.Second), ready: newReadyQueues(o.MaxConnectionsPerDomain), active: map[string]string{},
		again: map[string]bool{}, dests: map[string]*actor.PID{}, routed: map[string]int{}, withheld: map[string]bool{}}
	if o.Shaping != nil {
		sup.ready.shape = o.Shaping
	}
	return sup
}

func (s *supervisor) Receive(c actor.Context) {
	// protoactor restarts a failing supervisor and logs only the reason:
	// log where it failed first.
	defer func() {
		if r := recover(); r != nil {
			s.o.Logger.Error("queue supervisor failed; restarting it", zap.Any("panic", r), zap.Stack("stack"))
			panic(r)
		}
	}()
	switch m := c.Message().(type) {
	case *actor.Started:
		s.self = c.Self()
		root := c.ActorSystem().Root
		s.send = func(pid *actor.PID, msg any) { root.Send(pid, msg) }
		s.recover(c)
	case *actor.Stopping:
		if s.timer != nil {
			s.timer.Stop()
		}
		if s.budgetTimer != nil {
			s.budgetTimer.Stop()
		}
	case enqueue:
		s.makeReady(c, m.id)
	case children:
		for _, id := range m.ids {
			s.makeReady(c, id)
		}
	case schedule:
		heap.Push(&s.due, dueItem{at: dueAt(m.at), id: m.id})
		s.arm(c)
	case retryNow:
		s.retry(c, m.id)
	case withhold:
		if _, running := s.active[m.id]; running {
			c.Respond(false)
			return
		}
		s.withheld[m.id] = true
		s.due.remove(m.id)
		s.ready.remove(m.id)
		delete(s.again, m.id)
		c.Respond(true)
	case release:
		delete(s.withheld, m.id)
		s.makeReady(c, m.id)
	case finished:
		if key, ok := s.active[m.id]; ok {
			s.ready.done(key)
			delete(s.active, m.id)
		}
		if s.again[m.id] {
			delete(s.again, m.id)
			s.push(m.id)
		}
		s.fill(c)
		s.checkDrained()
	case budget:
		s.budgetTimer = nil
		s.fill(c)
	case drain:
		if s.drained == nil {
			s.drained = m.done
			s.o.Logger.Info("queue draining: no new deliveries start", zap.Int("running", len(s.active)), zap.Int("waiting", s.ready.len()))
			s.checkDrained()
		}
	case tick:
		s.popDue(c)
	case route:
		c.Send(s.destination(c, m.key), m.req)
		s.routed[m.key]++
	case countDestinations:
		c.Respond(len(s.dests))
	case heldQuery:
		c.Respond(s.ready.held())
	case destinationsQuery:
		c.Respond(s.ready.states())
	case *actor.Terminated:
		// A destination actor that failed and was stopped: forget it.
		for key, pid := range s.dests {
			if pid.Equal(m.Who) {
				delete(s.dests, key)
				delete(s.routed, key)
			}
		}
	case destIdle:
		// Messages to the supervisor are handled one at a time: if the
		// actor has received everything routed to it, nothing is in flight
		// and it can go; the next request for the domain spawns a new one.
		if pid, ok := s.dests[m.key]; ok && s.routed[m.key] == m.received {
			c.Stop(pid)
			delete(s.dests, m.key)
			delete(s.routed, m.key)
		}
	}
}

// recover schedules every live envelope of the replayed queue.
func (s *supervisor) recover(c actor.Context) {
	now := s.o.Now()
	var live, deferred int
	// Sized once: grown by append, a million due items would allocate
	// about five times their size on the way (the growth of a large slice
	// is a quarter at a time), all of it garbage at start-up.
	s.due = slices.Grow(s.due, s.o.Queue.Count(projections.StateDeferred))
	s.o.Queue.Range(func(e *projections.Envelope) {
		live++
		switch e.State {
		case projections.StateDeferred:
			s.due = append(s.due, dueItem{at: dueAt(e.NextAttempt), id: e.ID})
			deferred++
		case projections.StateTransferring:
			// Resolved by asking the peer (package scaleout); Release
			// brings it back if the peer does not have it.
			s.withheld[e.ID] = true
		default: // received, queued, or an attempt cut short by a crash
			s.ready.push(laneOf(e), e.ID)
		}
	})
	heap.Init(&s.due)
	s.o.Logger.Info("queue recovered", zap.Int("live", live), zap.Int("deferred", deferred), zap.Int("ready", live-deferred), zap.Time("now", now))
	s.fill(c)
	s.arm(c)
}

func (s *supervisor) makeReady(c actor.Context, id string) {
	s.push(id)
	s.fill(c)
}

// push queues id in its destination's lane.
func (s *supervisor) push(id string) {
	if s.withheld[id] {
		return
	}
	key := ""
	if e, ok := s.o.Queue.Get(id); ok {
		key = laneOf(e)
	}
	s.ready.push(key, id)
}

// laneOf is the destination lane of an envelope: its delivery domain, or
// "" for a root envelope (whose step is the policies, not a delivery).
func laneOf(e *projections.Envelope) string {
	if !strings.Contains(e.ID, ".") {
		return ""
	}
	return destinationKey(e.Pending)
}

func (s *supervisor) retry(c actor.Context, id string) {
	if id != "" {
		s.due.remove(id)
		s.makeReady(c, id)
		return
	}
	for s.due.Len() > 0 {
		s.push(heap.Pop(&s.due).(dueItem).id)
	}
	s.fill(c)
}

// fill spawns envelope actors for ready envelopes while slots are free, a
// delivery only when its destination has a free connection, destinations
// in turn: a slow or dead destination holds at most its own connections,
// never another's turn.
func (s *supervisor) fill(c actor.Context) {
	for s.drained == nil && len(s.active) < s.o.MaxActive {
		key, id, ok := s.ready.next()
		if !ok {
			if w := s.ready.wait; w > 0 && s.budgetTimer == nil {
				self, send := s.self, s.send
				s.budgetTimer = time.AfterFunc(w, func() { send(self, budget{}) })
			}
			return
		}
		if _, running := s.active[id]; running {
			// One actor per envelope at a time: run it again afterwards.
			s.again[id] = true
			continue
		}
		s.active[id] = key
		s.ready.started(key)
		props := actor.PropsFromProducer(func() actor.Actor { return newEnvelope(s.o, id, s.self) }, actor.WithDispatcher(s.workers))
		c.Spawn(props)
	}
}

// checkDrained closes the drain channel once nothing runs.
func (s *supervisor) checkDrained() {
	if s.drained != nil && len(s.active) == 0 {
		select {
		case <-s.drained:
		default:
			close(s.drained)
		}
	}
}

// destination returns the delivery actor of key, spawning it on first use.
// An idle one stops (see destIdle), so only domains with recent mail cost
// an actor.
func (s *supervisor) destination(c actor.Context, key string) *actor.PID {
	if pid, ok := s.dests[key]; ok {
		return pid
	}
	pid := c.Spawn(actor.PropsFromProducer(func() actor.Actor { return newDestination(s.o, s.ctx, key, s.self) }, actor.WithDispatcher(s.workers)))
	s.dests[key] = pid
	return pid
}

func (s *supervisor) popDue(c actor.Context) {
	now := s.o.Now()
	for s.due.Len() > 0 && s.due[0].at <= dueAt(now) {
		s.push(heap.Pop(&s.due).(dueItem).id)
	}
	s.fill(c)
	s.arm(c)
}

// arm sets the timer for the earliest due envelope.
func (s *supervisor) arm(c actor.Context) {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if s.due.Len() == 0 {
		return
	}
	var wait time.Duration
	if at, now := s.due[0].at, dueAt(s.o.Now()); at > now {
		wait = time.Duration(at - now) // at most MaxInt64 - now: no overflow
	}
	self, send := s.self, s.send
	s.timer = time.AfterFunc(wait, func() { send(self, tick{}) })
}

// dueItem is one deferred envelope waiting for its time: 24 bytes (a
// million deferred hold a million of these).
type dueItem struct {
	at int64 // see dueAt
	id string
}

// dueAt is t as Unix nanoseconds, clamped to what they hold (years
// 1678–2262): due times only compare with one another and with now.
func dueAt(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// dueHeap orders envelopes by due time.
type dueHeap []dueItem

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueItem)) }
func (h *dueHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

func (h *dueHeap) remove(id string) {
	for i, it := range *h {
		if it.id == id {
			heap.Remove(h, i)
			return
		}
	}
}
