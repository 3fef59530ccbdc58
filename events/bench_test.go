package events

import (
	"testing"
	"time"
)

// The events one delivered message writes, as the server writes them:
// encoded and decoded by the fast codec and by encoding/json, ns and
// allocations per message.
func messageEvents() []Event {
	at := time.Date(2026, 12, 1, 7, 8, 9, 123456789, time.UTC)
	rc := []string{"b@dest.test"}
	return []Event{
		{Envelope: "01JDZQ8W3YH6C4M2N7P9R5T1VX", Time: at, Payload: Received{Sender: "a@src.test", Recipients: rc, BodyKey: "01JDZQ8W3YH6C4M2N7P9R5T1VX",
			BodySHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", BodySegment: 12, BodyOffset: 1 << 20, Size: 4096,
			Listener: "submission/127.0.0.1:587", ClientAddr: "127.0.0.1:40312", Helo: "client.test", TLS: "TLS1.3", AuthUser: "alice"}},
		{Envelope: "01JDZQ8W3YH6C4M2N7P9R5T1VX", Time: at, Payload: PoliciesApplied{Policies: []string{"date", "message-id", "received"},
			Prepend: "Received: from client.test (127.0.0.1) by lm.test with ESMTPSA id 01JDZQ8W3YH6C4M2N7P9R5T1VX\r\n\tfor <b@dest.test>; Tue, 1 Dec 2026 07:08:09 +0000\r\nMessage-ID: <01JDZQ8W3YH6C4M2N7P9R5T1VX@lm.test>\r\n", Recipients: rc}},
		{Envelope: "01JDZQ8W3YH6C4M2N7P9R5T1VX", Time: at, Payload: AttemptStarted{Attempt: 1, Recipients: rc}},
		{Envelope: "01JDZQ8W3YH6C4M2N7P9R5T1VX", Time: at, Payload: Attempted{Attempt: 1, Host: "127.0.0.1:25", TLS: "TLS1.3", Seconds: 0.0123,
			Results: []RcptResult{{Recipient: "b@dest.test", Code: 250, Enhanced: "2.0.0", Message: "Ok: queued as 4Xy"}}}},
		{Envelope: "01JDZQ8W3YH6C4M2N7P9R5T1VX", Time: at, Payload: Delivered{Recipients: rc, Host: "127.0.0.1:25"}},
	}
}

func BenchmarkEncodeMessageEvents(b *testing.B) {
	for _, c := range []struct {
		name string
		enc  func(Event, int) ([]byte, error)
	}{
		{"fast", func(e Event, v int) ([]byte, error) { b, _, err := marshalFast(e, v); return b, err }},
		{"encoding-json", marshalReflect},
	} {
		b.Run(c.name, func(b *testing.B) {
			evs := messageEvents()
			b.ReportAllocs()
			for b.Loop() {
				for _, e := range evs {
					if _, err := c.enc(e, 1); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

func BenchmarkDecodeMessageEvents(b *testing.B) {
	var recs [][]byte
	for _, e := range messageEvents() {
		r, err := Marshal(e)
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, r)
	}
	for _, c := range []struct {
		name string
		dec  func([]byte) (Event, error)
	}{{"fast", unmarshalFast}, {"encoding-json", unmarshalReflect}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, r := range recs {
					if _, err := c.dec(r); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
