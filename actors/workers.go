package actors

import (
	"sync/atomic"
	"time"
)

// workers is the dispatcher of the envelope and destination actors: it
// runs each mailbox's turn on a goroutine left from an earlier turn when
// one is idle, and on a new one otherwise. protoactor's default starts a
// goroutine per turn, and each grew its stack again through the journal's
// reads (a few percent of the CPU under load went to copying stacks). An
// idle goroutine waits at most idle for another turn, then ends: how many
// wait is at most how many turns ran at once lately.
type workers struct {
	throughput int
	idle       time.Duration
	turns      chan func() // unbuffered: a send succeeds only to a waiting goroutine
	started    atomic.Int64
}

func newWorkers(throughput int, idle time.Duration) *workers {
	return &workers{throughput: throughput, idle: idle, turns: make(chan func())}
}

// Schedule runs fn on a waiting goroutine or a new one; it never blocks.
func (w *workers) Schedule(fn func()) {
	select {
	case w.turns <- fn:
	default:
		w.started.Add(1)
		go w.run(fn)
	}
}

// Throughput is how many messages a mailbox handles per turn.
func (w *workers) Throughput() int { return w.throughput }

func (w *workers) run(fn func()) {
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		fn()
		t.Reset(w.idle)
		select {
		case fn = <-w.turns:
		case <-t.C:
			return
		}
	}
}
