package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// rawRecord returns record seq's bytes (read from the log). The tests
// below write edited records back in place of the pointers: records held
// in the index itself, as journals from before the log have them, are
// read the same way.
func rawRecord(t *testing.T, j *Journal, seq uint64) []byte {
	t.Helper()
	v, closer, err := j.db.Get(eventKey(seq))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	raw, err := j.recordBytes(seq, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), raw...)
}

// editWithCRC changes one payload byte of a stored record and recomputes
// its CRC: what an attacker who knows the format does, and what a CRC
// chain alone cannot tell from the original.
func editWithCRC(b []byte) []byte {
	body := bytes.Replace(b[:len(b)-4], []byte(`["r"]`), []byte(`["s"]`), 1)
	return binary.BigEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
}

func scanErrors(j *Journal) []*CorruptError {
	var out []*CorruptError
	j.ScanTolerant(1, func(events.Event) error { return nil }, func(ce *CorruptError) error {
		out = append(out, ce)
		return nil
	})
	return out
}

func TestCryptographicChain(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	appendN(t, j, 6)
	seq, head := j.Head()
	if seq != 6 || len(head) != 64 {
		t.Fatalf("head %d:%s", seq, head)
	}
	if err := j.VerifyAnchor(seq, head); err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 2)
	if err := j.VerifyAnchor(seq, head); err != nil {
		t.Fatalf("the journal grew and no longer extends its head: %v", err)
	}
	orig := map[uint64][]byte{}
	for s := uint64(1); s <= 8; s++ {
		orig[s] = rawRecord(t, j, s)
	}
	restore := func() {
		for s, v := range orig {
			j.db.Set(eventKey(s), v, pebble.NoSync)
		}
	}

	// An edited record with its CRC recomputed breaks the SHA-256 chain.
	j.db.Set(eventKey(3), editWithCRC(orig[3]), pebble.NoSync)
	errs := scanErrors(j)
	if len(errs) != 1 || errs[0].Seq != 4 || !strings.Contains(errs[0].Reason, "record 3 was altered") {
		t.Fatalf("edited record 3: %v", errs)
	}
	restore()

	// A re-chained forgery (every later link recomputed) passes the chain
	// but not the anchor.
	prev := func() link { r, _ := decodeRecord(2, orig[2]); return r.linkOf() }()
	for s := uint64(3); s <= 8; s++ {
		r, _ := decodeRecord(s, orig[s])
		payload := r.data
		if s == 3 {
			payload = bytes.Replace(payload, []byte(`["r"]`), []byte(`["s"]`), 1)
		}
		var rec []byte
		rec, prev = encodeRecord(s, prev, payload)
		j.db.Set(eventKey(s), rec, pebble.NoSync)
	}
	if errs := scanErrors(j); len(errs) != 0 {
		t.Fatalf("a consistent forgery: %v", errs)
	}
	if err := j.VerifyAnchor(seq, head); !errors.Is(err, ErrAnchor) {
		t.Fatalf("anchor after a re-chained forgery: %v", err)
	}
	restore()

	// A deleted record and a reordered pair are reported with their numbers.
	j.db.Delete(eventKey(5), pebble.NoSync)
	if errs := scanErrors(j); len(errs) == 0 || errs[0].Seq != 5 {
		t.Fatalf("deleted record 5: %v", errs)
	}
	restore()
	j.db.Set(eventKey(4), orig[5], pebble.NoSync)
	j.db.Set(eventKey(5), orig[4], pebble.NoSync)
	if errs := scanErrors(j); len(errs) < 2 || errs[0].Seq != 4 || errs[1].Seq != 5 {
		t.Fatalf("reordered 4 and 5: %v", errs)
	}
	restore()
	if errs := scanErrors(j); len(errs) != 0 {
		t.Fatalf("restored: %v", errs)
	}
}

// Older journals (format 1, CRC chain) are still read, and new records
// chain onto them with SHA-256.
func TestFormat1RecordsStillRead(t *testing.T) {
	j := openT(t, t.TempDir())
	payload, _ := events.Marshal(events.Event{Envelope: "E", Version: events.CurrentVersion, Payload: events.Delivered{Recipients: []string{"r"}}})
	var prevCRC uint32
	b := j.db.NewBatch()
	for s := uint64(1); s <= 3; s++ {
		rec := []byte{recordFormat1}
		rec = binary.BigEndian.AppendUint64(rec, s)
		rec = binary.BigEndian.AppendUint32(rec, prevCRC)
		rec = append(rec, payload...)
		prevCRC = crc32.Checksum(rec, castagnoli)
		rec = binary.BigEndian.AppendUint32(rec, prevCRC)
		b.Set(eventKey(s), rec, nil)
	}
	b.Commit(pebble.NoSync)
	dir := j.Dir()
	j.Close()
	j = openT(t, dir)
	defer j.Close()
	appendN(t, j, 2)
	if got := len(collect(t, j, 1)); got != 5 {
		t.Fatalf("read %d records", got)
	}
	if err := j.Verify(5, nil); err != nil {
		t.Fatal(err)
	}
}

