package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ledgermail/ledgermail/events"
)

func received(key string, data []byte) events.Event {
	return events.Event{Envelope: key, Payload: events.Received{Sender: "a@x", Recipients: []string{"b@y"}, BodyKey: key, Size: int64(len(data)), BodySHA256: BodySum(data)}}
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, bodiesDir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Small bodies share a segment, large ones stream into their own; the
// Received event says where each went; reads return the same bytes after
// a reopen; dropping the last body of a segment deletes the file.
func TestBodySegments(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	small1, small2 := []byte("Subject: a\r\n\r\none\r\n"), []byte("Subject: b\r\n\r\ntwo\r\n")
	evs, err := j.Append(Write{Bodies: []Body{{Key: "S1", Data: small1}}, Events: []events.Event{received("S1", small1)}})
	if err != nil {
		t.Fatal(err)
	}
	r1 := evs[0].Payload.(events.Received)
	evs, err = j.Append(Write{Bodies: []Body{{Key: "S2", Data: small2}}, Events: []events.Event{received("S2", small2)}})
	if err != nil {
		t.Fatal(err)
	}
	r2 := evs[0].Payload.(events.Received)
	if r1.BodySegment == 0 || r1.BodySegment != r2.BodySegment || r1.BodyOffset < int64(len(logMagic)) || r2.BodyOffset < r1.BodyOffset+int64(len(small1)) {
		t.Fatalf("small bodies: %+v %+v", r1, r2)
	}

	large := bytes.Repeat([]byte("0123456789abcdef\r\n"), 200000) // 3.6 MB
	bf, err := j.CreateBodyFile()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(large); i += 65536 {
		if _, err := bf.Write(large[i:min(i+65536, len(large))]); err != nil {
			t.Fatal(err)
		}
	}
	evs, err = j.Append(Write{Bodies: []Body{{Key: "L", File: bf}}, Events: []events.Event{received("L", large)}})
	if err != nil {
		t.Fatal(err)
	}
	rl := evs[0].Payload.(events.Received)
	if rl.BodySegment == r1.BodySegment || rl.BodyOffset != 0 {
		t.Fatalf("large body: %+v", rl)
	}
	if n := len(segFiles(t, dir)); n != 2 {
		t.Fatalf("%d segment files, want 2", n)
	}
	// An aborted large body leaves nothing behind.
	ab, err := j.CreateBodyFile()
	if err != nil {
		t.Fatal(err)
	}
	ab.Write([]byte("half a message"))
	ab.Abort()
	if n := len(segFiles(t, dir)); n != 2 {
		t.Fatalf("%d segment files after an abort, want 2", n)
	}
	j.Close()

	j = openT(t, dir)
	defer j.Close()
	for key, want := range map[string][]byte{"S1": small1, "S2": small2, "L": large} {
		got, err := j.BodyChecked(key, BodySum(want))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("body %s after reopen: %v (%d bytes, want %d)", key, err, len(got), len(want))
		}
	}
	br, err := j.OpenBody("L", BodySum(large))
	if err != nil {
		t.Fatal(err)
	}
	h, err := br.Header(1 << 10)
	br.Close()
	if err != nil || len(h) != 1<<10 {
		t.Fatalf("Header of a body without one: %d bytes, %v", len(h), err)
	}
	// Dropping the large body deletes its segment at once.
	if _, err := j.Append(Write{DropBodies: []string{"L"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(j.bodies.path(rl.BodySegment)); !os.IsNotExist(err) {
		t.Fatalf("segment of a dropped large body: %v", err)
	}
	if _, err := j.Body("L"); !errors.Is(err, ErrNoBody) {
		t.Fatalf("dropped body: %v", err)
	}
	// The shared segment of the previous run is not current any more, but
	// it holds records of the log: dropping both its bodies keeps it until
	// they are archived; then it goes.
	if _, err := j.Append(Write{DropBodies: []string{"S1", "S2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(j.bodies.path(r1.BodySegment)); err != nil {
		t.Fatalf("a log segment whose records are in the hot journal was deleted: %v", err)
	}
	if _, err := j.ArchiveThrough(j.LastSeq(), ArchiveOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(j.bodies.path(r1.BodySegment)); !os.IsNotExist(err) {
		t.Fatalf("log segment after its records left: %v", err)
	}
	if segs := segFiles(t, dir); len(segs) != 0 {
		t.Fatalf("after archiving everything: segments %v left", segs)
	}
	// The log goes on in a new segment, and survives a reopen.
	appendN(t, j, 3)
	j.Close()
	j = openT(t, dir)
	defer j.Close()
	if n := countScan(t, j); n != 3 || j.LastSeq() != 6 {
		t.Fatalf("after archiving and reopening: %d events, last %d", n, j.LastSeq())
	}
}

// A segment cut short, or a flipped byte, is reported as a corrupt body,
// never returned.
func TestBodySegmentDamage(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	data := []byte("Subject: x\r\n\r\n" + strings.Repeat("body line\r\n", 100))
	if _, err := j.Append(Write{Bodies: []Body{{Key: "K", Data: data}}, Events: []events.Event{received("K", data)}}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	seg := segFiles(t, dir)[0]
	flipByte(t, seg, func(n int) int { return n / 2 })
	j = openT(t, dir)
	var bce *BodyCorruptError
	if _, err := j.BodyChecked("K", BodySum(data)); !errors.As(err, &bce) {
		t.Fatalf("flipped byte: %v", err)
	}
	j.Close()
	if err := os.Truncate(seg, int64(len(data)/2)); err != nil {
		t.Fatal(err)
	}
	j = openT(t, dir)
	defer j.Close()
	if _, err := j.BodyChecked("K", ""); !errors.As(err, &bce) || !strings.Contains(err.Error(), "segment") {
		t.Fatalf("truncated segment: %v", err)
	}
}

// ReclaimSegments removes what a crash left: a session's segment that was
// never committed.
func TestReclaimOrphanSegment(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	bf, err := j.CreateBodyFile()
	if err != nil {
		t.Fatal(err)
	}
	bf.Write([]byte("never committed"))
	// While it is being written it is kept.
	if freed, err := j.ReclaimSegments(); err != nil || freed != 0 {
		t.Fatalf("reclaim with a body in flight: %d, %v", freed, err)
	}
	j.Close() // a crash: the file stays
	j = openT(t, dir)
	defer j.Close()
	if freed, err := j.ReclaimSegments(); err != nil || freed != int64(len("never committed")) {
		t.Fatalf("reclaim of an orphan: %d, %v", freed, err)
	}
	if n := len(segFiles(t, dir)); n != 0 {
		t.Fatalf("%d segment files left", n)
	}
}

// A dropped body inside a log segment that must stay (it holds records) is
// erased at once: its bytes read back as zeros and its blocks are freed.
func TestDroppedBodyIsPunchedOut(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	defer j.Close()
	data := bytes.Repeat([]byte("secret line of a message body\r\n"), 4096) // 124 KiB
	evs, err := j.Append(Write{Bodies: []Body{{Key: "K", Data: data}}, Events: []events.Event{received("K", data)}})
	if err != nil {
		t.Fatal(err)
	}
	rcv := evs[0].Payload.(events.Received)
	path := j.bodies.path(rcv.BodySegment)
	if _, err := j.Append(Write{DropBodies: []string{"K"}, Events: []events.Event{delivered("K", "r")}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the log segment went: %v", err)
	}
	if bytes.Contains(b, []byte("secret line")) {
		t.Fatal("the dropped body's bytes are still in the segment")
	}
	if n := countScan(t, j); n != 2 {
		t.Fatalf("%d records readable after the hole, want 2", n)
	}
}
