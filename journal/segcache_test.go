package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// A body reader's segment stays open while it is held, through evictions
// and a forget (the segment being deleted), and is closed at its release;
// an unheld one is closed as it leaves the cache; a segment that grew is
// seen at its new size.
func TestSegCacheHoldsFilesForReaders(t *testing.T) {
	dir := t.TempDir()
	path := func(seg uint64) string { return filepath.Join(dir, fmt.Sprint(seg)) }
	for seg := uint64(1); seg <= maxOpenSegments+2; seg++ {
		if err := os.WriteFile(path(seg), []byte("segment"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := &segCache{dir: path, files: map[uint64]*segFile{}}
	held, size, err := c.acquire(1, 7)
	if err != nil || size != 7 {
		t.Fatalf("acquire: size %d, %v", size, err)
	}
	unheld, err := c.get(2)
	if err != nil {
		t.Fatal(err)
	}
	for seg := uint64(3); seg <= maxOpenSegments+2; seg++ { // evicts
		if _, err := c.get(seg); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.files) > maxOpenSegments {
		t.Fatalf("%d files open, bound %d", len(c.files), maxOpenSegments)
	}
	c.forget(1)
	c.forget(2)
	buf := make([]byte, 7)
	if _, err := held.f.ReadAt(buf, 0); err != nil || string(buf) != "segment" {
		t.Fatalf("held segment after eviction and forget: %q, %v", buf, err)
	}
	if _, err := unheld.ReadAt(buf, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("an unheld segment out of the cache is still open: %v", err)
	}
	c.release(held)
	if _, err := held.f.ReadAt(buf, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("released after its forget, still open: %v", err)
	}
	// Growth: a body past the size last seen makes the cache look again.
	f, err := os.OpenFile(path(5), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte(" grown"))
	f.Close()
	if sf, size, err := c.acquire(5, 13); err != nil || size != 13 {
		t.Fatalf("grown segment seen at %d bytes (%v), want 13", size, err)
	} else {
		c.release(sf)
	}
	c.closeAll()
	if len(c.files) != 0 {
		t.Fatalf("%d files left after closeAll", len(c.files))
	}
}
