package journal

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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

// Record formats. Format 2 (written since the chain became cryptographic):
//
//	2 | seq(8) | SHA-256 link of the previous record (32) | payload | crc32c(4)
//
// Format 1 (older journals, still read): 1 | seq(8) | crc32c of the
// previous record (4) | payload | crc32c(4). The trailing CRC covers
// everything before it (a torn or flipped record); the chain is what proves
// order and content: a record's SHA-256 link is the SHA-256 of everything
// before its CRC, and the next record carries it. A format-2 record after a
// format-1 one carries that one's SHA-256 link too.
const (
	recordFormat1 = 1
	recordFormat  = 2
)

const (
	recordOverhead1 = 1 + 8 + 4 + 4
	recordOverhead  = 1 + 8 + 32 + 4
)

// link is what the record after this one must carry: the CRC (for a
// format-1 successor) and the SHA-256 (format 2) of this record.
type link struct {
	crc uint32
	sha [32]byte
}

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
	seq     uint64
	format  byte
	prevCRC uint32   // format 1
	prevSHA [32]byte // format 2
	crc     uint32   // of this record
	body    []byte   // everything before the CRC: what its SHA-256 link covers
	data    []byte
}

// linkOf is the link the next record must carry. The SHA-256 is computed
// here, only by the readers that check the chain, not by every point read.
func (r record) linkOf() link { return link{crc: r.crc, sha: sha256.Sum256(r.body)} }

// follows reports whether r carries prev's link.
func (r record) follows(prev link) bool {
	if r.format == recordFormat1 {
		return r.prevCRC == prev.crc
	}
	return r.prevSHA == prev.sha
}

// prevString shows what r says of its predecessor.
func (r record) prevString() string {
	if r.format == recordFormat1 {
		return fmt.Sprintf("%08x", r.prevCRC)
	}
	return hex.EncodeToString(r.prevSHA[:8])
}

func (l link) String(format byte) string {
	if format == recordFormat1 {
		return fmt.Sprintf("%08x", l.crc)
	}
	return hex.EncodeToString(l.sha[:8])
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

func encodeRecord(seq uint64, prev link, payload []byte) ([]byte, link) {
	b := make([]byte, 0, recordOverhead+len(payload))
	b = append(b, recordFormat)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, prev.sha[:]...)
	b = append(b, payload...)
	l := link{crc: crc32.Checksum(b, castagnoli), sha: sha256.Sum256(b)}
	return binary.BigEndian.AppendUint32(b, l.crc), l
}

// decodeRecord verifies a record's own checksum and sequence number (the
// chain is checked by the reader, which knows the previous record).
func decodeRecord(keySeq uint64, b []byte) (record, error) {
	if len(b) < recordOverhead1 {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("record too short (%d bytes)", len(b))}
	}
	body, tail := b[:len(b)-4], b[len(b)-4:]
	want := binary.BigEndian.Uint32(tail)
	if got := crc32.Checksum(body, castagnoli); got != want {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("checksum mismatch (stored %08x, computed %08x)", want, got)}
	}
	r := record{format: body[0], crc: want, body: body}
	switch r.format {
	case recordFormat1:
		r.prevCRC, r.data = binary.BigEndian.Uint32(body[9:13]), body[13:]
	case recordFormat:
		if len(b) < recordOverhead {
			return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("record too short (%d bytes)", len(b))}
		}
		copy(r.prevSHA[:], body[9:41])
		r.data = body[41:]
	default:
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("unknown record format %d", body[0])}
	}
	r.seq = binary.BigEndian.Uint64(body[1:9])
	if r.seq != keySeq {
		return record{}, &CorruptError{Seq: keySeq, Reason: fmt.Sprintf("record says sequence %d", r.seq)}
	}
	return r, nil
}

func decodeEvent(r record) (events.Event, error) {
	e, err := events.Unmarshal(r.data)
	if err != nil {
		return events.Event{}, &CorruptError{Seq: r.seq, Reason: err.Error()}
	}
	e.Seq = r.seq
	return e, nil
}
