package journal

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// 10,000 Appends at once, through a small request queue and with a
// subscriber, all finish: a full queue makes callers wait, never deadlock.
func TestTenThousandConcurrentAppends(t *testing.T) {
	j, err := Open(Options{Dir: t.TempDir(), QueueSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var seen int
	j.Subscribe(func(evs []events.Event) { seen += len(evs) })
	const n = 10000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := j.Append(Write{Events: []events.Event{delivered(fmt.Sprintf("E%d", i), "r")}}); err != nil {
				errs <- err
			}
		}(i)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("appends stalled")
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if j.LastSeq() != n || seen != n {
		t.Fatalf("LastSeq %d, subscriber saw %d, want %d", j.LastSeq(), seen, n)
	}
}

// Close with appends still waiting returns; each append either committed
// (and is on disk) or says ErrClosed.
func TestCloseWithPendingAppends(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Options{Dir: dir, QueueSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := j.Append(Write{Events: []events.Event{delivered(fmt.Sprintf("E%d", i), "r")}})
			switch {
			case err == nil:
				mu.Lock()
				ok++
				mu.Unlock()
			case !errors.Is(err, ErrClosed):
				t.Errorf("append: %v", err)
			}
		}(i)
	}
	closed := make(chan error, 1)
	go func() { closed <- j.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Close did not return")
	}
	wg.Wait()
	j = openT(t, dir)
	defer j.Close()
	if int(j.LastSeq()) != ok {
		t.Fatalf("%d appends succeeded, the journal holds %d", ok, j.LastSeq())
	}
}

func appendN(t *testing.T, j *Journal, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := j.Append(Write{Events: []events.Event{delivered(fmt.Sprintf("E%d", i), "r")}}); err != nil {
			t.Fatal(err)
		}
	}
}

func filesOf(t *testing.T, dir, suffix string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+suffix))
	sort.Strings(m)
	return m
}

