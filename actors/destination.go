package actors

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/ledgermail/ledgermail/mxrelay"
)

// deliverReq asks a destination actor to run one attempt; the result goes
// to replyTo as attemptDone.
type deliverReq struct {
	attempt int
	msg     mxrelay.Message
	replyTo *actor.PID
}

// route asks the supervisor to hand req to the destination actor of key.
type route struct {
	key string
	req deliverReq
}

// attemptFinished tells a destination actor that one of its deliveries ended.
type attemptFinished struct{}

// destIdle tells the supervisor that a destination actor has had nothing to
// do for a while; received is how many requests it has been given. The
// supervisor stops it only if it routed no more than that (none in flight).
type destIdle struct {
	key      string
	received int
}

// destination is the delivery actor of one destination domain. It owns the
// domain's connection pool and runs at most max deliveries at once; the
// rest wait in its mailbox order.
type destination struct {
	o        Options
	ctx      context.Context
	key      string
	sup      *actor.PID
	pool     *mxrelay.Pool
	active   int
	received int
	waiting  []deliverReq
}

func newDestination(o Options, ctx context.Context, key string, sup *actor.PID) *destination {
	var perConn int
	if o.Shaping != nil {
		perConn = o.Shaping(key).MaxMessagesPerConnection
	}
	pool := mxrelay.NewPool(o.IdleTimeout, perConn)
	if o.Gate != nil {
		if g := o.Gate(key); g != nil {
			pool.SetGate(g)
		}
	}
	return &destination{o: o, ctx: ctx, key: key, sup: sup, pool: pool}
}

// destinationIdle is how long a destination actor waits with nothing to do
// before offering to stop (its pool's connections have expired by then).
func destinationIdle(o Options) time.Duration { return 2*o.IdleTimeout + time.Second }

func (d *destination) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case *actor.Started:
		c.SetReceiveTimeout(destinationIdle(d.o))
	case deliverReq:
		d.received++
		d.waiting = append(d.waiting, m)
		d.next(c)
	case attemptFinished:
		d.active--
		d.next(c)
	case *actor.ReceiveTimeout:
		if d.active == 0 && len(d.waiting) == 0 && d.pool.Idle() == 0 {
			c.Send(d.sup, destIdle{key: d.key, received: d.received})
		}
		// protoactor cancels the timeout once it fires: arm it again.
		c.SetReceiveTimeout(destinationIdle(d.o))
	case *actor.Stopping:
		d.pool.Close()
	}
}

func (d *destination) next(c actor.Context) {
	for d.active < d.o.MaxConnectionsPerDomain && len(d.waiting) > 0 {
		req := d.waiting[0]
		d.waiting = d.waiting[1:]
		d.active++
		self, root, ctx, relay, pool := c.Self(), c.ActorSystem().Root, d.ctx, d.o.Relay, d.pool
		go func() {
			start := time.Now()
			res := deliverSafely(ctx, relay, req.msg, pool)
			root.Send(req.replyTo, attemptDone{attempt: req.attempt, res: res, took: time.Since(start)})
			root.Send(self, attemptFinished{})
		}()
	}
}

// deliverSafely runs one delivery; a panic in the relay becomes a
// temporary outcome for every recipient, so the envelope actor always gets
// its result.
func deliverSafely(ctx context.Context, relay mxrelay.Relay, m mxrelay.Message, pool *mxrelay.Pool) (res mxrelay.Result) {
	defer func() {
		if r := recover(); r != nil {
			res = mxrelay.Result{Rcpts: map[string]mxrelay.Outcome{}}
			for _, rc := range m.Recipients {
				res.Rcpts[rc] = mxrelay.TemporaryFailure(fmt.Sprintf("internal error in the relay: %v", r))
			}
		}
	}()
	if err := pool.Admit(ctx); err != nil {
		res = mxrelay.Result{Rcpts: map[string]mxrelay.Outcome{}}
		for _, rc := range m.Recipients {
			res.Rcpts[rc] = mxrelay.TemporaryFailure(err.Error())
		}
		return res
	}
	return relay.Deliver(ctx, m, pool)
}

// destinationKey names the destination of a set of recipients: the domain
// of the first (a split by domain makes them all the same).
func destinationKey(rcpts []string) string {
	if len(rcpts) == 0 {
		return ""
	}
	r := rcpts[0]
	if i := strings.LastIndexByte(r, '@'); i >= 0 {
		return strings.ToLower(r[i+1:])
	}
	return ""
}
