// Package actors runs the queue: a supervisor actor that owns scheduling and
// one short-lived actor per envelope that drives it one step at a time
// (policies and split, or one delivery attempt) and journals every outcome.
//
// The contract:
//   - The journal is the only state that survives: an envelope actor rebuilds
//     its envelope from the journal when it starts, so a crash at any point
//     loses nothing; at worst an attempt whose outcome was not yet journaled
//     is repeated (at-least-once delivery).
//   - Scheduling is per destination, as Postfix's queue manager does it:
//     due envelopes wait in their destination's queue, an envelope actor
//     is started for a delivery only when its destination has a free
//     connection (MaxConnectionsPerDomain), and destinations take turns.
//     A slow or dead destination therefore holds only its own connections
//     and never delays another; MaxActive bounds all actors at once.
//   - Deferred envelopes are not live actors. The supervisor keeps only
//     (due time, ID) and spawns the actor again when due, so a large queue
//     costs memory per envelope, not per actor.
//   - Actors keep their state private and talk only by messages.
//   - Supervision (childStrategy): the supervisor is the parent of every
//     envelope and destination actor and stops, never restarts, a child
//     that fails. An envelope actor recovers its own panics first (logged
//     with the stack, the envelope scheduled again after the first retry
//     interval), so a failure stops one step, not the envelope; a stopped
//     destination actor is forgotten (Terminated) and the next delivery to
//     its domain starts a new one. A delivery's result always reaches its
//     envelope actor as a message (attemptDone, also when the relay
//     panics), and an envelope actor stops only after that message: during
//     a graceful stop Drain waits for them.
package actors

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
)

// Options configure the queue. Queue must already hold the replayed
// journal and be subscribed to it.
type Options struct {
	Journal  *journal.Journal
	Queue    *projections.Queue
	Relay    mxrelay.Relay
	Policies policy.Options
	Hostname string
	// Retry is the schedule of waits after each failed attempt; the last
	// one repeats.
	Retry []time.Duration
	// MaxAge is how long an envelope may stay queued before it expires.
	MaxAge time.Duration
	// DelayWarning, when positive, sends the sender one delay warning
	// (RFC 3464 "Action: delayed") for an envelope still deferred that long
	// after it arrived.
	DelayWarning time.Duration
	// MaxActive bounds envelopes being worked on at once; 0 means 256.
	MaxActive int
	// MaxConnectionsPerDomain bounds concurrent deliveries to one
	// destination domain; 0 means 20.
	MaxConnectionsPerDomain int
	// Shaping, if set, gives a destination domain its own connection limit
	// and rate budget ([[relay.destinations]]); envelopes over budget wait
	// in their destination's queue (held), never journaled as Deferred.
	Shaping func(domain string) Shaping
	// Gate, if set, gives a destination domain's connection pool a gate
	// (package scaleout: cluster-wide connection and rate leases); nil
	// from it, or no Gate, leaves the limits to this process.
	Gate func(domain string) mxrelay.Gate
	// IdleTimeout is how long an outbound connection is kept for reuse.
	IdleTimeout time.Duration
	// DropBodies deletes a stored body once no live envelope needs it
	// (Postfix's behaviour). When false, bodies stay with the journal so
	// that replay can show the exact bytes of every message ever relayed.
	DropBodies bool
	Logger     *zap.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// System is a running queue.
type System struct {
	sys    *actor.ActorSystem
	sup    *actor.PID
	cancel context.CancelFunc
}

// Start starts the supervisor, which schedules every live envelope of the
// replayed queue.
func Start(o Options) (*System, error) {
	if o.Journal == nil || o.Queue == nil || o.Relay == nil {
		return nil, fmt.Errorf("actors: journal, queue and relay are required")
	}
	if len(o.Retry) == 0 {
		o.Retry = []time.Duration{time.Minute}
	}
	if o.MaxActive <= 0 {
		o.MaxActive = 256
	}
	if o.MaxConnectionsPerDomain <= 0 {
		o.MaxConnectionsPerDomain = 20
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	core := o.Logger.Named("protoactor").Core()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(zapslog.NewHandler(core))
	}))
	ctx, cancel := context.WithCancel(context.Background())
	sup, err := sys.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor {
		return newSupervisor(o, ctx)
	}, actor.WithSupervisor(childStrategy())), "queue")
	if err != nil {
		cancel()
		return nil, fmt.Errorf("actors: start supervisor: %w", err)
	}
	return &System{sys: sys, sup: sup, cancel: cancel}, nil
}

