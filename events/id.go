package events

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"
)

// NewID returns a new envelope ID: 20 upper-case hex digits, the first 12 a
// millisecond timestamp so that IDs sort by creation time. Envelopes split
// from envelope X are named X.1, X.2, ...
func NewID() string {
	var b [10]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	rand.Read(b[6:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}
