package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// The address index: for every Received record (and every TransferredIn,
// a message this node took over from a drained one), one key per address
// it names (the sender and each recipient, lower case), so that the messages
// to or from an address are found without reading the journal:
//
//	a/<address>\x00<seq:8 BE> -> envelope ID
//
// It is written with the record's other index entries (stageFrame), so a
// crash that takes it from the index's memtable has it rebuilt from the
// log with them; the retention sweep deletes it with the records it
// archives or drops. Records journaled before the index existed have none.
const prefixAddress = "a/"

func addressKey(addr string, seq uint64) []byte {
	addr = strings.ToLower(addr)
	k := make([]byte, 0, len(prefixAddress)+len(addr)+9)
	k = append(k, prefixAddress...)
	k = append(k, addr...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// addressesOf lists the addresses a message is found by (each once; the
// null sender is not an address).
func addressesOf(sender string, rcpts []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range append([]string{sender}, rcpts...) {
		a = strings.ToLower(a)
		if a != "" && !seen[a] && !strings.ContainsRune(a, 0) {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// addressKeys are e's address index keys (none unless e is a Received or
// a TransferredIn).
func addressKeys(e events.Event) [][]byte {
	var addrs []string
	switch p := e.Payload.(type) {
	case events.Received:
		addrs = addressesOf(p.Sender, p.Recipients)
	case events.TransferredIn:
		addrs = addressesOf(p.Sender, p.Recipients)
	default:
		return nil
	}
	var keys [][]byte
	for _, a := range addrs {
		keys = append(keys, addressKey(a, e.Seq))
	}
	return keys
}

// stageAddresses adds e's address keys to b.
func stageAddresses(b *pebble.Batch, e events.Event) error {
	for _, k := range addressKeys(e) {
		if err := b.Set(k, []byte(e.Envelope), nil); err != nil {
			return err
		}
	}
	return nil
}

// unstageAddresses deletes what stageAddresses added for e.
func unstageAddresses(b *pebble.Batch, e events.Event) error {
	for _, k := range addressKeys(e) {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// receivedPrefix and transferredInPrefix are how every stored Received
// and TransferredIn event begins (events.Marshal writes the type first):
// recovery decodes only those records, for their addresses.
var (
	receivedPrefix      = []byte(`{"type":"Received"`)
	transferredInPrefix = []byte(`{"type":"TransferredIn"`)
)

// hasAddresses reports whether a stored event may carry address index keys.
func hasAddresses(data []byte) bool {
	return bytes.HasPrefix(data, receivedPrefix) || bytes.HasPrefix(data, transferredInPrefix)
}

// AddressHit is one message found by address.
type AddressHit struct {
	Seq      uint64 // of its Received (or TransferredIn) event
	Envelope string
}

// FindByAddress returns the messages received from or for addr (exact,
// case-insensitive), newest first, at most limit of them, from the
// address index (no journal reads).
func (j *Journal) FindByAddress(addr string, limit int) (hits []AddressHit, err error) {
	defer recoverRead(&err)
	addr = strings.ToLower(strings.TrimSpace(addr))
	if addr == "" || strings.ContainsRune(addr, 0) {
		return nil, nil
	}
	lower := append([]byte(prefixAddress+addr), 0)
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(string(lower))})
	if err != nil {
		return nil, fmt.Errorf("journal: iterate: %w", err)
	}
	defer it.Close()
	for ok := it.Last(); ok && len(hits) < limit; ok = it.Prev() {
		k := it.Key()
		if len(k) != len(lower)+8 || !bytes.HasPrefix(k, lower) {
			continue
		}
		hits = append(hits, AddressHit{Seq: binary.BigEndian.Uint64(k[len(lower):]), Envelope: string(it.Value())})
	}
	return hits, it.Error()
}
