package smtpedge

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
)

// chunked reads from b in chunks of random sizes.
type chunked struct {
	b   []byte
	rng *rand.Rand
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.b), 1+c.rng.Intn(7000))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// spoolThrough stores raw through a spool with memory limit memMax and
// returns what the journal holds.
func spoolThrough(t *testing.T, j *journal.Journal, raw []byte, memMax int, seed int64) ([]byte, *Spool, []byte) {
	t.Helper()
	sp := NewSpool(j, NewBodyMemory(0))
	sp.memMax = memMax
	if _, err := sp.ReadFrom(&chunked{b: raw, rng: rand.New(rand.NewSource(seed))}); err != nil {
		t.Fatal(err)
	}
	if sp.Err() != nil {
		t.Fatal(sp.Err())
	}
	header := bytes.Clone(sp.Header())
	key := events.NewID()
	if _, err := j.Append(journal.Write{Bodies: []journal.Body{sp.Body(key)}, Events: []events.Event{{Envelope: key, Payload: events.Received{BodyKey: key}}}}); err != nil {
		t.Fatal(err)
	}
	sp.Release()
	got, err := j.BodyChecked(key, sp.Sum())
	if err != nil {
		t.Fatal(err)
	}
	return got, sp, header
}

// Streaming gives the bytes the whole-message functions give, in memory
// and spilled to a file, whatever the chunking; the SHA-256 and size
// match what is stored.
func TestSpoolMatchesWholeMessage(t *testing.T) {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	long := strings.Repeat("line of text\n", 5000)
	cases := []string{
		"", "x", "Subject: a\r\n\r\nbody", "Subject: a\nno blank line before this\n" + long,
		"Subject: a\r\rbare\rcr\r", "A: b\r\n C: folded\r\nplain text\r\n" + long + "\r",
		"Subject: hi\r\n\r\n" + long + "end\r\n", "no header at all\n" + long,
	}
	for i, c := range cases {
		want := SeparateHeader(NormalizeLineEndings([]byte(c)))
		for _, memMax := range []int{spoolMemMax, 4096} {
			got, sp, header := spoolThrough(t, j, []byte(c), memMax, int64(i))
			if !bytes.Equal(got, want) {
				t.Fatalf("case %d, memMax %d: stored %q…, want %q…", i, memMax, got[:min(len(got), 80)], want[:min(len(want), 80)])
			}
			if sp.Size() != int64(len(want)) || sp.Sum() != journal.BodySum(want) {
				t.Fatalf("case %d: size %d sum %s, want %d", i, sp.Size(), sp.Sum(), len(want))
			}
			if !bytes.Equal(header, policyHeader(want)) && len(policyHeader(want)) < memMax {
				t.Fatalf("case %d: header %q, want %q", i, header, policyHeader(want))
			}
		}
	}
}

func FuzzSpool(f *testing.F) {
	f.Add([]byte("Subject: a\r\n\r\nbody\n.\r\n"), int64(1))
	f.Add([]byte("A: b\rtext\n\rmore"), int64(2))
	dir := f.TempDir()
	j, err := journal.Open(journal.Options{Dir: dir, NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { j.Close() })
	f.Fuzz(func(t *testing.T, raw []byte, seed int64) {
		want := SeparateHeader(NormalizeLineEndings(raw))
		memMax := 1 << 20
		if seed%2 == 0 {
			memMax = 64 // streamed into a file almost at once
		}
		got, _, _ := spoolThrough(t, j, raw, memMax, seed)
		if !bytes.Equal(got, want) {
			t.Fatalf("stored %q, want %q", got, want)
		}
	})
}

// A message that needs body memory when none is free waits, then is
// refused; the memory comes back when a spool is released or discarded.
func TestBodyMemoryBudget(t *testing.T) {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	m := NewBodyMemory(0)
	a := NewSpool(j, m)
	a.ReadFrom(bytes.NewReader(bytes.Repeat([]byte("a"), 60<<10)))
	if a.Err() != nil || m.Used() < 60<<10 {
		t.Fatalf("first spool: %v, %d used", a.Err(), m.Used())
	}
	m.max = m.Used() // nothing left
	b := NewSpool(j, m)
	start := time.Now()
	b.ReadFrom(strings.NewReader("Subject: x\r\n\r\nshort\r\n"))
	if !errors.Is(b.Err(), errNoMemory) || time.Since(start) < bodyMemoryWait/2 {
		t.Fatalf("second spool: %v after %v", b.Err(), time.Since(start))
	}
	b.Discard()
	// Released while another waits: the waiter gets it.
	c := NewSpool(j, m)
	done := make(chan error)
	go func() {
		c.ReadFrom(strings.NewReader("Subject: y\r\n\r\nshort\r\n"))
		done <- c.Err()
	}()
	a.Discard()
	if err := <-done; err != nil {
		t.Fatalf("waiting spool: %v", err)
	}
	c.Discard()
	if m.Used() != 0 {
		t.Fatalf("%d bytes still reserved", m.Used())
	}
	// A big message holds at most spoolMemMax+spoolFileBuf while it streams.
	big := NewSpool(j, NewBodyMemory(0))
	big.ReadFrom(bytes.NewReader(bytes.Repeat([]byte("0123456789\r\n"), 300000)))
	if big.Err() != nil || big.InMemory() != nil || big.reserved != spoolFileBuf {
		t.Fatalf("big spool: %v, reserved %d", big.Err(), big.reserved)
	}
	big.Discard()
}

// A body buffer the journal is done with serves the next messages: each
// stores exactly its own bytes (a shorter one after a longer one, one that
// grows the buffer), nothing of the one before, and the budget is whole.
func TestSpoolRecyclesBodyBuffers(t *testing.T) {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	m := NewBodyMemory(0)
	for i, raw := range []string{
		"Subject: one\r\n\r\n" + strings.Repeat("first message\r\n", 900),
		"Subject: two\r\n\r\nshort\r\n",
		"Subject: three\r\n\r\n" + strings.Repeat("third, larger\r\n", 3000),
		"Subject: four\r\n\r\nx\r\n",
	} {
		sp := NewSpool(j, m)
		if _, err := sp.ReadFrom(strings.NewReader(raw)); err != nil || sp.Err() != nil {
			t.Fatalf("message %d: %v %v", i, err, sp.Err())
		}
		key := events.NewID()
		if _, err := j.Append(journal.Write{Bodies: []journal.Body{sp.Body(key)}, Events: []events.Event{{Envelope: key, Payload: events.Received{BodyKey: key}}}}); err != nil {
			t.Fatal(err)
		}
		sp.Recycle()
		got, err := j.BodyChecked(key, sp.Sum())
		if err != nil || string(got) != raw {
			t.Fatalf("message %d stored as %d bytes (%v), want its own %d", i, len(got), err, len(raw))
		}
	}
	if m.Used() != 0 {
		t.Fatalf("%d bytes still reserved", m.Used())
	}
	if b := m.getBody(spoolStep); len(b) != 0 || cap(b) != spoolStep {
		t.Fatalf("a pooled buffer comes back with length %d, capacity %d", len(b), cap(b))
	}
}
