package journal

import (
	"sync"
	"testing"

	"github.com/ledgermail/ledgermail/events"
)

// benchAppend measures fsynced appends of one ~300-byte event from the given
// number of concurrent writers; b.N events in total.
func benchAppend(b *testing.B, writers int) {
	j, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	ev := events.Event{Envelope: "0123456789ABCDEF0123", Payload: events.Attempted{
		Attempt: 1, Host: "mx1.example.test:25", TLS: "TLS1.3",
		Results: []events.RcptResult{{Recipient: "someone@example.test", Code: 250, Enhanced: "2.0.0", Message: "Ok: queued as 4XyZ1234abcd on mx1.example.test, thanks for the message"}},
	}}
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N / writers
	extra := b.N % writers
	for w := 0; w < writers; w++ {
		n := per
		if w < extra {
			n++
		}
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if _, err := j.Append(Write{Events: []events.Event{ev}}); err != nil {
					b.Error(err)
					return
				}
			}
		}(n)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkAppend1Writer(b *testing.B)   { benchAppend(b, 1) }
func BenchmarkAppend64Writers(b *testing.B) { benchAppend(b, 64) }