// Verify reads records in batches and hashes one while reading the next:
// problems on either side of a batch boundary, in the log and in the
// index, are still all reported, in sequence order.
func TestVerifyAcrossBatches(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	const n = 3*verifyBatch + 100
	for done := 0; done < n; {
		var evs []events.Event
		for i := 0; i < 500 && done < n; i++ {
			evs = append(evs, delivered(fmt.Sprintf("E%d", done), "r"))
			done++
		}
		if _, err := j.Append(Write{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Verify(n, nil); err != nil {
		t.Fatalf("intact: %v", err)
	}
	// Told to stop, it gives up after a batch, whatever is left.
	stop := make(chan struct{})
	close(stop)
	if err := j.VerifyUntil(n, nil, stop); !errors.Is(err, ErrVerifyStopped) {
		t.Fatalf("stopped verification: %v, want ErrVerifyStopped", err)
	}
	edited := uint64(verifyBatch) // the last record of the first batch
	j.db.Set(eventKey(edited), editWithCRC(rawRecord(t, j, edited)), pebble.NoSync)
	gone := uint64(2*verifyBatch + 1) // the first of the third batch
	j.db.Delete(eventKey(gone), pebble.NoSync)
	var got []uint64
	err := j.Verify(n, func(ce *CorruptError) error {
		got = append(got, ce.Seq)
		return nil
	})
	want := []uint64{edited + 1, gone}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("reported %v (err %v), want %v", got, err, want)
	}
	var ce *CorruptError
	if err := j.Verify(n, nil); !errors.As(err, &ce) || ce.Seq != edited+1 || !strings.Contains(ce.Reason, "altered") {
		t.Fatalf("first problem: %v", err)
	}
}

// VerifyRecords checks the records asked for, each against the one before.
func TestVerifyRecords(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	appendN(t, j, 6)
	if p, err := j.VerifyRecords([]uint64{1, 2, 3, 6}); err != nil || len(p) != 0 {
		t.Fatalf("intact: %v %v", p, err)
	}
	j.db.Set(eventKey(3), editWithCRC(rawRecord(t, j, 3)), pebble.NoSync)
	p, err := j.VerifyRecords([]uint64{1, 3, 4, 9})
	if err != nil || len(p) != 2 || !strings.Contains(p[4], "record 3 was altered") || !strings.Contains(p[9], "missing") {
		t.Fatalf("edited 3, asked 1, 3, 4, 9: %v %v", p, err)
	}
}

// SeqAt finds the first record at or after a time by binary search.
func TestSeqAt(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	base := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for i := 0; i < 50; i++ {
		e := delivered(fmt.Sprintf("E%d", i), "r")
		e.Time = base.Add(time.Duration(i) * time.Minute)
		if _, err := j.Append(Write{Events: []events.Event{e}}); err != nil {
			t.Fatal(err)
		}
	}
	for at, want := range map[time.Duration]uint64{-time.Hour: 1, 0: 1, 30 * time.Second: 2, 17 * time.Minute: 18, 49 * time.Minute: 50, time.Hour: 51} {
		if got, err := j.SeqAt(base.Add(at)); err != nil || got != want {
			t.Errorf("SeqAt(base%+v) = %d, %v; want %d", at, got, err, want)
		}
	}
}

// The address index finds messages by sender or recipient, newest first;
// it is rebuilt with the rest of the index after a crash, and leaves with
// the records a sweep archives.
func TestAddressIndex(t *testing.T) {
	src := t.TempDir()
	j := openT(t, src)
	recv := func(id, from string, to ...string) {
		t.Helper()
		if _, err := j.Append(Write{Events: []events.Event{{Envelope: id, Payload: events.Received{Sender: from, Recipients: to, BodyKey: id}}}}); err != nil {
			t.Fatal(err)
		}
	}
	recv("M1", "alice@a.test", "bob@b.test")
	appendN(t, j, 3)
	recv("M2", "Carol@C.test", "BOB@b.test", "dave@d.test")
	recv("M3", "", "bob@b.test") // a bounce: the null sender is no address
	// A message taken over from a drained node is found like one received.
	if _, err := j.Append(Write{Events: []events.Event{{Envelope: "T1", Payload: events.TransferredIn{Origin: "n1", Sender: "erin@e.test", Recipients: []string{"Bob@b.test"}, BodyKey: "T1"}}}}); err != nil {
		t.Fatal(err)
	}
	find := func(j *Journal, addr string) string {
		t.Helper()
		hits, err := j.FindByAddress(addr, 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, h := range hits {
			ids = append(ids, fmt.Sprintf("%s@%d", h.Envelope, h.Seq))
		}
		return strings.Join(ids, " ")
	}
	want := map[string]string{"bob@b.test": "T1@7 M3@6 M2@5 M1@1", "carol@c.test": "M2@5", "ALICE@A.TEST": "M1@1", "erin@e.test": "T1@7", "nobody@x.test": "", "": ""}
	for addr, w := range want {
		if got := find(j, addr); got != w {
			t.Errorf("%q: %q, want %q", addr, got, w)
		}
	}
	if hits, _ := j.FindByAddress("bob@b.test", 2); len(hits) != 2 || hits[0].Envelope != "T1" {
		t.Errorf("limit 2: %v", hits)
	}
	dir := crashCopy(t, src) // the index's memtable is lost with the crash
	j.Close()
	j = openT(t, dir)
	defer j.Close()
	if j.recovered == 0 {
		t.Fatal("nothing was re-indexed from the log: the test lost nothing")
	}
	for addr, w := range want {
		if got := find(j, addr); got != w {
			t.Errorf("after recovery, %q: %q, want %q", addr, got, w)
		}
	}
	if _, err := j.ArchiveThrough(4, ArchiveOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	if got := find(j, "bob@b.test"); got != "T1@7 M3@6 M2@5" {
		t.Errorf("after archiving 1-4: %q, want T1@7 M3@6 M2@5", got)
	}
	if got := find(j, "alice@a.test"); got != "" {
		t.Errorf("after archiving 1-4, alice: %q", got)
	}
}
