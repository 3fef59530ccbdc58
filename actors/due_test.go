package actors

import (
	"container/heap"
	"math"
	"testing"
	"time"
)

// Due times are nanoseconds in the heap: they keep their order, and times
// past what nanoseconds hold are clamped, not wrapped around.
func TestDueHeapOrdersAndClamps(t *testing.T) {
	now := time.Now()
	var h dueHeap
	for id, at := range map[string]time.Time{
		"later": now.Add(time.Hour), "soon": now.Add(time.Second), "past": now.Add(-time.Minute),
		"never": time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), "ancient": time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		heap.Push(&h, dueItem{at: dueAt(at), id: id})
	}
	var got []string
	for h.Len() > 0 {
		got = append(got, heap.Pop(&h).(dueItem).id)
	}
	want := []string{"ancient", "past", "soon", "later", "never"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("popped %v, want %v", got, want)
		}
	}
	if dueAt(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)) != math.MaxInt64 || dueAt(time.Time{}) != math.MinInt64 {
		t.Error("out-of-range times are not clamped")
	}
}
