package queue

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// BenchmarkRestart measures what a start-up does before it accepts mail:
// opening the journal, loading the queue snapshot and replaying the tail
// after it. The journal holds RESTART_ENVELOPES deferred envelopes
// (default 20,000), each with the events a dead destination leaves
// (received, policies, split, attempt started, attempted, deferred), and
// a snapshot taken RESTART_TAIL events before its end (default a fifth).
// RESTART_DIR keeps the journal between runs (built when missing); with
// RESTART_CRASH set, the build ends as a kill -9 would (it exits without
// closing the journal): copy the directory before each start.
func BenchmarkRestart(b *testing.B) {
	dir, n := restartJournal(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		j, err := journal.Open(journal.Options{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		opened := time.Since(start)
		q := projections.NewQueue()
		snap, _, err := RebuildUnchecked(j, q, benchLog(), false)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(opened.Seconds(), "open-s")
		b.ReportMetric(float64(j.LastSeq()-snap), "tail-events")
		if q.Len() < n {
			b.Fatalf("%d live envelopes, want %d", q.Len(), n)
		}
		b.StopTimer()
		j.Close()
		b.StartTimer()
	}
}

// restartJournal is BenchmarkRestart's journal (see there), and how many
// envelopes it holds.
func restartJournal(b *testing.B) (dir string, n int) {
	n = envInt("RESTART_ENVELOPES", 20000)
	tail := envInt("RESTART_TAIL", n/5*6)
	if dir = os.Getenv("RESTART_DIR"); dir == "" {
		dir = b.TempDir()
	}
	if _, err := os.Stat(dir + "/built"); err != nil {
		buildDeferredJournal(b, dir, n, tail)
	}
	return dir, n
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// buildDeferredJournal appends n deferred envelopes' events to a journal
// in dir, with a queue snapshot tail events before the end.
func buildDeferredJournal(b *testing.B, dir string, n, tail int) {
	j, err := journal.Open(journal.Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	q := projections.NewQueue()
	j.Subscribe(q.Apply)
	const perWrite = 500
	body := make([]byte, 512)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	next := time.Now().Add(30 * 24 * time.Hour) // not due while the benchmarks run
	snapped := false
	for k := 0; k < n; k += perWrite {
		var w journal.Write
		for i := k; i < min(k+perWrite, n); i++ {
			id := fmt.Sprintf("01A20FC4916BCB%06X", i)
			child := id + ".1"
			w.Bodies = append(w.Bodies, journal.Body{Key: id, Data: body})
			w.Events = append(w.Events,
				events.Event{Envelope: id, Payload: events.Received{
					Sender: "a@src.test", Recipients: []string{"b@dest.test"}, BodyKey: id, BodySHA256: journal.BodySum(body), Size: int64(len(body)),
					Listener: "submission/127.0.0.1:2587", ClientAddr: "127.0.0.1:55555", Helo: "client.example.test"}},
				events.Event{Envelope: id, Payload: events.PoliciesApplied{Policies: []string{"received", "message-id", "date"},
					Prepend: "Received: from client.example.test (localhost [127.0.0.1])\r\n\tby mta.example.test with ESMTP id " + id + "\r\n\tfor <b@dest.test>; Wed, 2 Dec 2026 16:49:38 +0000\r\n", Recipients: []string{"b@dest.test"}}},
				events.Event{Envelope: id, Payload: events.Split{Mode: "domain", Children: []events.Child{{ID: child, Recipients: []string{"b@dest.test"}}}}},
				events.Event{Envelope: child, Payload: events.AttemptStarted{Attempt: 1, Recipients: []string{"b@dest.test"}}},
				events.Event{Envelope: child, Payload: events.Attempted{Attempt: 1, Results: []events.RcptResult{{Recipient: "b@dest.test", Code: 451, Enhanced: "4.4.1",
					Message: "connect to 127.0.0.1:23925: connection refused", Temporary: true}}, Seconds: 0.0004}},
				events.Event{Envelope: child, Payload: events.Deferred{Recipients: []string{"b@dest.test"}, NextAttempt: next,
					Reason: "connect to 127.0.0.1:23925: connection refused"}},
			)
		}
		if _, err := j.Append(w); err != nil {
			b.Fatal(err)
		}
		if !snapped && int(j.LastSeq()) >= 6*n-tail {
			SaveSnapshot(j, q, zap.NewNop())
			snapped = true
		}
	}
	crash := os.Getenv("RESTART_CRASH") != ""
	if !crash {
		if err := j.Close(); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(dir+"/built", nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if crash {
		// As a kill -9 leaves it: what Pebble holds in memory is lost,
		// the log it is re-indexed from is durable.
		os.Exit(0)
	}
}

// benchLog logs to stderr with RESTART_LOG set.
func benchLog() *zap.Logger {
	if os.Getenv("RESTART_LOG") == "" {
		return zap.NewNop()
	}
	l, _ := zap.NewDevelopment()
	return l
}

// BenchmarkHistoryCheck runs the check of the records under the snapshot
// that start-up runs once it accepts mail, on BenchmarkRestart's journal,
// and reports how much the process's anonymous memory grew meanwhile.
func BenchmarkHistoryCheck(b *testing.B) {
	dir, _ := restartJournal(b)
	j, err := journal.Open(journal.Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	seq, _, err := j.Snapshot(SnapshotName)
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	debug.FreeOSMemory()
	before := rssAnon()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := j.VerifyUntil(seq, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rssAnon()-before)/(1<<20), "MiB-anon-growth")
}

// rssAnon is the process's anonymous resident memory.
func rssAnon() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssAnon:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
