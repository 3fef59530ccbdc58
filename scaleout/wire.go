package scaleout

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Messages between nodes travel through protoactor's remote (gRPC), which
// carries protobuf messages. Ours are small JSON documents inside a
// wrapperspb.BytesValue, so that no generated code is needed: the kind of
// each is its "op" field.

// wrap encodes v for the wire.
func wrap(v any) *wrapperspb.BytesValue {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("scaleout: encode %T: %v", v, err)) // our own types always encode
	}
	return wrapperspb.Bytes(b)
}

// unwrap decodes a reply or request into v.
func unwrap(msg any, v any) error {
	bv, ok := msg.(*wrapperspb.BytesValue)
	if !ok {
		return fmt.Errorf("scaleout: unexpected message %T", msg)
	}
	if err := json.Unmarshal(bv.Value, v); err != nil {
		return fmt.Errorf("scaleout: decode message: %w", err)
	}
	return nil
}

// op reads only the "op" field of a request.
func op(msg any) (string, bool) {
	var h struct {
		Op string `json:"op"`
	}
	if unwrap(msg, &h) != nil {
		return "", false
	}
	return h.Op, true
}
