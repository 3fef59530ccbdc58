package scaleout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/cluster"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/ledgermail/ledgermail/mxrelay"
)

// destinationKind is the grain kind that owns one destination domain's
// limits; its identity is the domain.
const destinationKind = "destination"

// leaseReq is what a node asks a destination grain.
type leaseReq struct {
	Op     string        `json:"op"` // acquire, renew, release, message
	Domain string        `json:"domain"`
	Node   string        `json:"node"`
	Lease  string        `json:"lease,omitempty"`
	Limit  int           `json:"limit,omitempty"` // max_connections
	Rate   float64       `json:"rate,omitempty"`  // messages per second; 0: none
	TTL    time.Duration `json:"ttl"`
}

// leaseResp is a grain's answer.
type leaseResp struct {
	Granted bool          `json:"granted"`
	Lease   string        `json:"lease,omitempty"`
	Retry   time.Duration `json:"retry,omitempty"` // ask again after this
	Reason  string        `json:"reason,omitempty"`
	// Yield, on a renewal, asks the holder to close the connection once it
	// is idle: another node waits for one.
	Yield bool `json:"yield,omitempty"`
}

// grain owns one destination's connection leases and rate budget for the
// whole cluster.
type grain struct {
	n *Node // nil in unit tests
	// warmUntil: no new lease before it (an activation that could not
	// learn every lease its predecessor granted).
	warmUntil time.Time
	leases    map[string]grantInfo
	lim       *rate.Limiter
	rate      float64
	// waiting are acquires held until a lease is given back, first come
	// first served, each answered "ask again" at its deadline at the latest.
	waiting []waiter
}

type waiter struct {
	to    *actor.PID
	req   leaseReq
	until time.Time
}

// holdBusy is how long an acquire waits at the grain for a lease to come
// back (under the node's 2 s request timeout).
const holdBusy = time.Second

type grantInfo struct {
	node    string
	expires time.Time
	yield   bool // its node was asked to give it back
}

// holder is the node a lease was granted to (a lease ID begins with it; a
// lease adopted in a census has no recorded node).
func (l grantInfo) holder(id string) string {
	if l.node != "" {
		return l.node
	}
	if i := strings.LastIndexByte(id, '-'); i > 0 {
		return id[:i]
	}
	return id
}

func newGrain(n *Node) *grain { return &grain{n: n, leases: map[string]grantInfo{}} }

// grainIdle is how long a grain with no lease out waits for a request
// before it stops (a grain per domain ever contacted would add up).
const grainIdle = 5 * time.Minute

func (g *grain) Receive(c actor.Context) {
	switch c.Message().(type) {
	case *actor.Started:
		if ci := cluster.GetClusterIdentity(c); ci != nil && g.n != nil {
			g.census(ci.Identity, time.Now())
		}
		c.SetReceiveTimeout(grainIdle)
		return
	case *actor.ReceiveTimeout:
		g.expire(time.Now())
		if len(g.leases) == 0 {
			c.Stop(c.Self())
		}
		return
	}
	var req leaseReq
	if _, ok := op(c.Message()); !ok || unwrap(c.Message(), &req) != nil {
		return
	}
	now := time.Now()
	if req.Op == "wake" {
		g.serveWaiters(c, now)
		return
	}
	res := g.handle(req, now)
	if req.Op == "acquire" && !res.Granted && res.Retry == retryBusy && c.Sender() != nil {
		// Full: hold the request until a lease comes back.
		g.waiting = append(g.waiting, waiter{to: c.Sender(), req: req, until: now.Add(holdBusy)})
		self, root := c.Self(), c.ActorSystem().Root
		time.AfterFunc(holdBusy, func() { root.Send(self, wrap(leaseReq{Op: "wake"})) })
		g.rebalance(req.Limit)
	} else {
		c.Respond(wrap(res))
	}
	g.serveWaiters(c, now)
}

// serveWaiters grants held acquires while leases are free, and tells those
// past their deadline to ask again.
func (g *grain) serveWaiters(c actor.Context, now time.Time) {
	g.expire(now)
	keep := g.waiting[:0]
	for _, w := range g.waiting {
		switch {
		case !now.Before(w.until):
			c.Send(w.to, wrap(leaseResp{Retry: time.Millisecond, Reason: fmt.Sprintf("all %d connections of the cluster are in use", w.req.Limit)}))
		case len(g.leases) < w.req.Limit && !now.Before(g.warmUntil):
			c.Send(w.to, wrap(g.handle(w.req, now)))
		default:
			keep = append(keep, w)
		}
	}
	g.waiting = keep
}

