package main

import (
	"math"
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

// While the history check runs, a soft limit holds the heap near what is
// live (never above memory_limit); after it, the limit in force before is.
func TestBoundedWhileLimitsThenRestores(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	for _, before := range []int64{math.MaxInt64, 1 << 40, 32 << 20} {
		debug.SetMemoryLimit(before)
		var during int64
		boundedWhile(collect(), func() { during = debug.SetMemoryLimit(-1) })
		if before > 1<<40 && (during >= before || during < 256<<20) {
			t.Errorf("no memory_limit: %d during the check, want the live heap and 256 MiB at least", during)
		}
		if during > before {
			t.Errorf("memory_limit %d: %d during the check", before, during)
		}
		if after := debug.SetMemoryLimit(-1); after != before {
			t.Errorf("memory_limit %d: %d after the check", before, after)
		}
	}
}
