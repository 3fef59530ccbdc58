package queue

import (
	"math"
	"runtime/debug"
	"testing"
)

// While fn runs, a soft limit holds memory near what is live (never above
// memory_limit); after it, the limit in force before is.
func TestBoundedWhileLimitsThenRestores(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	live := Collect()
	if live == 0 {
		t.Fatal("no live heap measured")
	}
	for _, before := range []int64{math.MaxInt64, 1 << 40, 32 << 20} {
		debug.SetMemoryLimit(before)
		var during int64
		BoundedWhile(live, func() { during = debug.SetMemoryLimit(-1) })
		if before > 1<<40 && (during != int64(live+max(live/2, 64<<20))) {
			t.Errorf("no memory_limit: %d during fn, want the live heap %d and a half, 64 MiB at least", during, live)
		}
		if during > before {
			t.Errorf("memory_limit %d: %d during fn", before, during)
		}
		if after := debug.SetMemoryLimit(-1); after != before {
			t.Errorf("memory_limit %d: %d after fn", before, after)
		}
	}
}