// share is each interested node's fair part of limit connections while
// acquires wait: the nodes holding leases and those waiting for one split
// the limit evenly (at least one each).
func (g *grain) share(limit int) int {
	nodes := map[string]bool{}
	for id, l := range g.leases {
		nodes[l.holder(id)] = true
	}
	for _, w := range g.waiting {
		nodes[w.req.Node] = true
	}
	if len(nodes) == 0 {
		return limit
	}
	return max(1, limit/len(nodes))
}

// rebalance asks every node holding more than its share, while another
// waits, to give the excess back as soon as those connections are idle:
// without it a busy node would keep every connection until its leases
// are renewed.
func (g *grain) rebalance(limit int) {
	share := g.share(limit)
	excess := map[string][]string{}
	keeps := map[string]int{} // leases each node keeps (not asked back)
	for id, l := range g.leases {
		if !l.yield {
			keeps[l.holder(id)]++
		}
	}
	for id, l := range g.leases {
		h := l.holder(id)
		if l.yield || keeps[h] <= share {
			continue
		}
		keeps[h]--
		l.yield = true
		g.leases[id] = l
		excess[h] = append(excess[h], id)
	}
	if g.n == nil {
		return
	}
	for node, ids := range excess {
		g.n.yieldLeases(node, ids)
	}
}

// retryBusy is when a node asks again after all connections were taken.
const retryBusy = 100 * time.Millisecond

// census asks every member which leases of domain it holds, so that a new
// activation (the first, or after the grain moved or its node died) knows
// its predecessor's leases. If a member does not answer, the grant of new
// leases waits one TTL, in which every lease still held is renewed and
// adopted.
func (g *grain) census(domain string, now time.Time) {
	held, complete := g.n.heldEverywhere(domain)
	for _, id := range held {
		g.leases[id] = grantInfo{expires: now.Add(g.n.o.LeaseTTL)}
	}
	if !complete {
		g.warmUntil = now.Add(g.n.o.LeaseTTL)
		g.n.o.Log.Info("destination grain activated without word from every member: no new lease for one TTL",
			zap.String("domain", domain), zap.Int("leases_adopted", len(held)))
	}
}

func (g *grain) expire(now time.Time) {
	for id, l := range g.leases {
		if !now.Before(l.expires) {
			delete(g.leases, id)
		}
	}
}

func (g *grain) handle(req leaseReq, now time.Time) leaseResp {
	g.expire(now)
	switch req.Op {
	case "acquire":
		if now.Before(g.warmUntil) {
			return leaseResp{Retry: g.warmUntil.Sub(now), Reason: "the destination's grain has just been activated"}
		}
		if len(g.leases) >= req.Limit {
			return leaseResp{Retry: retryBusy, Reason: fmt.Sprintf("all %d connections of the cluster are in use", req.Limit)}
		}
		id := newLeaseID(req.Node)
		g.leases[id] = grantInfo{node: req.Node, expires: now.Add(req.TTL)}
		return leaseResp{Granted: true, Lease: id}
	case "renew":
		if _, ok := g.leases[req.Lease]; !ok && len(g.leases) >= req.Limit {
			return leaseResp{Reason: "lease expired and the limit is reached"}
		}
		g.leases[req.Lease] = grantInfo{node: req.Node, expires: now.Add(req.TTL), yield: g.leases[req.Lease].yield}
		if len(g.waiting) > 0 {
			g.rebalance(req.Limit)
		}
		// Its node holds more than its share while others wait: the
		// connection makes way once idle.
		return leaseResp{Granted: true, Lease: req.Lease, Yield: g.leases[req.Lease].yield}
	case "release":
		delete(g.leases, req.Lease)
		return leaseResp{Granted: true}
	case "message":
		if req.Rate <= 0 {
			return leaseResp{Granted: true}
		}
		if g.lim == nil || g.rate != req.Rate {
			g.lim, g.rate = rate.NewLimiter(rate.Limit(req.Rate), 1), req.Rate
		}
		if g.lim.AllowN(now, 1) {
			return leaseResp{Granted: true}
		}
		r := g.lim.ReserveN(now, 1)
		d := r.DelayFrom(now)
		r.CancelAt(now)
		return leaseResp{Retry: d, Reason: "the cluster's rate budget is spent"}
	}
	return leaseResp{Reason: "unknown request " + req.Op}
}

