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
