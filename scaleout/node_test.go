//go:build !race

// protoactor-go's cluster has data races of its own (remote.BlockList
// written by gossip while read, the gossip informer, the etcd provider's
// shutdown flag, grpclog's logger set by remote.Start), so these tests run
// without -race: `make test` runs this package a second time without it
// (race_test.go says so when -race is on).

package scaleout

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/scaleout/etcdtest"
)

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startNode(t *testing.T, name, etcd string, live int) *Node {
	t.Helper()
	n, err := Start(Options{Name: name, Etcd: []string{etcd}, Advertise: freePort(t), LeaseTTL: time.Second,
		Live: func() int { return live }, Log: zaptest.NewLogger(t).Named(name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	return n
}

// waitFor polls cond every 20 ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMembershipAndLeases(t *testing.T) {
	e := etcdtest.Start(t)
	a := startNode(t, "a", e.Endpoint, 3)
	b := startNode(t, "b", e.Endpoint, 5)
	waitFor(t, 15*time.Second, "both nodes see two members", func() bool {
		return a.Clustered() && b.Clustered() && a.memberCount() == 2 && b.memberCount() == 2
	})
	st := a.Status(2 * time.Second)
	got := fmt.Sprint(st.Members)
	if len(st.Members) != 2 || st.Members[0].Name != "a" || st.Members[1].Name != "b" ||
		!st.Members[0].Alive || !st.Members[1].Alive || st.Members[0].LiveEnvelopes != 3 || st.Members[1].LiveEnvelopes != 5 {
		t.Fatalf("status from a: %s", got)
	}
	if peers := b.Peers(); len(peers) != 1 || peers["a"] == "" {
		t.Fatalf("b's peers: %v", peers)
	}

	// Two connections for the whole cluster, both taken by a; then b
	// waits, and a is asked to give back the one above its share.
	ga, gb := a.Gate("slow.test", 2, 0), b.Gate("slow.test", 2, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l1, err := ga.Connection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := ga.Connection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l1.(*lease); !ok {
		t.Fatalf("a cluster member got a %T, not a cluster lease", l1)
	}
	// A grain activated now (moved, or its node died) would learn both.
	if ids, complete := b.heldEverywhere("slow.test"); !complete || len(ids) != 2 {
		t.Fatalf("census of slow.test's leases: %v (complete %v), want 2", ids, complete)
	}
	// Leases outlive their TTL (1 s) while renewed.
	granted := time.Now()
	waitFor(t, 5*time.Second, "1.5 s to pass", func() bool { return time.Since(granted) > 1500*time.Millisecond })
	if !l1.Valid() || !l2.Valid() {
		t.Fatal("renewed leases are no longer valid")
	}
	yielded := make(chan mxrelay.Lease, 2)
	l1.(*lease).OnYield(func() { yielded <- l1 })
	l2.(*lease).OnYield(func() { yielded <- l2 })
	short, cancelShort := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancelShort()
	if l3, err := gb.Connection(short); err == nil {
		t.Fatalf("a third lease of two was granted: %v", l3)
	} else if !strings.Contains(err.Error(), "all 2 connections") {
		t.Fatalf("third lease refused for the wrong reason: %v", err)
	}
	// b waited: a, holding both, was asked for exactly one back (a pool
	// closes its connection once idle).
	var back, kept mxrelay.Lease
	select {
	case back = <-yielded:
	case <-time.After(5 * time.Second):
		t.Fatal("a holder above its share was not asked to yield within 5 s while another node waited")
	}
	kept = l1
	if back == l1 {
		kept = l2
	}
	if back.Valid() {
		t.Fatal("a lease asked to yield is still valid for reuse")
	}
	if !kept.Valid() {
		t.Fatal("a's share (one of two connections) was asked back too")
	}
	got3 := make(chan mxrelay.Lease, 1)
	go func() {
		l, err := gb.Connection(ctx)
		if err != nil {
			t.Error(err)
		}
		got3 <- l
	}()
	back.Release()
	if back.Valid() {
		t.Fatal("a released lease is still valid")
	}
	select {
	case l := <-got3:
		if l == nil || !l.Valid() {
			t.Fatalf("b's lease after one was given back: %v", l)
		}
		l.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("a released lease was not granted to the waiting node within 5 s")
	}
	kept.Release()
}

func TestEtcdUnreachableWorksAlone(t *testing.T) {
	e := etcdtest.Start(t)
	a := startNode(t, "a", e.Endpoint, 0)
	waitFor(t, 15*time.Second, "a joins", a.Clustered)
	e.Stop()
	waitFor(t, 10*time.Second, "a notices etcd is gone", a.alone)
	if r := strings.Join(a.Readiness(), "\n"); !strings.Contains(r, "etcd unreachable") || !strings.Contains(r, "own limits") {
		t.Fatalf("readiness while etcd is down: %q", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := a.Gate("x.test", 1, 0).Connection(ctx)
	if err != nil {
		t.Fatalf("a node without etcd must deliver within its own limits: %v", err)
	}
	if _, ok := l.(localLease); !ok {
		t.Fatalf("got %T, want a local lease", l)
	}
	e.Restart()
	waitFor(t, 15*time.Second, "a sees etcd again", func() bool { return a.Clustered() })
}

func TestGrainRules(t *testing.T) {
	g := newGrain(nil)
	t0 := time.Unix(1000, 0)
	ttl := 10 * time.Second
	g.warmUntil = t0.Add(ttl) // an activation that did not hear from every member
	req := func(op, id string) leaseReq {
		return leaseReq{Op: op, Lease: id, Node: "n", Limit: 2, TTL: ttl}
	}
	// Warm-up: no new lease for one TTL, but renewals are adopted.
	if r := g.handle(req("acquire", ""), t0.Add(time.Second)); r.Granted || r.Retry != 9*time.Second {
		t.Fatalf("acquire during warm-up: %+v", r)
	}
	if r := g.handle(req("renew", "old-1"), t0.Add(2*time.Second)); !r.Granted {
		t.Fatalf("renewal of a predecessor's lease refused: %+v", r)
	}
	now := t0.Add(ttl)
	if r := g.handle(req("acquire", ""), now); !r.Granted {
		t.Fatalf("acquire after warm-up: %+v", r)
	}
	if r := g.handle(req("acquire", ""), now); r.Granted {
		t.Fatalf("third lease of two (one adopted): %+v", r)
	}
	// The adopted lease was renewed at t0+2s: it expires at t0+12s.
	fresh := g.handle(req("acquire", ""), t0.Add(12*time.Second))
	if !fresh.Granted {
		t.Fatalf("an expired lease still counts: %+v", fresh)
	}
	if r := g.handle(req("renew", "unknown"), t0.Add(12*time.Second)); r.Granted {
		t.Fatalf("an unknown lease adopted over the limit: %+v", r)
	}
	// Another node waits (an acquire held at the grain): of n's two
	// leases, one is its share of two nodes; the renewal of the other asks
	// for it back, once and only for that one.
	g.waiting = append(g.waiting, waiter{req: leaseReq{Op: "acquire", Node: "m", Limit: 2, TTL: ttl}, until: t0.Add(13 * time.Second)})
	yielded := 0
	for id := range g.leases {
		r := g.handle(req("renew", id), t0.Add(12500*time.Millisecond))
		if !r.Granted {
			t.Fatalf("renewal while another node waits refused: %+v", r)
		}
		if r.Yield {
			yielded++
		}
	}
	if yielded != 1 {
		t.Fatalf("%d of n's 2 leases asked back while one node waits, want 1 (its share is 1)", yielded)
	}
	g.waiting = nil
	if r := g.handle(req("renew", fresh.Lease), t0.Add(19*time.Second)); !r.Granted || (r.Yield != g.leases[fresh.Lease].yield) {
		t.Fatalf("renewal with nobody waiting: %+v", r)
	}
	// Rate: one message per second.
	m := leaseReq{Op: "message", Rate: 1, TTL: ttl}
	if r := g.handle(m, now); !r.Granted {
		t.Fatalf("first message: %+v", r)
	}
	if r := g.handle(m, now); r.Granted || r.Retry <= 0 || r.Retry > time.Second {
		t.Fatalf("second message in the same instant: %+v", r)
	}
	if r := g.handle(m, now.Add(time.Second)); !r.Granted {
		t.Fatalf("message a second later: %+v", r)
	}
}