func flipByte(t *testing.T, path string, at func(size int) int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[at(len(b))] ^= 0x5a
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// countScan scans everything and returns the events read.
func countScan(t *testing.T, j *Journal) int {
	t.Helper()
	n := 0
	if err := j.Scan(1, func(events.Event) error { n++; return nil }); err != nil {
		t.Fatalf("scan: %v", err)
	}
	return n
}

// crashCopy copies dir as it is on disk while its journal is open: what a
// kill -9 or a power failure would leave (the index's memtable is lost).
func crashCopy(t *testing.T, dir string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		if d.Name() == "LOCK" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// The index has no WAL: after a crash, what its memtable held is
// re-indexed from the log, by a read-only Open (in memory, changing
// nothing) and by a writable one; nothing is lost and the log goes on.
func TestIndexLostInACrashIsRebuilt(t *testing.T) {
	src := t.TempDir()
	j := openT(t, src)
	appendN(t, j, 50)
	dir := crashCopy(t, src)
	j.Close()
	before := hashDir(t, dir)
	ro, err := Open(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open after a crash: %v", err)
	}
	if n := countScan(t, ro); n != 50 || ro.LastSeq() != 50 || ro.recovered == 0 {
		t.Fatalf("read-only: %d events, last %d, %d frames re-indexed; want 50 from the log", n, ro.LastSeq(), ro.recovered)
	}
	ro.Close()
	after := hashDir(t, dir)
	for p, h := range before {
		if after[p] != h {
			t.Errorf("a read-only open changed %s", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok && filepath.Base(p) != "LOCK" {
			t.Errorf("a read-only open created %s", p)
		}
	}
	j, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("open after a crash: %v", err)
	}
	if n := countScan(t, j); n != 50 || j.recovered == 0 {
		t.Fatalf("%d events after recovery (%d frames re-indexed), want 50 from the log", n, j.recovered)
	}
	appendN(t, j, 1) // and the log goes on
	j.Close()
	j = openT(t, dir)
	defer j.Close()
	if n := countScan(t, j); n != 51 || j.recovered != 0 {
		t.Fatalf("%d events (%d frames re-indexed) after a clean reopen", n, j.recovered)
	}
}

// logSegments returns the journal's log segments (those with logMagic).
func logSegments(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, p := range filesOf(t, filepath.Join(dir, bodiesDir), ".seg") {
		if b, _ := os.ReadFile(p); strings.HasPrefix(string(b), logMagic) {
			out = append(out, p)
		}
	}
	return out
}

// Damage to the log where the index cannot stand in for it (after a
// crash, the part its memtable held): acknowledged records that are gone
// are reported by Open (LostError), never skipped.
func TestLogTailDamageIsDetected(t *testing.T) {
	for name, damage := range map[string]func(t *testing.T, seg string){
		"truncate": func(t *testing.T, seg string) {
			st, _ := os.Stat(seg)
			if err := os.Truncate(seg, st.Size()*2/3); err != nil {
				t.Fatal(err)
			}
		},
		"flip": func(t *testing.T, seg string) { flipByte(t, seg, func(n int) int { return n * 2 / 3 }) },
	} {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			j := openT(t, src)
			appendN(t, j, 50)
			dir := crashCopy(t, src)
			j.Close()
			segs := logSegments(t, dir)
			if len(segs) != 1 {
				t.Fatalf("%d log segments", len(segs))
			}
			damage(t, segs[0])
			_, err := Open(Options{Dir: dir})
			var le *LostError
			if !errors.As(err, &le) || le.Committed != 50 || le.End >= 50 || le.End < 1 {
				t.Fatalf("open after log damage: %v", err)
			}
			// Told to, it opens, keeps what is intact, and scans report the loss.
			j, err = Open(Options{Dir: dir, AllowLost: true, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			err = j.Scan(1, func(events.Event) error { return nil })
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Seq != le.End+1 || !strings.Contains(ce.Reason, "ends at") {
				t.Fatalf("scan: %v", err)
			}
		})
	}
}

// A record damaged in the log, below the index, is reported with its
// sequence number by every read.
func TestLogRecordFlipIsReported(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	appendN(t, j, 20)
	v, closer, err := j.db.Get(eventKey(7))
	if err != nil {
		t.Fatal(err)
	}
	p := decodePtr(v)
	closer.Close()
	j.Close()
	at := int(p.off) + int(p.n) - 10 // in the record
	if p.zipped {
		at = int(p.frame) + frameHeader + 3 // in its frame's compressed content (no bodies)
	}
	flipByte(t, j.bodies.path(p.seg), func(int) int { return at })
	j = openT(t, dir)
	defer j.Close()
	if _, err := j.Event(7); !isCorruptAt(err, 7) {
		t.Fatalf("Event(7): %v", err)
	}
	if err := j.Scan(1, func(events.Event) error { return nil }); !isCorruptAt(err, 7) {
		t.Fatalf("Scan: %v", err)
	}
}

func isCorruptAt(err error, seq uint64) bool {
	var ce *CorruptError
	return errors.As(err, &ce) && ce.Seq == seq
}

func hashDir(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		out[p] = sha256.Sum256(b)
		return nil
	})
	return out
}

// ReadOnly changes nothing, even on a journal whose MANIFEST is damaged
// (read-write, Pebble would delete the tables it no longer references).
func TestReadOnlyChangesNothing(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	appendN(t, j, 30)
	if err := j.db.Flush(); err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 10) // some in the WAL only
	j.Close()
	before := hashDir(t, dir)
	j, err := Open(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(collect(t, j, 1)); got != 40 {
		t.Fatalf("read %d events", got)
	}
	if _, err := j.Append(Write{Events: []events.Event{delivered("X", "r")}}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("append read-only: %v", err)
	}
	j.Close()
	if after := hashDir(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("read-only open changed the directory:\nbefore %v\nafter  %v", before, after)
	}
	m := filesOf(t, dir, "")
	var manifest string
	for _, f := range m {
		if strings.HasPrefix(filepath.Base(f), "MANIFEST-") {
			manifest = f
		}
	}
	flipByte(t, manifest, func(n int) int { return n - 20 })
	flipByte(t, manifest, func(n int) int { return n - 19 })
	before = hashDir(t, dir)
	if j, err := Open(Options{Dir: dir, ReadOnly: true}); err == nil {
		n := 0
		serr := j.Scan(1, func(events.Event) error { n++; return nil })
		j.Close()
		if serr == nil && n != 40 {
			t.Fatalf("damaged MANIFEST: read %d of 40 events and no error", n)
		}
	}
	if after := hashDir(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("read-only open of a damaged journal changed the directory")
	}
}

// A flipped byte inside a table surfaces as an error, never a panic.
func TestSSTFlipIsAnErrorNotAPanic(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	appendN(t, j, 200)
	if err := j.db.Flush(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	ssts := filesOf(t, dir, ".sst")
	if len(ssts) == 0 {
		t.Fatal("no table written")
	}
	flipByte(t, ssts[0], func(n int) int { return n / 3 })
	j, err := Open(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		if strings.Contains(err.Error(), "goroutine") {
			t.Fatalf("open: %v", err)
		}
		return // reported at open: fine
	}
	defer j.Close()
	err = j.Scan(1, func(events.Event) error { return nil })
	if err == nil {
		err = j.Verify(j.LastSeq(), nil)
	}
	if err == nil || !strings.Contains(err.Error(), ".sst") && !strings.Contains(err.Error(), "corrupt") && !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("scan of a corrupt table: %v", err)
	}
}

// A corrupt last record no longer stops Open: the readers report it.
func TestCorruptLastRecordOpens(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	appendN(t, j, 5)
	bad := rawRecord(t, j, 5)
	bad[20] ^= 1
	if err := j.db.Set(eventKey(5), bad, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = openT(t, dir)
	defer j.Close()
	if j.TailError() == nil || j.LastSeq() != 5 {
		t.Fatalf("tail error %v, last %d", j.TailError(), j.LastSeq())
	}
	var reported []uint64
	j.ScanTolerant(1, func(events.Event) error { return nil }, func(ce *CorruptError) error {
		reported = append(reported, ce.Seq)
		return nil
	})
	if fmt.Sprint(reported) != "[5]" {
		t.Fatalf("reported %v", reported)
	}
	// Appends continue the chain from the stored checksum.
	appendN(t, j, 1)
	reported = nil
	j.ScanTolerant(1, func(events.Event) error { return nil }, func(ce *CorruptError) error {
		reported = append(reported, ce.Seq)
		return nil
	})
	if fmt.Sprint(reported) != "[5]" {
		t.Fatalf("after append, reported %v", reported)
	}
}

// A COMMITTED file that fails its checksum is refused, naming it.
func TestCorruptCommittedFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	appendN(t, j, 3)
	j.Close()
	flipByte(t, filepath.Join(dir, CommittedFile), func(int) int { return 2 })
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), CommittedFile) {
		t.Fatalf("open with a corrupt %s: %v", CommittedFile, err)
	}
	if j, err := Open(Options{Dir: dir, AllowLost: true, ReadOnly: true}); err != nil {
		t.Fatalf("AllowLost open: %v", err)
	} else {
		j.Close()
	}
}

