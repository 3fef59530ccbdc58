package projections

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// BenchmarkQueueDeferredMemory measures the live-queue projection's memory
// per deferred envelope (what a large queue costs: deferred envelopes are
// not live actors, only this entry and a (due, ID) heap item).
func BenchmarkQueueDeferredMemory(b *testing.B) {
	const n = 100000
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		q := deferredQueue(n)
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := q.Snapshot().Counts[StateDeferred]; got != n {
			b.Fatalf("%d deferred", got)
		}
		perEnv := float64(after.HeapAlloc-before.HeapAlloc) / n
		b.ReportMetric(perEnv, "B/envelope")
		b.ReportMetric(perEnv*1e6/(1<<20), "MiB/million")
		runtime.KeepAlive(q)
	}
}

// deferredQueue is a live queue of n deferred envelopes, each split from a
// received one, as a dead destination leaves them.
func deferredQueue(n int) *Queue {
	q := NewQueue()
	now := time.Now()
	batch := make([]events.Event, 0, 4)
	for k := 0; k < n; k++ {
		id := fmt.Sprintf("01A20FC4916BCB%06X", k)
		batch = append(batch[:0],
			events.Event{Seq: uint64(4*k + 1), Time: now, Envelope: id, Payload: events.Received{
				Sender: "alice@example.test", Recipients: []string{"bob@dest.test"}, BodyKey: id, Size: 4096,
				Listener: "submission/127.0.0.1:2587", ClientAddr: "127.0.0.1:55555", Helo: "client.example.test",
				TLS: "TLS 1.3 TLS_AES_128_GCM_SHA256", AuthUser: "alice"}},
			events.Event{Seq: uint64(4*k + 2), Time: now, Envelope: id, Payload: events.Split{Mode: "domain",
				Children: []events.Child{{ID: id + ".1", Recipients: []string{"bob@dest.test"}}}}},
			events.Event{Seq: uint64(4*k + 3), Time: now, Envelope: id + ".1", Payload: events.AttemptStarted{Attempt: 1}},
			events.Event{Seq: uint64(4*k + 4), Time: now, Envelope: id + ".1", Payload: events.Deferred{
				Recipients: []string{"bob@dest.test"}, NextAttempt: now.Add(time.Hour), Reason: "connect to 192.0.2.1:25: connection refused"}},
		)
		q.Apply(batch)
	}
	return q
}

// BenchmarkSnapshot200k saves and loads the snapshot of 200,000 deferred
// envelopes, in the binary form and in the gob form of earlier versions.
func BenchmarkSnapshot200k(b *testing.B) {
	q := deferredQueue(200000)
	bin, _, err := q.MarshalSnapshot()
	if err != nil {
		b.Fatal(err)
	}
	g := gobSnapshot(b, q)
	b.Run("marshal-binary", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, _, err := q.MarshalSnapshot(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "bytes")
	})
	b.Run("marshal-gob-with-copy", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			gobSnapshot(b, q)
		}
		b.ReportMetric(float64(len(g)), "bytes")
	})
	for _, c := range []struct {
		name string
		data []byte
	}{{"load-binary", bin}, {"load-gob", g}} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := NewQueue().LoadSnapshot(c.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
