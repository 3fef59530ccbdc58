package actors

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// Turns scheduled one after another reuse the goroutine of the turn
// before; turns that run at once each get one (none waits for another);
// idle goroutines end.
func TestWorkersReuseGoroutines(t *testing.T) {
	w := newWorkers(10, 200*time.Millisecond)
	for i := 0; i < 100; i++ {
		done := make(chan struct{})
		w.Schedule(func() { close(done) })
		<-done
		// The goroutine is back at its wait before the next turn comes
		// (or a new one is started: still far fewer than 100).
		runtime.Gosched()
	}
	if n := w.started.Load(); n > 10 {
		t.Fatalf("100 turns one after another started %d goroutines", n)
	}
	// 50 turns that block until all 50 run: each needs its own goroutine.
	var all sync.WaitGroup
	all.Add(50)
	release := make(chan struct{})
	var done sync.WaitGroup
	done.Add(50)
	for i := 0; i < 50; i++ {
		w.Schedule(func() {
			all.Done()
			<-release
			done.Done()
		})
	}
	all.Wait() // would hang if a turn waited for a busy goroutine
	close(release)
	done.Wait()
	// Idle goroutines end after the idle period.
	deadline := time.Now().Add(5 * time.Second)
	base := runtime.NumGoroutine()
	for runtime.NumGoroutine() > base-45 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base-45 {
		t.Fatalf("%d goroutines still running (%d when the turns ended)", n, base)
	}
}
