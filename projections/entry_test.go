package projections

import (
	"math"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/ledgermail/ledgermail/events"
)

// Every field of an Envelope survives the queue's compact form, in the
// common shapes (body key = parent or own ID, all recipients pending,
// times it holds as nanoseconds) and in the rare ones it keeps aside.
func TestEntryRoundTrip(t *testing.T) {
	if n := reflect.TypeFor[Envelope]().NumField(); n != 16 {
		t.Fatalf("Envelope has %d fields: entry (toEntry, fill) and this test must learn the new ones", n)
	}
	now := time.Unix(1_800_000_000, 123456789)
	recv := &events.Received{Sender: "s@x", Listener: "submission"}
	base := Envelope{ID: "E1.1", Parent: "E1", State: StateDeferred, Sender: "s@x", Recipients: []string{"a@y", "b@y"},
		Pending: []string{"a@y", "b@y"}, Size: 1 << 40, Arrived: now, Attempts: 3, NextAttempt: now.Add(time.Hour),
		LastError: "451 later", Warned: true, BodyKey: "E1", Prepend: "X-Policy: 1\r\n", LastSeq: math.MaxUint64, Received: recv}
	cases := map[string]func(e *Envelope){
		"common":               func(e *Envelope) {},
		"body key is own ID":   func(e *Envelope) { e.BodyKey, e.Parent = e.ID, "" },
		"body key of its own":  func(e *Envelope) { e.BodyKey = "elsewhere" },
		"some pending":         func(e *Envelope) { e.Pending = []string{"b@y"} },
		"none pending":         func(e *Envelope) { e.Pending = nil },
		"unknown state":        func(e *Envelope) { e.State = "from-a-later-version" },
		"zero times":           func(e *Envelope) { e.Arrived, e.NextAttempt = time.Time{}, time.Time{} },
		"the epoch":            func(e *Envelope) { e.Arrived = time.Unix(0, 0) },
		"far future":           func(e *Envelope) { e.NextAttempt = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC) },
		"attempts past int32":  func(e *Envelope) { e.Attempts = math.MaxInt32 + 1 },
		"no details, not warn": func(e *Envelope) { e.Prepend, e.Received, e.Warned = "", nil, false },
		"one recipient":        func(e *Envelope) { e.Recipients, e.Pending = []string{"a@y"}, []string{"a@y"} },
		"no recipients":        func(e *Envelope) { e.Recipients, e.Pending = nil, nil },
		"three, one pending":   func(e *Envelope) { e.Recipients, e.Pending = []string{"a@y", "b@y", "c@z"}, []string{"c@z"} },
		"a NUL in an address":  func(e *Envelope) { e.Recipients, e.Pending = []string{"a\x00b@y", "c@y"}, []string{"c@y"} },
		"an empty address":     func(e *Envelope) { e.Recipients, e.Pending = []string{"", "b@y"}, []string{"", "b@y"} },
		"size in 32 bits":      func(e *Envelope) { e.Size = 4096 },
		"one empty address":    func(e *Envelope) { e.Recipients, e.Pending = []string{""}, []string{""} },
	}
	for name, change := range cases {
		t.Run(name, func(t *testing.T) {
			want := base
			want.Recipients = append([]string(nil), base.Recipients...)
			change(&want)
			var x entry
			toEntry(&want, &x)
			got := x.envelope()
			if !got.Arrived.Equal(want.Arrived) || !got.NextAttempt.Equal(want.NextAttempt) ||
				got.Arrived.IsZero() != want.Arrived.IsZero() || got.NextAttempt.IsZero() != want.NextAttempt.IsZero() {
				t.Errorf("times: got %v, %v; want %v, %v", got.Arrived, got.NextAttempt, want.Arrived, want.NextAttempt)
			}
			got.Arrived, got.NextAttempt = want.Arrived, want.NextAttempt
			if len(got.Pending) == 0 && len(want.Pending) == 0 {
				got.Pending = want.Pending
			}
			if !reflect.DeepEqual(got, &want) {
				t.Errorf("got  %+v\nwant %+v", got, &want)
			}
		})
	}
}

// The common shape costs no more than the entry itself: the one
// recipient is held as its string, pending recipients that are the
// recipients are the same slice, and the entry stays in its 128-byte size
// class.
func TestEntryIsCompact(t *testing.T) {
	if s := unsafe.Sizeof(entry{}); s > 128 {
		t.Errorf("entry is %d bytes, want at most 128", s)
	}
	e := &Envelope{ID: "E1.1", Parent: "E1", BodyKey: "E1", State: StateDeferred, Recipients: []string{"a@y"},
		Pending: []string{"a@y"}, Arrived: time.Now(), NextAttempt: time.Now().Add(time.Hour)}
	var x entry
	toEntry(e, &x)
	if x.more != nil {
		t.Errorf("a deferred child keeps extra details: %+v", *x.more)
	}
	if got := x.envelope(); unsafe.SliceData(got.Pending) != unsafe.SliceData(got.Recipients) {
		t.Error("pending recipients are a copy of the recipients")
	}
}

// Folding an event into an entry keeps its joined recipients when they did
// not change (no new string per event).
func TestEntryKeepsItsRecipients(t *testing.T) {
	e := &Envelope{ID: "E1", BodyKey: "E1", State: StateQueued, Recipients: []string{"a@y", "b@y"}, Pending: []string{"a@y", "b@y"}}
	var x entry
	toEntry(e, &x)
	joined := x.rcpts
	e2 := x.envelope()
	e2.State, e2.Attempts = StateDeferred, 1
	toEntry(e2, &x)
	if unsafe.StringData(x.rcpts) != unsafe.StringData(joined) {
		t.Error("the same recipients were joined again")
	}
	e2.Recipients = []string{"a@y", "c@y"}
	toEntry(e2, &x)
	if got := x.envelope().Recipients; !reflect.DeepEqual(got, []string{"a@y", "c@y"}) {
		t.Errorf("changed recipients read back as %q", got)
	}
}
