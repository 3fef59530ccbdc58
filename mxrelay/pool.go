package mxrelay

import (
	"sync"
	"time"
)

// Pool keeps open SMTP connections for reuse by the next message to the
// same host, for at most the idle timeout. Its owner (a per-destination
// delivery actor) closes it. It is safe for concurrent use.
type Pool struct {
	idle    time.Duration
	maxUses int // transactions per connection; 0: no limit
	mu      sync.Mutex
	conns   map[string][]*pooled
	closed  bool
	stop    chan struct{}
	started bool
	gate    Gate // nil: no cluster-wide limit
	// waiting counts deliveries in leaseOrIdle; while there are any, put
	// closes back (and makes a new one) to wake them.
	waiting int
	back    chan struct{}
}

type pooled struct {
	c     *client
	tls   string
	since time.Time
	uses  int // transactions run on it
	sec   Security
	lease Lease // released when the connection closes
}

// NewPool returns a pool that keeps connections idle for at most idle; a
// zero idle disables reuse. A connection that has carried maxMessages
// transactions is closed (QUIT) rather than kept ([[relay.destinations]]
// max_messages_per_connection); 0 means no limit.
func NewPool(idle time.Duration, maxMessages int) *Pool {
	return &Pool{idle: idle, maxUses: maxMessages, conns: map[string][]*pooled{}, stop: make(chan struct{}), back: make(chan struct{})}
}

func (p *Pool) get(addr string) *pooled {
	if p == nil || p.idle <= 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.conns[addr]
	for len(list) > 0 {
		pc := list[len(list)-1]
		list = list[:len(list)-1]
		if time.Since(pc.since) < p.idle && pc.lease.Valid() {
			p.conns[addr] = list
			return pc
		}
		go pc.close()
	}
	delete(p.conns, addr)
	return nil
}

// put takes back a connection after a transaction on it.
func (p *Pool) put(addr string, pc *pooled) {
	pc.uses++
	if p == nil || p.idle <= 0 || p.maxUses > 0 && pc.uses >= p.maxUses {
		pc.close()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		go pc.close()
		return
	}
	if !pc.lease.Valid() {
		go pc.close() // the cluster wants the connection back
		return
	}
	pc.since = time.Now()
	p.conns[addr] = append(p.conns[addr], pc)
	if p.waiting > 0 {
		close(p.back)
		p.back = make(chan struct{})
	}
	if y, ok := pc.lease.(yielder); ok {
		y.OnYield(func() { p.evict(addr, pc) })
	}
	if !p.started {
		p.started = true
		go p.janitor()
	}
}

// yielder is a Lease that can ask for its connection back (package
// scaleout: another node waits for one of the destination's connections).
type yielder interface{ OnYield(fn func()) }

// evict closes pc if it is idle in the pool; a connection in use is
// closed when it comes back (its lease is no longer valid).
func (p *Pool) evict(addr string, pc *pooled) {
	p.mu.Lock()
	list := p.conns[addr]
	found := false
	for i, c := range list {
		if c == pc {
			list = append(list[:i], list[i+1:]...)
			found = true
			break
		}
	}
	if found {
		if len(list) == 0 {
			delete(p.conns, addr)
		} else {
			p.conns[addr] = list
		}
	}
	p.mu.Unlock()
	if found {
		pc.close()
	}
}

// Idle returns how many connections wait for reuse.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.conns {
		n += len(l)
	}
	return n
}

// janitor closes connections idle for longer than the timeout; it ends
// when the pool is empty (put starts it again), so an unused pool costs no
// goroutine.
func (p *Pool) janitor() {
	t := time.NewTicker(p.idle / 2)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		if len(p.conns) == 0 {
			p.started = false
			p.mu.Unlock()
			return
		}
		for addr, list := range p.conns {
			keep := list[:0]
			for _, pc := range list {
				if time.Since(pc.since) >= p.idle || !pc.lease.Valid() {
					go pc.close()
				} else {
					keep = append(keep, pc)
				}
			}
			if len(keep) == 0 {
				delete(p.conns, addr)
			} else {
				p.conns[addr] = keep
			}
		}
		p.mu.Unlock()
	}
}

// Close says QUIT on every idle connection and stops reuse.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	all := p.conns
	p.conns = nil
	close(p.stop)
	p.mu.Unlock()
	for _, l := range all {
		for _, pc := range l {
			pc.close()
		}
	}
}

// close says QUIT and then gives the connection's lease back.
func (pc *pooled) close() {
	pc.c.quit()
	pc.lease.Release()
}