// childStrategy stops a failing child: a restarted envelope or destination
// actor would have lost the state of the step it was in, while a stopped
// one is rescheduled (envelope) or replaced on demand (destination).
func childStrategy() actor.SupervisorStrategy {
	return actor.NewOneForOneStrategy(0, time.Second, func(any) actor.Directive { return actor.StopDirective })
}

// Enqueue tells the supervisor that envelope id was just journaled as
// Received. It is safe to call from any goroutine.
func (s *System) Enqueue(id string) { s.sys.Root.Send(s.sup, enqueue{id: id}) }

// RetryNow asks for an immediate attempt of envelope id (already journaled
// as RetryRequested by the caller), or of every deferred envelope when id
// is "".
func (s *System) RetryNow(id string) { s.sys.Root.Send(s.sup, retryNow{id: id}) }

// Withhold takes envelope id out of scheduling before it is handed to
// another node (journal TransferStarted only after it returned true): no
// attempt of it starts until Release. It returns false while an attempt
// runs; ask again after it.
func (s *System) Withhold(id string) (bool, error) {
	res, err := s.sys.Root.RequestFuture(s.sup, withhold{id: id}, 5*time.Second).Result()
	if err != nil {
		return false, err
	}
	return res.(bool), nil
}

// Release schedules a withheld envelope again, now (TransferAborted was
// journaled).
func (s *System) Release(id string) { s.sys.Root.Send(s.sup, release{id: id}) }

// Held returns the envelopes waiting for their destination's budget
// ([[relay.destinations]] max_connections or rate), each with which
// ("connections" or "rate"). They are not deferred: they start as soon as
// the budget allows.
func (s *System) Held() (map[string]string, error) {
	res, err := s.sys.Root.RequestFuture(s.sup, heldQuery{}, 5*time.Second).Result()
	if err != nil {
		return nil, err
	}
	return res.(map[string]string), nil
}

// Destinations returns, for each destination with deliveries running or
// a rate budget in use, the connections in use against its limit and its
// rate budget (the operator console's destination list).
func (s *System) Destinations() (map[string]DestinationState, error) {
	res, err := s.sys.Root.RequestFuture(s.sup, destinationsQuery{}, 5*time.Second).Result()
	if err != nil {
		return nil, err
	}
	return res.(map[string]DestinationState), nil
}

// destinations returns how many delivery actors are alive.
func (s *System) destinations() (int, error) {
	res, err := s.sys.Root.RequestFuture(s.sup, countDestinations{}, 5*time.Second).Result()
	if err != nil {
		return 0, err
	}
	return res.(int), nil
}

// Drain stops starting envelope actors and waits, until ctx is done, for
// the running ones (deliveries in flight) to finish and journal their
// outcomes. At the deadline it cancels the deliveries still running (each
// ends as a deferral, journaled by its actor) and waits a little more for
// those outcomes. Nothing due is lost: it stays in the journal for the next
// start. Call Stop afterwards.
func (s *System) Drain(ctx context.Context) error {
	done := make(chan struct{})
	s.sys.Root.Send(s.sup, drain{done: done})
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	return ctx.Err()
}

// Stop cancels attempts in flight and stops the actors; pending work stays
// in the journal for the next start. After Drain nothing is in flight.
func (s *System) Stop() {
	s.cancel()
	f := s.sys.Root.StopFuture(s.sup)
	_ = f.Wait()
	s.sys.Shutdown()
}