// BodyChecked refuses a body that fails its recorded SHA-256.
func TestBodyChecked(t *testing.T) {
	j := openT(t, t.TempDir())
	defer j.Close()
	data := []byte("Subject: x\r\n\r\nbody\r\n")
	if _, err := j.Append(Write{Bodies: []Body{{Key: "K", Data: data}}, Events: []events.Event{delivered("K", "r")}}); err != nil {
		t.Fatal(err)
	}
	if b, err := j.BodyChecked("K", BodySum(data)); err != nil || string(b) != string(data) {
		t.Fatalf("good body: %v", err)
	}
	var bce *BodyCorruptError
	if _, err := j.BodyChecked("K", BodySum([]byte("other"))); !errors.As(err, &bce) || bce.Key != "K" {
		t.Fatalf("mismatch: %v", err)
	}
	if _, err := j.BodyChecked("K", ""); err != nil {
		t.Fatalf("unchecked read: %v", err)
	}
}

// A frame header whose content length was damaged upwards is reported as
// a corrupt record (cut short), without allocating what it claims.
func TestFrameLengthDamageIsReported(t *testing.T) {
	dir := t.TempDir()
	j := openT(t, dir)
	appendN(t, j, 3)
	v, closer, err := j.db.Get(eventKey(2))
	if err != nil {
		t.Fatal(err)
	}
	p := decodePtr(v)
	closer.Close()
	j.Close()
	if !p.zipped {
		t.Fatal("record 2 is not in a compressed frame")
	}
	path := j.bodies.path(p.seg)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[p.frame+8:], []byte{0xff, 0xff, 0xff, 0xf0}) // content length
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	j = openT(t, dir)
	defer j.Close()
	if _, err := j.Event(2); !isCorruptAt(err, 2) || !strings.Contains(err.Error(), "cut short") {
		t.Fatalf("Event(2): %v", err)
	}
}
