package mxrelay

import (
	"context"
	"fmt"
	"time"
)

// A Gate grants the right to open connections to one destination beyond
// what this process alone decides: with several nodes in a cluster, the
// destination's connection limit holds across all of them (package
// scaleout). A Pool without a gate opens connections freely; its owner
// bounds them.
type Gate interface {
	// Connection blocks until one more connection may be opened, or ctx
	// ends. The lease must be released when the connection closes.
	Connection(ctx context.Context) (Lease, error)
}

// A Lease is the right to keep one connection open. It is time-limited:
// Valid turns false once it could not be renewed, and a pooled connection
// whose lease is no longer valid is closed rather than reused.
type Lease interface {
	Valid() bool
	Release()
}

// leaseWait bounds how long a delivery waits for a connection lease before
// it ends as a deferral.
const leaseWait = 2 * time.Minute

// SetGate makes every new connection of the pool wait for a lease from g.
// Call it before the pool is used.
func (p *Pool) SetGate(g Gate) { p.gate = g }

// lease takes a connection lease from the pool's gate; without a gate it
// returns a lease that is always valid.
func (p *Pool) lease(ctx context.Context) (Lease, error) {
	if p == nil || p.gate == nil {
		return freeLease{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, leaseWait)
	defer cancel()
	l, err := p.gate.Connection(ctx)
	if err != nil {
		return nil, noLease(err)
	}
	return l, nil
}

// noLease is the error of a delivery that got no connection lease.
func noLease(err error) error { return fmt.Errorf("no connection lease from the cluster: %w", err) }

// leaseOrIdle waits for a connection lease from the pool's gate or for a
// connection to key to come back idle into the pool, whichever comes first:
// a delivery waiting for the cluster must not wait beside an idle
// connection of its own node. Without a gate it returns a free lease at
// once. A lease granted after the wait ended is given back.
func (p *Pool) leaseOrIdle(ctx context.Context, key string) (*pooled, Lease, error) {
	if p == nil || p.gate == nil {
		return nil, freeLease{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, leaseWait)
	type grant struct {
		l   Lease
		err error
	}
	ch := make(chan grant, 1)
	go func() {
		l, err := p.gate.Connection(ctx)
		ch <- grant{l, err}
	}()
	p.mu.Lock()
	p.waiting++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.waiting--
		p.mu.Unlock()
	}()
	for {
		p.mu.Lock()
		back := p.back
		p.mu.Unlock()
		if pc := p.get(key); pc != nil {
			cancel()
			go func() {
				if g := <-ch; g.err == nil {
					g.l.Release()
				}
			}()
			return pc, nil, nil
		}
		select {
		case g := <-ch:
			cancel()
			if g.err != nil {
				return nil, nil, noLease(g.err)
			}
			return nil, g.l, nil
		case <-back:
		}
	}
}

type freeLease struct{}

func (freeLease) Valid() bool { return true }
func (freeLease) Release()    {}

// A RateGate is a Gate that also spends a destination's rate budget across
// the cluster: Message blocks until one more message may be sent, or ctx
// ends.
type RateGate interface {
	Gate
	Message(ctx context.Context) error
}

// Admit waits for the pool's gate to let one more message go, when the
// gate has a rate budget; it returns at once otherwise.
func (p *Pool) Admit(ctx context.Context) error {
	if p == nil {
		return nil
	}
	g, ok := p.gate.(RateGate)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, leaseWait)
	defer cancel()
	if err := g.Message(ctx); err != nil {
		return fmt.Errorf("no rate budget from the cluster: %w", err)
	}
	return nil
}
