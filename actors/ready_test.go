package actors

import (
	"fmt"
	"testing"
)

// Destinations are served in turn, and one at its connection limit is
// skipped, not waited for.
func TestReadyQueuesRoundRobinAndLimit(t *testing.T) {
	r := newReadyQueues(2)
	for i := 0; i < 5; i++ {
		r.push("slow.test", fmt.Sprintf("s%d", i))
	}
	r.push("fast.test", "f0")
	r.push("", "root")
	got := startAll(r)
	if fmt.Sprint(got) != "[s0 f0 root s1]" {
		t.Fatalf("order %v, want [s0 f0 root s1]", got)
	}
	if r.len() != 3 {
		t.Fatalf("%d waiting, want 3", r.len())
	}
	r.done("slow.test")
	key, id, ok := r.next()
	if !ok || id != "s2" {
		t.Fatalf("after a slot freed: %q %v", id, ok)
	}
	r.started(key)
	if _, _, ok := r.next(); ok {
		t.Fatal("a destination at its limit was handed out")
	}
}

// A destination's own max_connections overrides the default, and its rate
// budget holds it back (saying when to come back) without blocking others.
func TestReadyQueuesShaping(t *testing.T) {
	r := newReadyQueues(20)
	r.shape = func(key string) Shaping {
		if key == "slow.test" {
			return Shaping{MaxConnections: 1, Rate: 1}
		}
		return Shaping{}
	}
	for i := 0; i < 3; i++ {
		r.push("slow.test", fmt.Sprintf("s%d", i))
		r.push("fast.test", fmt.Sprintf("f%d", i))
	}
	got := startAll(r)
	if fmt.Sprint(got) != "[s0 f0 f1 f2]" {
		t.Fatalf("order %v", got)
	}
	if h := r.held(); fmt.Sprint(h) != "map[s1:connections s2:connections]" {
		t.Fatalf("held at the connection limit: %v", h)
	}
	r.done("slow.test") // a connection is free, but the budget is spent
	if _, _, ok := r.next(); ok || r.wait <= 0 {
		t.Fatalf("over its rate budget: ok %v, wait %s", ok, r.wait)
	}
	if h := r.held(); fmt.Sprint(h) != "map[s1:rate s2:rate]" {
		t.Fatalf("held for the rate budget: %v", h)
	}
	st := r.states()
	if s := st["slow.test"]; s.InFlight != 0 || s.Limit != 1 || s.Rate != 1 || s.Tokens >= 1 {
		t.Fatalf("slow.test's state %+v: want 0 of 1 connections, rate 1/s, budget spent", s)
	}
	if f := st["fast.test"]; f.InFlight != 3 || f.Limit != 20 || f.Rate != 0 {
		t.Fatalf("fast.test's state %+v: want 3 of 20 connections, no rate", f)
	}
}

// startAll takes every envelope the queues hand out now, starting each.
func startAll(r *readyQueues) []string {
	var got []string
	for {
		key, id, ok := r.next()
		if !ok {
			return got
		}
		r.started(key)
		got = append(got, id)
	}
}
