package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// A snapshot is a file beside the log; one saved in the index by an
// earlier version is still read, and dropped from the index at the next
// save. A damaged file is an error, never a snapshot.
func TestSnapshotFile(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	defer j.Close()
	if _, err := j.Append(Write{Events: []events.Event{delivered("E1", "r"), delivered("E2", "r")}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := j.Snapshot("queue"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("no snapshot yet: %v", err)
	}
	putOlderSnapshot(t, j, 1, "old")
	if seq, data, err := j.Snapshot("queue"); err != nil || seq != 1 || string(data) != "old" {
		t.Fatalf("older snapshot: %d %q %v", seq, data, err)
	}
	if err := j.PutSnapshot("queue", 2, []byte("new state")); err != nil {
		t.Fatal(err)
	}
	if seq, data, err := j.Snapshot("queue"); err != nil || seq != 2 || string(data) != "new state" {
		t.Fatalf("saved snapshot: %d %q %v", seq, data, err)
	}
	if _, closer, err := j.db.Get([]byte(prefixSnapshot + "queue")); err == nil {
		closer.Close()
		t.Fatal("the older snapshot is still in the index")
	}
	path := filepath.Join(dir, "SNAPSHOT-queue")
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasSuffix(b, []byte("new state")) {
		t.Fatalf("snapshot file: %q %v", b, err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := j.Snapshot("queue"); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("flipped snapshot: %v", err)
	}
	if err := os.WriteFile(path, b[:5], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := j.Snapshot("queue"); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("cut snapshot: %v", err)
	}
}

// OpenSnapshot streams what Snapshot returns, older form included; a
// damaged file reads to its end and fails there, on the checksum.
func TestOpenSnapshotChecksAtItsEnd(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	defer j.Close()
	if _, err := j.Append(Write{Events: []events.Event{delivered("E1", "r"), delivered("E2", "r")}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := j.OpenSnapshot("queue"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("no snapshot yet: %v", err)
	}
	putOlderSnapshot(t, j, 1, "old")
	read := func() (uint64, string, int64, error) {
		seq, sr, err := j.OpenSnapshot("queue")
		if err != nil {
			return 0, "", 0, err
		}
		defer sr.Close()
		b, err := io.ReadAll(iotest.OneByteReader(sr))
		return seq, string(b), sr.Size(), err
	}
	if seq, data, size, err := read(); err != nil || seq != 1 || data != "old" || size != 3 {
		t.Fatalf("older form: %d %q %d %v", seq, data, size, err)
	}
	state := strings.Repeat("new state ", 1000)
	if err := j.PutSnapshot("queue", 2, []byte(state)); err != nil {
		t.Fatal(err)
	}
	if seq, data, size, err := read(); err != nil || seq != 2 || data != state || size != int64(len(state)) {
		t.Fatalf("saved snapshot: %d, %d bytes, size %d, %v", seq, len(data), size, err)
	}
	path := filepath.Join(dir, "SNAPSHOT-queue")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, data, _, err := read(); err == nil || !strings.Contains(err.Error(), "checksum") || len(data) != len(state) {
		t.Fatalf("damaged snapshot: %d bytes, %v", len(data), err)
	}
}

// putOlderSnapshot saves a queue snapshot as earlier versions did: a value
// in the index.
func putOlderSnapshot(t *testing.T, j *Journal, seq uint64, data string) {
	t.Helper()
	old := binary.BigEndian.AppendUint64(nil, seq)
	old = binary.BigEndian.AppendUint32(old, crc32.Checksum([]byte(data), castagnoli))
	old = append(old, data...)
	if err := j.db.Set([]byte(prefixSnapshot+"queue"), old, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// A state written as it is encoded, larger than the writer's buffer, reads
// back whole under the sequence number write returned; a write that fails
// leaves the snapshot there was.
func TestWriteSnapshotStreams(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	if _, err := j.Append(Write{Events: []events.Event{delivered("E1", "r"), delivered("E2", "r"), delivered("E3", "r")}}); err != nil {
		t.Fatal(err)
	}
	state := bytes.Repeat([]byte("0123456789abcdef"), 100000) // 1.6 MB
	seq, size, err := j.WriteSnapshot("queue", func(w io.Writer) (uint64, error) {
		for b := state; len(b) > 0; b = b[min(len(b), 7000):] {
			if _, err := w.Write(b[:min(len(b), 7000)]); err != nil {
				return 0, err
			}
		}
		return 3, nil
	})
	if err != nil || seq != 3 || size != int64(len(state)) {
		t.Fatalf("WriteSnapshot: seq %d, size %d, %v", seq, size, err)
	}
	got, data, err := j.Snapshot("queue")
	if err != nil || got != 3 || !bytes.Equal(data, state) {
		t.Fatalf("read back: seq %d, %d bytes, %v", got, len(data), err)
	}
	if _, _, err := j.WriteSnapshot("queue", func(w io.Writer) (uint64, error) {
		w.Write([]byte("half a state"))
		return 0, errors.New("encoding failed")
	}); err == nil || !strings.Contains(err.Error(), "encoding failed") {
		t.Fatalf("a failed write: %v", err)
	}
	if got, data, err := j.Snapshot("queue"); err != nil || got != 3 || !bytes.Equal(data, state) {
		t.Fatalf("after a failed write: seq %d, %d bytes, %v", got, len(data), err)
	}
	if left, _ := filepath.Glob(filepath.Join(j.Dir(), ".SNAPSHOT-queue.tmp-*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// A snapshot saved on a full disk (a real tmpfs, filled) fails with the
// filesystem's error and leaves the snapshot there was, whole, and no
// temporary file.
func TestWriteSnapshotOnAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a tmpfs to fill needs root (run `make test` as root, as CI does)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	j := openT(t, dir)
	filler := filepath.Join(dir, "filler")
	// Room again before Close: Close flushes the index's memtable, and
	// on a full disk that flush waits for room (not what this test is
	// about).
	defer j.Close()
	defer os.Remove(filler)
	if _, err := j.Append(Write{Events: []events.Event{delivered("E1", "r")}}); err != nil {
		t.Fatal(err)
	}
	if err := j.PutSnapshot("queue", 1, []byte("the state before")); err != nil {
		t.Fatal(err)
	}
	// Fill what is left.
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	big := bytes.Repeat([]byte("x"), 4<<20)
	_, _, err = j.WriteSnapshot("queue", func(w io.Writer) (uint64, error) {
		_, err := w.Write(big)
		return 1, err
	})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("a snapshot on a full disk: %v, want the filesystem's error", err)
	}
	if seq, data, err := j.Snapshot("queue"); err != nil || seq != 1 || string(data) != "the state before" {
		t.Fatalf("after the failed save: seq %d, %q, %v", seq, data, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".SNAPSHOT-queue.tmp-*")); len(left) > 0 {
		t.Fatalf("temporary files left on the full disk: %v", left)
	}
}
