package queue

import (
	"runtime/debug"
	"runtime/metrics"
)

// Collect runs a full collection, gives the free memory back to the
// system (debug.FreeOSMemory) and returns the live heap it found.
func Collect() uint64 {
	debug.FreeOSMemory()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindUint64 {
		return sample[0].Value.Uint64()
	}
	return 0
}

// BoundedWhile runs fn with the process's memory held near live, the live
// heap when it starts: a soft memory limit of live plus a half (64 MiB at
// least: the limit counts all of the runtime's memory) while fn runs, the
// limit in force before ([limits] memory_limit) after, and never above
// it. live must be measured, not taken from the runtime's last
// collection: start-up decodes the queue with the collector off, so that
// figure would be far below it, and a limit under the live heap makes the
// collector run without pause.
//
// Start-up's history check runs while the server accepts mail; what the
// server allocates meanwhile would otherwise let the heap grow to twice the
// queue before the collector runs (about 950 MiB at a million queued
// envelopes, when the check still allocated a frame per read).
func BoundedWhile(live uint64, fn func()) {
	prev := debug.SetMemoryLimit(-1)
	limit := int64(live + max(live/2, 64<<20))
	if limit < prev {
		debug.SetMemoryLimit(limit)
		defer debug.SetMemoryLimit(prev)
	}
	fn()
}
