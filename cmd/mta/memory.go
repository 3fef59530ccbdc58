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
				debug.FreeOSMemory()
			}
		}
	}
}

// collect runs a full collection, gives the free memory back to the
// system (debug.FreeOSMemory) and returns the live heap it found.
func collect() uint64 {
	debug.FreeOSMemory()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindUint64 {
		return sample[0].Value.Uint64()
	}
	return 0
}

// boundedWhile runs fn with the heap held near live, the live heap when it
// starts (measured by collect: start-up decodes the queue with the
// collector off, so the runtime's own figure from its last collection
// would be far below it, and a limit under the live heap makes the
// collector run without pause): a soft memory limit of live plus a half
// (at least 256 MiB: the limit counts all of the runtime's memory) while
// fn runs, the limit in force before (memory_limit) after, and never above
// it. The history check reads millions of records after start-up; each
// allocates a little, and the collector would otherwise let the heap grow
// to twice the queue before it collects (about 950 MiB for a few seconds
// at a million queued envelopes). The collections this costs run in the
// background, off the path to the first 250.
func boundedWhile(live uint64, fn func()) {
	prev := debug.SetMemoryLimit(-1)
	limit := int64(live + max(live/2, 256<<20))
	if limit < prev {
		debug.SetMemoryLimit(limit)
		defer debug.SetMemoryLimit(prev)
	}
	fn()
}
