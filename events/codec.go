package events

import (
	"encoding/json"
	"fmt"
	"time"
)

// wire is the stored form of an event.
type wire struct {
	Type     Type            `json:"type"`
	Version  int             `json:"v"`
	Envelope string          `json:"env"`
	Time     time.Time       `json:"time"`
	Data     json.RawMessage `json:"data"`
}

// Marshal encodes an event (without its sequence number, which is the
// journal's key). A zero Version is written as CurrentVersion.
func Marshal(e Event) ([]byte, error) {
	if e.Payload == nil {
		return nil, fmt.Errorf("events: envelope %s: event has no payload", e.Envelope)
	}
	v := e.Version
	if v == 0 {
		v = CurrentVersion
	}
	if b, ok, err := marshalFast(e, v); ok {
		if err != nil {
			return nil, fmt.Errorf("events: encode %s: %w", e.Type(), err)
		}
		return b, nil
	}
	return marshalReflect(e, v)
}

// marshalReflect is Marshal by encoding/json, for the types without a fast
// codec (and the reference the fast one is tested against).
func marshalReflect(e Event, v int) ([]byte, error) {
	data, err := payloadJSON(e.Payload)
	if err != nil {
		return nil, fmt.Errorf("events: encode %s: %w", e.Type(), err)
	}
	return json.Marshal(wire{Type: e.Type(), Version: v, Envelope: e.Envelope, Time: e.Time.UTC(), Data: data})
}

// Unmarshal decodes an event written by Marshal of this or any other
// version. Unknown types decode to a Raw payload; unknown fields are ignored.
func Unmarshal(b []byte) (Event, error) {
	if e, err := unmarshalFast(b); err == nil {
		return e, nil
	}
	return unmarshalReflect(b)
}

// unmarshalReflect is Unmarshal by encoding/json: every record the fast
// reader gives up on, and the reference it is tested against.
func unmarshalReflect(b []byte) (Event, error) {
	var w wire
	if err := json.Unmarshal(b, &w); err != nil {
		return Event{}, fmt.Errorf("events: decode: %w", err)
	}
	if w.Type == "" {
		return Event{}, fmt.Errorf("events: decode: record has no type")
	}
	e := Event{Time: w.Time, Envelope: w.Envelope, Version: w.Version}
	decode, ok := decoders[w.Type]
	if !ok {
		e.Payload = Raw{RawType: w.Type, Data: append([]byte(nil), w.Data...)}
		return e, nil
	}
	p, err := decode(w.Data)
	if err != nil {
		return Event{}, fmt.Errorf("events: decode %s v%d: %w", w.Type, w.Version, err)
	}
	e.Payload = p
	return e, nil
}

// decoders maps each known type to its payload decoder (read-only).
var decoders = map[Type]func([]byte) (Payload, error){
	TypeReceived:        decodeAs[Received],
	TypePoliciesApplied: decodeAs[PoliciesApplied],
	TypeSplit:           decodeAs[Split],
	TypeAttemptStarted:  decodeAs[AttemptStarted],
	TypeAttempted:       decodeAs[Attempted],
	TypeDeferred:        decodeAs[Deferred],
	TypeDelivered:       decodeAs[Delivered],
	TypeBounced:         decodeAs[Bounced],
	TypeExpired:         decodeAs[Expired],
	TypeRetryRequested:  decodeAs[RetryRequested],
	TypeDeleted:         decodeAs[Deleted],
	TypeLost:            decodeAs[Lost],
	TypeRecordLost:      decodeAs[RecordLost],
	TypeSuspended:       decodeAs[Suspended],
	TypeResumed:         decodeAs[Resumed],
	TypeTransferStarted: decodeAs[TransferStarted],
	TypeTransferredOut:  decodeAs[TransferredOut],
	TypeTransferAborted: decodeAs[TransferAborted],
	TypeTransferredIn:   decodeAs[TransferredIn],
}

func decodeAs[T Payload](data []byte) (Payload, error) {
	var v T
	if len(data) > 0 && string(data) != "null" {
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Fields returns the payload as a generic JSON object, for printing events
// (mta replay --json merges it with seq, time, envelope, type, version).
func Fields(e Event) (map[string]any, error) {
	data, err := payloadJSON(e.Payload)
	if err != nil {
		return nil, err
	}
	m := map[string]any{}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// payloadJSON is the stored "data" of a payload: a Raw one's bytes as they
// were read, any other encoded.
func payloadJSON(p Payload) ([]byte, error) {
	if raw, ok := p.(Raw); ok {
		return raw.Data, nil
	}
	return json.Marshal(p)
}

// Known reports whether t is an event type this version decodes.
func Known(t Type) bool { _, ok := decoders[t]; return ok }
