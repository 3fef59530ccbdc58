package main

import (
	"math"
	"runtime/debug"
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
