package events

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRoundTripEveryType(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	payloads := []Payload{
		Received{Sender: "a@x.test", Recipients: []string{"b@y.test"}, BodyKey: "K", Size: 12, TLS: "TLS1.3", AuthUser: "alice"},
		PoliciesApplied{Policies: []string{"received"}, Prepend: "Received: x\r\n", Recipients: []string{"b@y.test"}},
		Split{Mode: "domain", Children: []Child{{ID: "K.1", Recipients: []string{"b@y.test"}}}},
		AttemptStarted{Attempt: 1, Recipients: []string{"b@y.test"}},
		Attempted{Attempt: 1, Host: "127.0.0.1:25", Results: []RcptResult{{Recipient: "b@y.test", Code: 451, Enhanced: "4.0.0", Message: "later", Temporary: true}}},
		Deferred{Recipients: []string{"b@y.test"}, NextAttempt: now.Add(time.Minute), Reason: "451"},
		Delivered{Recipients: []string{"b@y.test"}, Host: "h"},
		Bounced{Recipients: []string{"b@y.test"}, Reason: "550 no", DSN: "D"},
		Expired{Recipients: []string{"b@y.test"}, Age: "120h"},
		RetryRequested{By: "operator"},
		Deleted{By: "operator"},
	}
	for _, p := range payloads {
		in := Event{Time: now, Envelope: "ENV", Payload: p}
		b, err := Marshal(in)
		if err != nil {
			t.Fatalf("%s: %v", p.EventType(), err)
		}
		out, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", p.EventType(), err)
		}
		if out.Version != CurrentVersion || out.Envelope != "ENV" || !out.Time.Equal(now) {
			t.Errorf("%s: header mismatch: %+v", p.EventType(), out)
		}
		if !reflect.DeepEqual(out.Payload, p) {
			t.Errorf("%s: payload mismatch:\n got %#v\nwant %#v", p.EventType(), out.Payload, p)
		}
	}
}

// A record written by a future version, with an extra field, still decodes.
func TestReadsNewerVersionWithUnknownFields(t *testing.T) {
	b := []byte(`{"type":"Delivered","v":7,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["r@x"],"future_field":42}}`)
	e, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := e.Payload.(Delivered)
	if !ok || e.Version != 7 || len(d.Recipients) != 1 || d.Recipients[0] != "r@x" {
		t.Fatalf("got %#v", e)
	}
}

// An unknown event type decodes as Raw and re-encodes to the same data.
func TestUnknownTypeIsKeptRaw(t *testing.T) {
	b := []byte(`{"type":"Quarantined","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"why":"x"}}`)
	e, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Type() != "Quarantined" {
		t.Fatalf("type %q", e.Type())
	}
	again, err := Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(again), `"data":{"why":"x"}`) {
		t.Fatalf("raw data lost: %s", again)
	}
	f, err := Fields(e)
	if err != nil || f["why"] != "x" {
		t.Fatalf("fields %v %v", f, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, in := range []string{``, `{`, `{"v":1}`, `{"type":"Delivered","data":{"recipients":5}}`} {
		if _, err := Unmarshal([]byte(in)); err == nil {
			t.Errorf("Unmarshal(%q): no error", in)
		}
	}
	if _, err := Marshal(Event{Envelope: "E"}); err == nil {
		t.Error("Marshal without payload: no error")
	}
}
