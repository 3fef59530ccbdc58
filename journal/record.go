package journal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/ledgermail/ledgermail/events"
)

// Key space of the Pebble database.
const (
	prefixEvent = "e/" // e/<seq:8 BE>            -> record
	prefixIndex = "v/" // v/<envelope>\x00<seq:8> -> empty (per-envelope index)
	prefixBody  = "b/" // b/<key>                 -> body bytes
)

const recordFormat = 1

// Record layout: format(1) | seq(8) | prev checksum(4) | payload | crc32c(4)
// where the trailing CRC covers everything before it.
const recordOverhead = 1 + 8 + 4 + 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CorruptError reports a record that fails verification.
type CorruptError struct {
	Seq    uint64
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("journal: corrupt record at sequence %d: %s", e.Seq, e.Reason)
}

type record struct {
	seq  uint64
	prev uint32
	sum  uint32
	data []byte
}

func eventKey(seq uint64) []byte {
	k := make([]byte, len(prefixEvent)+8)
	copy(k, prefixEvent)
	binary.BigEndian.PutUint64(k[len(prefixEvent):], seq)
	return k
}

func seqFromKey(k []byte) (uint64, error) {
	if len(k) != len(prefixEvent)+8 {
		return 0, fmt.Errorf("journal: malformed event key %q", k)
	}
	return binary.BigEndian.Uint64(k[len(prefixEvent):]), nil
}

func indexKey(env string, seq uint64) []byte {
	k := make([]byte, 0, len(prefixIndex)+len(env)+9)
	k = append(k, prefixIndex...)
	k = append(k, env...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func bodyKey(key string) []byte { return append([]byte(prefixBody), key...) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p string) []byte {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return b[:i+1]
		}
	}
	return nil
}

func encodeRecord(seq uint64, prev uint32, payload []byte) ([]byte, uint32) {
	b := make([]byte, 0, recordOverhead+len(payload))
	b = append(b, recordFormat)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint32(b, prev)
	b = append(b, payload...)
	sum := crc32.Checksum(b, castagnoli)
	return binary.BigEndian.AppendUint32(b, sum), sum
}

// decodeRecord verifies a record's own checksum and sequence number (the
// chain is checked by the reader, which knows the previous record).
func decodeRecord(keySeq uint64, b []byte) (record, error) {
	if len(b) < recordOverhead {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("record too short (%d bytes)", len(b))}
	}
	body, tail := b[:len(b)-4], b[len(b)-4:]
	want := binary.BigEndian.Uint32(tail)
	if got := crc32.Checksum(body, castagnoli); got != want {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("checksum mismatch (stored %08x, computed %08x)", want, got)}
	}
	if body[0] != recordFormat {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("unknown record format %d", body[0])}
	}
	seq := binary.BigEndian.Uint64(body[1:9])
	if seq != keySeq {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("record says sequence %d", seq)}
	}
	return record{seq: seq, prev: binary.BigEndian.Uint32(body[9:13]), sum: want, data: body[13:]}, nil
}

func decodeEvent(r record) (events.Event, error) {
	e, err := events.Unmarshal(r.data)
	if err != nil {
		return events.Event{}, &CorruptError{Seq: r.seq, Reason: err.Error()}
	}
	e.Seq = r.seq
	return e, nil
}
