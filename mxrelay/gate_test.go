package mxrelay

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// slowGate grants a lease only when told to (ignoring ctx, as a grain's
// answer in flight does), and counts the leases given back.
type slowGate struct {
	grant    chan struct{}
	asked    chan struct{}
	released atomic.Int32
}

func (g *slowGate) Connection(ctx context.Context) (Lease, error) {
	g.asked <- struct{}{}
	<-g.grant
	return countedLease{g}, nil
}

type countedLease struct{ g *slowGate }

func (countedLease) Valid() bool { return true }
func (l countedLease) Release()  { l.g.released.Add(1) }

// A delivery that waits for the cluster's lease takes a connection of its
// own that comes back idle meanwhile, and the lease granted later is given
// back rather than held.
func TestLeaseWaitTakesAConnectionComingBackIdle(t *testing.T) {
	g := &slowGate{grant: make(chan struct{}), asked: make(chan struct{}, 1)}
	p := NewPool(time.Minute, 0)
	p.SetGate(g)
	defer p.Close()

	type got struct {
		pc  *pooled
		l   Lease
		err error
	}
	done := make(chan got, 1)
	go func() {
		pc, l, err := p.leaseOrIdle(context.Background(), "mx:25")
		done <- got{pc, l, err}
	}()
	<-g.asked // the wait for the gate has begun
	select {
	case r := <-done:
		t.Fatalf("leaseOrIdle returned before anything was free: %+v", r)
	default:
	}
	want := &pooled{lease: freeLease{}}
	p.put("mx:25", want)
	var r got
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection came back idle, but the delivery still waits for the gate")
	}
	if r.err != nil || r.pc != want || r.l != nil {
		t.Fatalf("got pooled %p lease %v err %v, want the idle connection %p", r.pc, r.l, r.err, want)
	}
	if n := p.Idle(); n != 0 {
		t.Fatalf("the connection taken is still idle in the pool (%d idle)", n)
	}
	close(g.grant) // the grain's grant arrives late
	deadline := time.Now().Add(5 * time.Second)
	for g.released.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the lease granted after the wait ended was not given back")
		}
		time.Sleep(time.Millisecond)
	}
}

// With nothing coming back, the lease from the gate is what the delivery
// gets.
func TestLeaseWaitReturnsTheGatesLease(t *testing.T) {
	g := &slowGate{grant: make(chan struct{}), asked: make(chan struct{}, 1)}
	close(g.grant)
	p := NewPool(time.Minute, 0)
	p.SetGate(g)
	defer p.Close()
	pc, l, err := p.leaseOrIdle(context.Background(), "mx:25")
	if err != nil || pc != nil || l == nil {
		t.Fatalf("got pooled %v lease %v err %v, want the gate's lease", pc, l, err)
	}
	if _, ok := l.(countedLease); !ok {
		t.Fatalf("lease %T is not the gate's", l)
	}
	if n := g.released.Load(); n != 0 {
		t.Fatalf("the lease in use was released %d times", n)
	}
}