func newLeaseID(node string) string {
	var b [8]byte
	rand.Read(b[:])
	return node + "-" + hex.EncodeToString(b[:])
}

// Gate returns the gate of one destination domain for its connection pool:
// connection leases of at most limit connections and, when perSecond > 0,
// a rate budget, both cluster-wide.
func (n *Node) Gate(domain string, limit int, perSecond float64) mxrelay.Gate {
	return &gate{n: n, domain: domain, limit: limit, rate: perSecond}
}

type gate struct {
	n      *Node
	domain string
	limit  int
	rate   float64
}

// ask sends one request to the domain's grain.
func (g *gate) ask(req leaseReq) (leaseResp, error) {
	req.Domain, req.Node, req.Limit, req.Rate, req.TTL = g.domain, g.n.o.Name, g.limit, g.rate, g.n.o.LeaseTTL
	res, err := g.n.c.Request(g.domain, destinationKind, wrap(req), cluster.WithTimeout(2*time.Second))
	if err != nil {
		return leaseResp{}, err
	}
	if res == nil {
		return leaseResp{}, errors.New("no answer from the destination's grain")
	}
	var out leaseResp
	return out, unwrap(res, &out)
}

// wait asks with req until it is granted, the node works alone (granted
// locally), or ctx ends.
func (g *gate) wait(ctx context.Context, req leaseReq) (leaseResp, bool, error) {
	var last string
	for {
		if g.n.alone() {
			return leaseResp{}, false, nil
		}
		retry := retryBusy
		if g.n.Clustered() {
			res, err := g.ask(req)
			switch {
			case err != nil:
				last = err.Error()
			case res.Granted:
				return res, true, nil
			default:
				last = res.Reason
				if res.Retry > 0 {
					retry = res.Retry
				}
			}
		} else {
			last = "not yet a member of the cluster"
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return leaseResp{}, false, fmt.Errorf("%s: %w", last, ctx.Err())
		case <-t.C:
		}
	}
}

func (g *gate) Connection(ctx context.Context) (mxrelay.Lease, error) {
	res, clustered, err := g.wait(ctx, leaseReq{Op: "acquire"})
	if err != nil {
		return nil, err
	}
	if !clustered {
		return localLease{}, nil
	}
	l := &lease{g: g, id: res.Lease, done: make(chan struct{})}
	l.extend(time.Now())
	g.n.hold(g.domain, l.id, l)
	go l.keep()
	return l, nil
}

func (g *gate) Message(ctx context.Context) error {
	if g.rate <= 0 {
		return nil
	}
	_, _, err := g.wait(ctx, leaseReq{Op: "message"})
	return err
}

// localLease is what a node that works alone uses: its own limits apply.
type localLease struct{}

func (localLease) Valid() bool { return true }
func (localLease) Release()    {}

// lease is one connection lease from a grain, renewed in the background
// every third of its TTL until released; Valid turns false once a renewal
// was refused or it ran out.
type lease struct {
	g       *gate
	id      string
	mu      sync.Mutex
	expires time.Time
	revoked bool
	yield   bool
	onYield []func()
	once    sync.Once
	done    chan struct{}
}

func (l *lease) extend(now time.Time) {
	l.mu.Lock()
	l.expires = now.Add(l.g.n.o.LeaseTTL)
	l.mu.Unlock()
}

func (l *lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.revoked && !l.yield && time.Now().Before(l.expires)
}

// OnYield registers fn to run when the grain asks for the connection back
// (another node waits): the pool closes the connection if it is idle.
func (l *lease) OnYield(fn func()) {
	l.mu.Lock()
	y := l.yield
	if !y {
		l.onYield = append(l.onYield, fn)
	}
	l.mu.Unlock()
	if y {
		go fn() // the caller may hold the pool's lock
	}
}

