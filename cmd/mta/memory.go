package main

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// applyMemoryLimit sets the Go runtime's soft memory limit to [limits]
// memory_limit when it is not 0 (0 leaves the runtime's own, which
// GOMEMLIMIT sets), and returns the limit in force (0: none). Above it the
// collector works harder; it is a soft bound, not an allocation failure.
func applyMemoryLimit(limit int64) int64 {
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	if cur := debug.SetMemoryLimit(-1); cur != math.MaxInt64 {
		return cur
	}
	return 0
}

// idleTrim gives the heap's headroom back to the system once the server
// falls quiet after activity: the Go runtime lets the heap grow to twice
// what is live before it collects, and, idle, it does not collect again for
// minutes, so after a burst a large queue would hold about twice its
// memory. On each tick, when the journal's last sequence moved before the
// previous tick and not since, the heap is trimmed once
// (debug.FreeOSMemory: a collection, then the free pages returned). A busy
// server is not touched.
type idleTrim struct {
	last uint64
	busy bool
}

// observe takes the journal's last sequence at a tick and says whether to
// trim now.
func (t *idleTrim) observe(seq uint64) bool {
	moved := seq != t.last
	t.last = seq
	if moved {
		t.busy = true
		return false
	}
	trim := t.busy
	t.busy = false
	return trim
}

// trimWorth says whether a trim would give back enough to pay for its
// collection (a whole one: about a second of CPU at a million queued
// envelopes): what the heap holds beyond what was live at the last
// collection (garbage since, and free pages not yet returned) is a
// quarter of that live heap, and 16 MiB, at least. A server that falls
// quiet often after a little mail is not collected each time.
func trimWorth() bool {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			return true
		}
	}
	live, objects, free := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	extra := free
	if objects > live {
		extra += objects - live
	}
	return extra >= max(live/4, 16<<20)
}

// trimIfWorth trims the heap (debug.FreeOSMemory) when trimWorth says so.
func trimIfWorth() {
	if trimWorth() {
		debug.FreeOSMemory()
	}
}

// trimWhenIdle runs the idle trim every period until stop is closed.
func trimWhenIdle(seq func() uint64, period time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	t := idleTrim{last: seq()}
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			if t.observe(seq()) {
				trimIfWorth()
			}
		}
	}
}
