package events

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

// samples are events of every fast type, with the values that trip
// hand-written JSON: escapes, HTML characters, non-ASCII and invalid
// UTF-8, nil and empty slices, zero and omitted fields, nanoseconds and
// zones, extreme numbers.
func samples() []Event {
	at := time.Date(2026, 12, 1, 7, 8, 9, 123456789, time.FixedZone("X", 5*3600+1800))
	odd := "<script>alert(\"x\" & 'y')</script>\r\n\t\\ é \u2028 \xff end\x01"
	return []Event{
		{Envelope: "E1", Time: at, Payload: Received{Sender: "a@src.test", Recipients: []string{"b@x.test", "c@y.test"}, BodyKey: "E1",
			BodySHA256: "ab", BodySegment: 1<<63 + 5, BodyOffset: -3, Size: 4096, Listener: "submission/127.0.0.1:587", ClientAddr: "127.0.0.1:4000",
			ClientName: "h.test", Helo: odd, TLS: "TLS1.3", AuthUser: "ü", DeclaredSize: 1 << 40, ScanHeaders: "X-Spam: yes\r\n", Parent: "P"}},
		{Envelope: "E2", Payload: Received{}},
		{Envelope: "E3", Time: at, Version: 7, Payload: Received{Recipients: []string{}}},
		{Envelope: odd, Time: at, Payload: PoliciesApplied{Policies: []string{"date", odd}, Prepend: "Date: x\r\n", Recipients: []string{"b@x.test"}}},
		{Envelope: "E4", Payload: PoliciesApplied{}},
		{Envelope: "E5", Payload: Split{Mode: "domain", Children: []Child{{ID: "C1", Recipients: []string{"a@x"}}, {ID: "C2"}}}},
		{Envelope: "E6", Payload: Split{Children: []Child{}}},
		{Envelope: "E7", Payload: Split{}},
		{Envelope: "E8", Payload: AttemptStarted{Attempt: -1, Recipients: nil}},
		{Envelope: "E9", Time: at, Payload: Attempted{Attempt: 3, Host: "mx:25", TLS: "TLS1.2", Seconds: 0.000123,
			Results:   []RcptResult{{Recipient: "a@x", Code: 550, Enhanced: "5.1.1", Message: odd, Temporary: false}, {Recipient: "b@x", Code: 451, Temporary: true}},
			TLSPolicy: "mta-sts", STSMode: "enforce", STSID: "id1", TLSResult: "success", TLSDetail: odd}},
		{Envelope: "E10", Payload: Attempted{Seconds: 1e-7}},
		{Envelope: "E11", Payload: Attempted{Seconds: 1e21, Results: []RcptResult{}}},
		{Envelope: "E12", Payload: Attempted{Seconds: 123456.789}},
		{Envelope: "E13", Time: at, Payload: Deferred{Recipients: []string{"a@x"}, NextAttempt: at.Add(time.Hour), Reason: odd, DelayDSN: "D"}},
		{Envelope: "E14", Payload: Deferred{}},
		{Envelope: "E15", Payload: Delivered{Recipients: []string{"a@x"}, Host: "mx"}},
		{Envelope: "E16", Payload: Bounced{Recipients: []string{"a@x"}, Reason: "550", DSN: "D2"}},
		{Envelope: "E17", Payload: Bounced{}},
	}
}

// The fast codec writes exactly what encoding/json writes, and reads back
// exactly what encoding/json reads.
func TestFastCodecMatchesEncodingJSON(t *testing.T) {
	for _, e := range samples() {
		v := e.Version
		if v == 0 {
			v = CurrentVersion
		}
		fast, ok, err := marshalFast(e, v)
		if !ok || err != nil {
			t.Fatalf("%s: fast codec not used (%v, %v)", e.Type(), ok, err)
		}
		ref, err := marshalReflect(e, v)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, ref) {
			t.Errorf("%s: fast encoding differs\nfast %s\nref  %s", e.Type(), fast, ref)
			continue
		}
		got, err := unmarshalFast(ref)
		if err != nil {
			t.Errorf("%s: fast reader gave up on %s", e.Type(), ref)
			continue
		}
		want, err := unmarshalReflect(ref)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: fast decoding differs\nfast %#v\nref  %#v", e.Type(), got, want)
		}
	}
}

