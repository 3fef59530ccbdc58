package queue

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

const listed = 1_000_000

var (
	bigOnce  sync.Once
	bigQueue *projections.Queue
)

// deferredQueue is a projection holding a million deferred envelopes.
func deferredQueue() *projections.Queue {
	bigOnce.Do(func() {
		q := projections.NewQueue()
		now := time.Now()
		batch := make([]events.Event, 0, 2048)
		seq := uint64(0)
		for i := 0; i < listed; i++ {
			id := fmt.Sprintf("B%019d", i)
			seq++
			batch = append(batch, events.Event{Seq: seq, Envelope: id, Time: now, Payload: events.Received{Sender: "a@example.test", Recipients: []string{"b@dest.test"}, BodyKey: id, Size: 512}})
			seq++
			batch = append(batch, events.Event{Seq: seq, Envelope: id, Time: now, Payload: events.Deferred{Recipients: []string{"b@dest.test"}, NextAttempt: now.Add(time.Hour), Reason: "451 later"}})
			if len(batch) == cap(batch) {
				q.Apply(batch)
				batch = batch[:0]
			}
		}
		q.Apply(batch)
		bigQueue = q
	})
	return bigQueue
}

// BenchmarkAcceptLatencyWhileListing measures what end-of-DATA -> 250
// costs the journal (an fsynced Received append, folded into the live
// projection by the journal's writer) from 16 concurrent sessions while
// `mta queue --json` lists a million queued envelopes: each iteration is
// one listing, with a consistent Snapshot (the read lock held for the whole
// copy) or with List (the lock held one chunk at a time); the sessions
// append all along. Reported: p50, p99 and the worst append during the
// listings.
func BenchmarkAcceptLatencyWhileListing(b *testing.B) {
	q := deferredQueue()
	for _, mode := range []struct {
		name string
		list func() projections.Snapshot
	}{{"Snapshot", q.Snapshot}, {"List", q.List}, {"NoListing", func() projections.Snapshot {
		// The baseline: the same time with nothing listing.
		time.Sleep(5 * time.Second)
		return projections.Snapshot{Envelopes: make([]*projections.Envelope, listed)}
	}}} {
		b.Run(mode.name, func(b *testing.B) {
			j, err := journal.Open(journal.Options{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			j.Subscribe(q.Apply)
			stop := make(chan struct{})
			var mu sync.Mutex
			var lat []time.Duration
			var wg sync.WaitGroup
			var next atomic.Int64
			for s := 0; s < 16; s++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						id := fmt.Sprintf("%s-%d", mode.name, next.Add(1))
						start := time.Now()
						if _, err := j.Append(journal.Write{Bodies: []journal.Body{{Key: id, Data: []byte("Subject: x\r\n\r\nbody\r\n")}},
							Events: []events.Event{{Envelope: id, Payload: events.Received{Sender: "a@x.test", Recipients: []string{"b@y.test"}, BodyKey: id}}}}); err != nil {
							panic(err)
						}
						d := time.Since(start)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				}()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if n := len(mode.list().Envelopes); n < listed {
					b.Fatalf("listed %d", n)
				}
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			sort.Slice(lat, func(a, c int) bool { return lat[a] < lat[c] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
			b.ReportMetric(float64(len(lat))/float64(b.N), "appends/listing")
		})
	}
}
