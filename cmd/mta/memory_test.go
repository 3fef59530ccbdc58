package main

import (
	"runtime/debug"
	"testing"
)

// memory_limit reaches the runtime; 0 leaves the runtime's limit alone.
func TestMemoryLimitReachesTheRuntime(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	if got := applyMemoryLimit(96 << 20); got != 96<<20 || debug.SetMemoryLimit(-1) != 96<<20 {
		t.Fatalf("limit in force %d, want %d", got, 96<<20)
	}
	if got := applyMemoryLimit(0); got != 96<<20 {
		t.Fatalf("memory_limit = 0 changed the runtime's limit: %d", got)
	}
}

// The idle trim runs once per quiet spell that follows activity, never
// while the journal moves, never when nothing happened.
func TestIdleTrimRunsOnceAfterActivity(t *testing.T) {
	tr := idleTrim{last: 3}
	for i, c := range []struct {
		seq  uint64
		trim bool
	}{
		{3, false}, {3, false}, // nothing happened
		{5, false}, {9, false}, // busy
		{9, true},              // quiet after activity
		{9, false}, {9, false}, // once only
		{12, false}, {12, true}, // busy, then quiet again
		{12, false},
	} {
		if got := tr.observe(c.seq); got != c.trim {
			t.Fatalf("tick %d (seq %d): trim %v, want %v", i, c.seq, got, c.trim)
		}
	}
}

// A trim is worth its collection only when the heap holds a fair share
// more than what was live: after garbage, yes; right after a trim, no.
// The collector is off meanwhile, so that no collection runs between the
// garbage and the check (it would count the garbage as live).
func TestTrimWorthAfterGarbageOnly(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	debug.FreeOSMemory() // collects even with the collector off
	if trimWorth() {
		t.Fatal("worth a trim right after one")
	}
	var keep [][]byte
	for i := 0; i < 64; i++ {
		keep = append(keep, make([]byte, 1<<20))
	}
	if len(keep) != 64 {
		t.Fatal("allocation")
	}
	keep = nil // 64 MiB of garbage
	if !trimWorth() {
		t.Fatal("not worth a trim with 64 MiB of garbage")
	}
	debug.FreeOSMemory()
	if trimWorth() {
		t.Fatal("worth a trim right after one")
	}
}