// Records the fast reader does not take (other field order, unknown or
// differently cased keys, escaped keys, wrong number kinds, damage) still
// decode, or fail, exactly as encoding/json decides.
func TestFastReaderFallsBack(t *testing.T) {
	inputs := []string{
		`{"data":{"recipients":["a"]},"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z"}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["a"],"new_field":{"x":[1,2]}}}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"Recipients":["a"]}}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipient\u0073":["a"]}}`,
		`{"type":"AttemptStarted","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"attempt":1.5}}`,
		`{"type":"AttemptStarted","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"attempt":01}}`,
		`{"type":"Attempted","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"seconds":1e400}}`,
		`{"type":"Deferred","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"next_attempt":"yesterday"}}`,
		`{"type":"Deferred","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":null}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["a"]}} x`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["a\x01"]}}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["\u00e9\"\\"]}}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["\u003cx\u003e\/\b\f\n\r\t \ud83d\ude00 \ud83d \uZZZZ"]}}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["\u003cx\u003e\/\b\f\n\r\t\u00e9"],"host":"\q"}}`,
		`{"type":"Delivered","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["\u00"]}}`,
		` { "type" : "Bounced" , "v" : 1 , "env" : "E" , "time" : "2026-01-01T00:00:00Z" , "data" : { "recipients" : null , "reason" : "r" } } `,
		`{"type":"Bounced","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"recipients":["a"],"reason":"r"`,
		`{"type":"Resumed","v":1,"env":"@x","time":"2026-01-01T00:00:00Z","data":{"domain":"x"}}`,
	}
	for _, in := range inputs {
		checkAgainstReference(t, []byte(in))
	}
}

func checkAgainstReference(t *testing.T, b []byte) {
	t.Helper()
	got, gerr := Unmarshal(b)
	want, werr := unmarshalReflect(b)
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%q: error %v, encoding/json says %v", b, gerr, werr)
	}
	if gerr != nil {
		if gerr.Error() != werr.Error() {
			t.Fatalf("%q: error %q, encoding/json says %q", b, gerr, werr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: decoded\n%#v\nencoding/json\n%#v", b, got, want)
	}
}

// FuzzFastReader: any input decodes, or fails, as encoding/json decides.
func FuzzFastReader(f *testing.F) {
	for _, e := range samples() {
		b, err := Marshal(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"type":"Split","v":1,"env":"E","time":"2026-01-01T00:00:00Z","data":{"children":[{"id":"a","recipients":null}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAgainstReference(t, b)
	})
}

// FuzzFastWriter: the fast writer matches encoding/json for any strings
// and numbers in the hot types.
func FuzzFastWriter(f *testing.F) {
	f.Add("a@x.test", "<b>&é\r\n", int64(42), 0.25, int64(1764572400))
	f.Fuzz(func(t *testing.T, s1, s2 string, n int64, fl float64, unix int64) {
		at := time.Unix(unix%(1<<34), n%1e9)
		for _, e := range []Event{
			{Envelope: s1, Time: at, Payload: Received{Sender: s1, Recipients: []string{s2}, BodyKey: s2, Size: n, BodyOffset: n, Helo: s2}},
			{Envelope: s2, Time: at, Payload: Attempted{Attempt: int(n), Host: s1, Seconds: fl, Results: []RcptResult{{Recipient: s1, Message: s2, Code: int(n)}}}},
			{Envelope: s1, Time: at, Payload: Deferred{Recipients: []string{s1, s2}, NextAttempt: at, Reason: s2}},
			{Envelope: s1, Time: at, Payload: Split{Mode: s2, Children: []Child{{ID: s1, Recipients: []string{s2}}}}},
		} {
			fast, _, ferr := marshalFast(e, 1)
			ref, rerr := marshalReflect(e, 1)
			if (ferr == nil) != (rerr == nil) {
				t.Fatalf("%s: error %v, encoding/json says %v", e.Type(), ferr, rerr)
			}
			if ferr == nil && !bytes.Equal(fast, ref) {
				t.Fatalf("%s: fast %s\nref  %s", e.Type(), fast, ref)
			}
			if ferr == nil {
				checkAgainstReference(t, ref)
			}
		}
	})
}

func TestFastReaderTakesWhatMarshalWrites(t *testing.T) {
	for _, e := range samples() {
		b, err := Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unmarshalFast(b); err != nil {
			t.Errorf("%s: the fast reader gave up on %s", e.Type(), strings.TrimSpace(string(b)))
		}
	}
}