// giveBack makes the lease invalid for reuse: its connection closes once
// idle (at once if it is idle in the pool), and the lease goes back.
func (l *lease) giveBack() {
	l.mu.Lock()
	l.yield = true
	fns := l.onYield
	l.onYield = nil
	l.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

func (l *lease) keep() {
	t := time.NewTicker(l.g.n.o.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		now := time.Now()
		res, err := l.g.ask(leaseReq{Op: "renew", Lease: l.id})
		switch {
		case err != nil:
			l.g.n.o.Log.Debug("connection lease not renewed", zap.String("domain", l.g.domain), zap.Error(err))
		case res.Granted:
			l.extend(now)
			if res.Yield {
				l.giveBack()
			}
		default:
			l.mu.Lock()
			l.revoked = true
			l.mu.Unlock()
			l.g.n.o.Log.Info("connection lease revoked", zap.String("domain", l.g.domain), zap.String("reason", res.Reason))
			return
		}
	}
}

// Release gives the lease back (once), after its connection closed.
func (l *lease) Release() {
	l.once.Do(func() {
		l.g.n.hold(l.g.domain, l.id, nil)
		close(l.done)
		l.mu.Lock()
		l.revoked = true
		l.mu.Unlock()
		// In the background: the connection is closed already, and a lease
		// not given back only keeps its slot until it expires.
		go func() {
			if _, err := l.g.ask(leaseReq{Op: "release", Lease: l.id}); err != nil {
				l.g.n.o.Log.Debug("connection lease not released (it expires)", zap.String("domain", l.g.domain), zap.Error(err))
			}
		}()
	})
}

// hold records l, a lease this node holds (nil: forgets it), for a new
// grain's census and for a grain asking for leases back.
func (n *Node) hold(domain, id string, l *lease) {
	n.hmu.Lock()
	defer n.hmu.Unlock()
	if l != nil {
		if n.held[domain] == nil {
			n.held[domain] = map[string]*lease{}
		}
		n.held[domain][id] = l
		return
	}
	delete(n.held[domain], id)
	if len(n.held[domain]) == 0 {
		delete(n.held, domain)
	}
}

type yieldReq struct {
	Op     string   `json:"op"` // "yield"
	Leases []string `json:"leases"`
}

// yieldLeases asks node (this one or a peer) to give leases of domain back
// once their connections are idle; it does not wait for an answer.
func (n *Node) yieldLeases(node string, ids []string) {
	if node == n.o.Name {
		go n.yieldHere(ids)
		return
	}
	addr, ok := n.Peers()[node]
	if !ok {
		return // gone: its leases expire
	}
	n.sys.Root.Send(actor.NewPID(addr, nodeActor), wrap(yieldReq{Op: "yield", Leases: ids}))
}

// yieldHere gives back the leases named, those this node still holds.
func (n *Node) yieldHere(ids []string) {
	var ls []*lease
	n.hmu.Lock()
	for _, byID := range n.held {
		for _, id := range ids {
			if l := byID[id]; l != nil {
				ls = append(ls, l)
			}
		}
	}
	n.hmu.Unlock()
	for _, l := range ls {
		l.giveBack()
	}
}

// heldHere returns the leases of domain this node holds.
func (n *Node) heldHere(domain string) []string {
	n.hmu.Lock()
	defer n.hmu.Unlock()
	out := make([]string, 0, len(n.held[domain]))
	for id := range n.held[domain] {
		out = append(out, id)
	}
	return out
}

type heldReq struct {
	Op     string `json:"op"` // "held"
	Domain string `json:"domain"`
}

type heldReply struct {
	Leases []string `json:"leases"`
}

// heldEverywhere asks every member for its leases of domain; complete is
// false when one did not answer within a second.
func (n *Node) heldEverywhere(domain string) (leases []string, complete bool) {
	members := n.topology()
	var mu sync.Mutex
	var wg sync.WaitGroup
	complete = true
	for _, m := range members {
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			var r heldReply
			err := n.askPeer(addr, heldReq{Op: "held", Domain: domain}, &r, time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				complete = false
				return
			}
			leases = append(leases, r.Leases...)
		}(m.Address())
	}
	wg.Wait()
	return leases, complete && len(members) > 0
}
