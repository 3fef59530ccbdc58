package journal

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

func openT(t *testing.T, dir string) *Journal {
	t.Helper()
	j, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func delivered(env string, rcpt string) events.Event {
	return events.Event{Envelope: env, Payload: events.Delivered{Recipients: []string{rcpt}}}
}

func collect(t *testing.T, j *Journal, from uint64) []events.Event {
	t.Helper()
	var out []events.Event
	if err := j.Scan(from, func(e events.Event) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAppendReopenIterate(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	var seen []uint64
	j.Subscribe(func(evs []events.Event) {
		for _, e := range evs {
			seen = append(seen, e.Seq)
		}
	})
	evs, err := j.Append(Write{
		Bodies: []Body{{Key: "E1", Data: []byte("body bytes\r\n")}},
		Events: []events.Event{{Envelope: "E1", Payload: events.Received{Sender: "a@x", Recipients: []string{"b@y"}, BodyKey: "E1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Seq != 1 || evs[0].Time.IsZero() || evs[0].Version != events.CurrentVersion {
		t.Fatalf("first event: %+v", evs[0])
	}
	if _, err := j.Append(Write{Events: []events.Event{delivered("E1.1", "b@y"), delivered("E2", "c@z")}}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[1 2 3]" {
		t.Fatalf("subscriber saw %v", seen)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(Write{Events: []events.Event{delivered("E3", "x")}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}

	j = openT(t, dir)
	defer j.Close()
	if j.LastSeq() != 3 {
		t.Fatalf("LastSeq after reopen = %d", j.LastSeq())
	}
	evs, err = j.Append(Write{Events: []events.Event{delivered("E3", "d@w")}})
	if err != nil || evs[0].Seq != 4 {
		t.Fatalf("append after reopen: %v %+v", err, evs)
	}
	all := collect(t, j, 0)
	if len(all) != 4 {
		t.Fatalf("scan: %d events", len(all))
	}
	for i, e := range all {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
	if r, ok := all[0].Payload.(events.Received); !ok || r.Sender != "a@x" {
		t.Fatalf("first payload %#v", all[0].Payload)
	}
	if got := collect(t, j, 3); len(got) != 2 || got[0].Seq != 3 {
		t.Fatalf("scan from 3: %+v", got)
	}
	body, err := j.Body("E1")
	if err != nil || string(body) != "body bytes\r\n" {
		t.Fatalf("body %q %v", body, err)
	}
	if _, err := j.Body("nope"); !errors.Is(err, ErrNoBody) {
		t.Fatalf("missing body: %v", err)
	}
	fam, err := j.EnvelopeEvents("E1", true)
	if err != nil || len(fam) != 2 || fam[1].Envelope != "E1.1" {
		t.Fatalf("family of E1: %+v %v", fam, err)
	}
	own, _ := j.EnvelopeEvents("E1", false)
	if len(own) != 1 {
		t.Fatalf("own events of E1: %+v", own)
	}
	// E1 must not match E10's events.
	if _, err := j.Append(Write{Events: []events.Event{delivered("E10", "q")}}); err != nil {
		t.Fatal(err)
	}
	fam, _ = j.EnvelopeEvents("E1", true)
	if len(fam) != 2 {
		t.Fatalf("E1 family picked up E10: %+v", fam)
	}
	if _, err := j.Append(Write{DropBodies: []string{"E1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Body("E1"); !errors.Is(err, ErrNoBody) {
		t.Fatalf("dropped body still there: %v", err)
	}
}

func TestGroupCommitConcurrentWriters(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	const writers, each = 64, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := j.Append(Write{Events: []events.Event{delivered(fmt.Sprintf("W%d", w), "r")}}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := collect(t, j, 1)
	if len(all) != writers*each {
		t.Fatalf("%d events, want %d", len(all), writers*each)
	}
}

func TestCorruptRecordReportedWithSeq(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	for i := 0; i < 5; i++ {
		if _, err := j.Append(Write{Events: []events.Event{delivered("E", "r")}}); err != nil {
			t.Fatal(err)
		}
	}
	// Flip one byte of record 3 behind the journal's back.
	v, closer, err := j.db.Get(eventKey(3))
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), v...)
	closer.Close()
	bad[20] ^= 0x40
	if err := j.db.Set(eventKey(3), bad, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	var n int
	err = j.Scan(1, func(events.Event) error { n++; return nil })
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Seq != 3 || !strings.Contains(err.Error(), "sequence 3") {
		t.Fatalf("scan error = %v", err)
	}
	if n != 2 {
		t.Fatalf("read %d good records before the corrupt one, want 2", n)
	}
	var reported []uint64
	n = 0
	err = j.ScanTolerant(1, func(events.Event) error { n++; return nil }, func(ce *CorruptError) error {
		reported = append(reported, ce.Seq)
		return nil
	})
	if err != nil || n != 4 || fmt.Sprint(reported) != "[3]" {
		t.Fatalf("tolerant scan: err=%v n=%d reported=%v", err, n, reported)
	}
	// A deleted record is a gap, reported as missing.
	if err := j.db.Delete(eventKey(4), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	reported = nil
	_ = j.ScanTolerant(1, func(events.Event) error { return nil }, func(ce *CorruptError) error {
		reported = append(reported, ce.Seq)
		return nil
	})
	if fmt.Sprint(reported) != "[3 4]" {
		t.Fatalf("reported %v, want [3 4]", reported)
	}
	j.Close()
}

func TestChainBreakDetected(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	for i := 0; i < 3; i++ {
		if _, err := j.Append(Write{Events: []events.Event{delivered("E", "r")}}); err != nil {
			t.Fatal(err)
		}
	}
	// Replace record 2 with a self-consistent record whose chain is wrong.
	payload, _ := events.Marshal(delivered("E", "forged"))
	rec, _ := encodeRecord(2, link{crc: 0xdeadbeef}, payload)
	if err := j.db.Set(eventKey(2), rec, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	err := j.Scan(1, func(events.Event) error { return nil })
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Seq != 2 || !strings.Contains(ce.Reason, "chain") {
		t.Fatalf("got %v", err)
	}
}

func TestUnwritableDirIsClearError(t *testing.T) {
	_, err := Open(Options{Dir: "/proc/ledgermail-test"})
	if err == nil || !strings.Contains(err.Error(), "/proc/ledgermail-test") {
		t.Fatalf("got %v", err)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	defer j.Close()
	_, err := Open(Options{Dir: dir})
	if err == nil {
		t.Fatal("second open succeeded")
	}
}

func TestVerifyWithoutDecoding(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	for i := 0; i < 5; i++ {
		j.Append(Write{Events: []events.Event{delivered("E", "r")}})
	}
	if err := j.Verify(5, nil); err != nil {
		t.Fatal(err)
	}
	if err := j.Verify(9, nil); err == nil {
		t.Fatal("Verify past the end found nothing missing")
	}
	v, closer, _ := j.db.Get(eventKey(2))
	bad := append([]byte(nil), v...)
	closer.Close()
	bad[15] ^= 1
	j.db.Set(eventKey(2), bad, pebble.NoSync)
	var ce *CorruptError
	if err := j.Verify(5, nil); !errors.As(err, &ce) || ce.Seq != 2 {
		t.Fatalf("got %v", err)
	}
	if err := j.Verify(1, nil); err != nil {
		t.Fatalf("record 1 alone: %v", err)
	}
}

// Under load (the last group carried more than one Append), the writer
// waits up to CommitWindow for more before committing: two Appends 20 ms
// apart share one commit.
func TestCommitWindow(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	j, err := Open(Options{Dir: t.TempDir(), CommitWindow: 500 * time.Millisecond, OnCommit: func(_ time.Duration, n int) {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	appendOne := func(env string, wg *sync.WaitGroup) {
		defer wg.Done()
		if _, err := j.Append(Write{Events: []events.Event{delivered(env, "r")}}); err != nil {
			t.Error(err)
		}
	}
	// Two Appends queued while the writer is held: one group of two.
	release := make(chan struct{})
	held := make(chan struct{})
	go j.onWriter(func() error { close(held); <-release; return nil })
	<-held
	var wg sync.WaitGroup
	wg.Add(2)
	go appendOne("A", &wg)
	go appendOne("B", &wg)
	waitUntil(t, func() bool { return len(j.reqs) == 2 })
	close(release)
	wg.Wait()
	// Busy now: C, then D 20 ms later, go in one commit.
	wg.Add(2)
	go appendOne("C", &wg)
	time.Sleep(20 * time.Millisecond) // D comes later, inside the window
	go appendOne("D", &wg)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(sizes) != "[2 2]" {
		t.Fatalf("events per commit %v, want [2 2]", sizes)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
