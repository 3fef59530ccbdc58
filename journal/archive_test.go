package journal

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ledgermail/ledgermail/events"
)

// fill appends n envelopes, each a Received with a body and a Delivered.
func fill(t *testing.T, j *Journal, n int) []string {
	t.Helper()
	var keys []string
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("E%03d", j.LastSeq()+1)
		data := []byte(fmt.Sprintf("Subject: %s\r\n\r\n%s\r\n", key, strings.Repeat("body ", 50)))
		if _, err := j.Append(Write{Bodies: []Body{{Key: key, Data: data}}, Events: []events.Event{received(key, data), delivered(key, "b@y")}}); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	return keys
}

func seqs(t *testing.T, j *Journal, from uint64) []uint64 {
	t.Helper()
	var out []uint64
	if err := j.Scan(from, func(e events.Event) error { out = append(out, e.Seq); return nil }); err != nil {
		t.Fatalf("scan from %d: %v", from, err)
	}
	return out
}

// Records leave the hot journal for a compressed archive segment; Scan
// reads through both with the chain checked across; appends go on; an
// anchor taken before still verifies; bodies are in the archive and their
// segments are reclaimed.
func TestArchiveThrough(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	fill(t, j, 5) // records 1..10
	j.Close()
	j = openT(t, dir)
	seq, head := j.Head()
	res, err := j.ArchiveThrough(6, ArchiveOptions{Keep: true, Bodies: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.From != 1 || res.To != 6 || res.Bodies != 3 || res.Segment == "" || j.FirstSeq() != 7 {
		t.Fatalf("archive result %+v, first %d", res, j.FirstSeq())
	}
	if st, err := os.Stat(res.Segment); err != nil || st.Mode().Perm()&0o222 != 0 {
		t.Fatalf("archive segment: %v %v", st.Mode(), err)
	}
	if got := fmt.Sprint(seqs(t, j, 1)); got != "[1 2 3 4 5 6 7 8 9 10]" {
		t.Fatalf("scan through archive and hot: %s", got)
	}
	if got := fmt.Sprint(seqs(t, j, 5)); got != "[5 6 7 8 9 10]" {
		t.Fatalf("scan from inside the archive: %s", got)
	}
	if got := fmt.Sprint(seqs(t, j, 7)); got != "[7 8 9 10]" {
		t.Fatalf("scan of the hot part: %s", got)
	}
	if err := j.VerifyAnchor(seq, head); err != nil {
		t.Fatalf("anchor at the head: %v", err)
	}
	if _, err := j.Body("E000"); !errors.Is(err, ErrNoBody) {
		t.Fatalf("archived body still in the hot journal: %v", err)
	}
	if err := j.Verify(10, nil); err != nil {
		t.Fatalf("verify the hot part: %v", err)
	}
	j.Close()

	j = openT(t, dir)
	defer j.Close()
	fill(t, j, 1) // 11, 12
	if got := fmt.Sprint(seqs(t, j, 1)); got != "[1 2 3 4 5 6 7 8 9 10 11 12]" {
		t.Fatalf("after reopening and appending: %s", got)
	}
	// Everything out: the journal continues from the archive's end.
	if _, err := j.ArchiveThrough(12, ArchiveOptions{Keep: true, Bodies: true}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = openT(t, dir)
	if j.LastSeq() != 12 {
		t.Fatalf("an empty hot journal reopened at %d, want 12", j.LastSeq())
	}
	fill(t, j, 1)
	if got := fmt.Sprint(seqs(t, j, 1)); got != "[1 2 3 4 5 6 7 8 9 10 11 12 13 14]" {
		t.Fatalf("after archiving everything: %s", got)
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d body segments, want the current one only", n)
	}
	if err := j.VerifyAnchor(3, linkOfArchived(t, j, 3)); err != nil {
		t.Fatalf("anchor inside the archive: %v", err)
	}
	if err := j.VerifyAnchor(3, strings.Repeat("0", 64)); !errors.Is(err, ErrAnchor) {
		t.Fatalf("wrong anchor inside the archive: %v", err)
	}
}

// linkOfArchived reads record seq's SHA-256 link from the archive.
func linkOfArchived(t *testing.T, j *Journal, seq uint64) string {
	t.Helper()
	var got string
	mark := *j.mark.Load()
	_, _, err := j.scanArchive(seq, mark, func(events.Event) error { return nil }, func(err error) error { return err },
		func(n uint64, l link) {
			if n == seq {
				got = fmt.Sprintf("%x", l.sha)
			}
		})
	if err != nil || got == "" {
		t.Fatalf("link of %d: %v", seq, err)
	}
	return got
}

// Without Keep, records are dropped: Scan starts after them, silently, and
// the chain still checks from the mark.
func TestArchiveDrop(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	defer j.Close()
	fill(t, j, 3)
	if _, err := j.ArchiveThrough(4, ArchiveOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(seqs(t, j, 1)); got != "[5 6]" {
		t.Fatalf("scan after dropping: %s", got)
	}
	if files, _ := listArchives(j.ArchiveDir()); len(files) != 0 {
		t.Fatalf("archive segments written: %v", files)
	}
	if err := j.VerifyAnchor(2, strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "dropped") {
		t.Fatalf("anchor in the dropped part: %v", err)
	}
}

// rewriteArchive decompresses the only archive segment, lets edit change
// its content, and writes it back compressed.
func rewriteArchive(t *testing.T, j *Journal, edit func([]byte) []byte) string {
	t.Helper()
	files, _ := listArchives(j.ArchiveDir())
	if len(files) != 1 {
		t.Fatalf("%d archive segments", len(files))
	}
	p := files[0].path
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(gz)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(edit(plain))
	w.Close()
	os.Chmod(p, 0o600)
	if err := os.WriteFile(p, out.Bytes(), 0o400); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(p)
}

func firstCorrupt(j *Journal) *CorruptError {
	var first *CorruptError
	j.ScanTolerant(1, func(events.Event) error { return nil }, func(ce *CorruptError) error {
		if first == nil {
			first = ce
		}
		return nil
	})
	return first
}

// A truncated archive segment, and an archived record edited with its
// CRC recomputed, are reported with a sequence number.
func TestArchiveDamageIsReported(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	defer j.Close()
	fill(t, j, 4)
	if _, err := j.ArchiveThrough(6, ArchiveOptions{Keep: true, Bodies: true}); err != nil {
		t.Fatal(err)
	}
	files, _ := listArchives(j.ArchiveDir())
	whole, _ := os.ReadFile(files[0].path)
	os.Chmod(files[0].path, 0o600)
	if err := os.WriteFile(files[0].path, whole[:len(whole)*2/3], 0o400); err != nil {
		t.Fatal(err)
	}
	ce := firstCorrupt(j)
	if ce == nil || !strings.Contains(ce.Reason, "truncated") || !strings.Contains(ce.Reason, filepath.Base(files[0].path)) {
		t.Fatalf("truncated archive segment: %v", ce)
	}
	os.WriteFile(files[0].path, whole, 0o400)
	if ce := firstCorrupt(j); ce != nil {
		t.Fatalf("restored segment: %v", ce)
	}
	// Edit the payload of record 3 and recompute its CRC: the chain of
	// record 4 catches it.
	rewriteArchive(t, j, func(plain []byte) []byte {
		return editRecord(t, plain, bytes.Index(plain, []byte(`"E003"`)))
	})
	ce = firstCorrupt(j)
	if ce == nil || ce.Seq != 4 || !strings.Contains(ce.Reason, "chain broken") {
		t.Fatalf("edited archived record: %v", ce)
	}
}

// editRecord flips a letter of the payload at offset at (inside a record)
// and recomputes that record's trailing CRC.
func editRecord(t *testing.T, plain []byte, at int) []byte {
	t.Helper()
	// Walk the entries to find the record containing at.
	p := len(archiveMagic)
	p += bytes.IndexByte(plain[p:], '\n') + 1
	for p < len(plain) {
		kind := plain[p]
		p++
		switch kind {
		case 'R', 'r':
			n, k := uvarint(plain[p:])
			start := p + k
			end := start + int(n)
			if at >= start && at < end {
				out := bytes.Clone(plain)
				out[at+1] ^= 0x01 // inside the quoted key: still valid JSON
				rec := out[start:end]
				full := rec
				if kind == 'r' { // the CRC covers the link that is not stored
					full = append(append(append([]byte(nil), rec[:9]...), prevLinkOf(t, plain, start)...), rec[9:]...)
				}
				crc := crcOf(full[:len(full)-4])
				copy(rec[len(rec)-4:], crc)
				return out
			}
			p = end
		case 'B':
			n, k := uvarint(plain[p:])
			p += k + int(n)
			n, k = uvarint(plain[p:])
			p += k + int(n)
		default:
			t.Fatalf("no record at %d", at)
		}
	}
	t.Fatalf("offset %d not found", at)
	return nil
}

func uvarint(b []byte) (uint64, int) { return binary.Uvarint(b) }

func crcOf(b []byte) []byte {
	return binary.BigEndian.AppendUint32(nil, crc32.Checksum(b, castagnoli))
}

// prevLinkOf is the SHA-256 link that the compact record starting at start
// had (the SHA-256 of the record before it, rebuilt whole).
func prevLinkOf(t *testing.T, plain []byte, start int) []byte {
	t.Helper()
	p := len(archiveMagic)
	p += bytes.IndexByte(plain[p:], '\n') + 1
	var prev [32]byte
	for p < start {
		kind := plain[p]
		p++
		n, k := uvarint(plain[p:])
		body := plain[p+k : p+k+int(n)]
		switch kind {
		case 'r':
			full := append(append(append([]byte(nil), body[:9]...), prev[:]...), body[9:]...)
			if p+k == start {
				return prev[:]
			}
			prev = sha256.Sum256(full[:len(full)-4])
			p += k + int(n)
		case 'B':
			p += k + int(n)
			n2, k2 := uvarint(plain[p:])
			p += k2 + int(n2)
		default:
			p += k + int(n)
		}
	}
	return prev[:]
}
