package lifecycle

import (
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

func fold(evs ...events.Event) map[string]*Envelope {
	set := map[string]*Envelope{}
	for i, e := range evs {
		e.Seq = uint64(i + 1)
		Fold(set, e)
	}
	return set
}

// Final states absorb every later event.
func TestFinalStatesAbsorb(t *testing.T) {
	rcv := events.Event{Envelope: "E", Payload: events.Received{Sender: "a@x", Recipients: []string{"b@y"}}}
	split := events.Event{Envelope: "E", Payload: events.Split{Children: []events.Child{{ID: "E.1", Recipients: []string{"b@y"}}}}}
	start := events.Event{Envelope: "E.1", Payload: events.AttemptStarted{Attempt: 1, Recipients: []string{"b@y"}}}
	del := events.Event{Envelope: "E.1", Payload: events.Deleted{}}
	att := events.Event{Envelope: "E.1", Payload: events.Attempted{Attempt: 1, Results: []events.RcptResult{{Recipient: "b@y", Code: 451, Message: "later"}}}}
	def := events.Event{Envelope: "E.1", Payload: events.Deferred{Recipients: []string{"b@y"}, NextAttempt: time.Now(), Reason: "later"}}
	set := fold(rcv, split, start, del, att, def)
	if e := set["E.1"]; e.State != StateDeleted || e.LastError != "" {
		t.Fatalf("after Deleted, Attempted, Deferred: %+v", e)
	}
	for _, final := range []events.Payload{events.Delivered{Recipients: []string{"b@y"}}, events.Bounced{Recipients: []string{"b@y"}}, events.Expired{}, events.Lost{}} {
		set := fold(rcv, split, start, events.Event{Envelope: "E.1", Payload: final}, def,
			events.Event{Envelope: "E.1", Payload: events.AttemptStarted{Attempt: 2}})
		if e := set["E.1"]; e.State.Live() || e.Attempts != 1 {
			t.Errorf("after %s then Deferred and AttemptStarted: %+v", final.EventType(), e)
		}
	}
	// A split parent takes no delivery events.
	set = fold(rcv, split, events.Event{Envelope: "E", Payload: def.Payload})
	if set["E"].State != StateSplit {
		t.Fatalf("split parent became %s", set["E"].State)
	}
}

func TestAllowed(t *testing.T) {
	for _, c := range []struct {
		from State
		t    events.Type
		want bool
	}{
		{"", events.TypeReceived, true},
		{"", events.TypeDelivered, false},
		{StateReceived, events.TypeSplit, true},
		{StateReceived, events.TypeAttemptStarted, false},
		{StateDeferred, events.TypeAttemptStarted, true},
		{StateDeleted, events.TypeDeferred, false},
		{StateDelivered, events.TypeAttempted, false},
	} {
		if got := Allowed(c.from, c.t); got != c.want {
			t.Errorf("Allowed(%q, %s) = %v", c.from, c.t, got)
		}
	}
}
