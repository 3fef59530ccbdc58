package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"

	"github.com/klauspost/compress/s2"
)

// Compressed frames: the content of a frame (body pointers, drops and
// records: JSON, mostly alike from one record to the next) is compressed
// with S2 (Snappy's successor: some 5 µs to compress and 10 µs to
// decompress a frame of a few KB); a record is read by decompressing its
// frame, and the frames read last are kept (frameCache) since readers go
// through neighbouring records.

// maxFrameContent bounds what a damaged frame may claim to decompress to.
const maxFrameContent = 64 << 20

func zip(b []byte) []byte { return s2.EncodeBetter(nil, b) }

func unzip(b []byte) ([]byte, error) {
	n, err := s2.DecodedLen(b)
	if err != nil {
		return nil, err
	}
	if n > maxFrameContent {
		return nil, fmt.Errorf("claims %d bytes", n)
	}
	return s2.Decode(nil, b)
}

// frameCache keeps the decompressed content of the frames read last.
type frameCache struct {
	mu    sync.Mutex
	items map[frameKey][]byte
	order []frameKey
}

type frameKey struct {
	seg uint64
	off int64
}

const maxCachedFrames = 64

func (c *frameCache) get(k frameKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.items[k]
	return b, ok
}

func (c *frameCache) put(k frameKey, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.items == nil {
		c.items = map[frameKey][]byte{}
	}
	if _, ok := c.items[k]; ok {
		return
	}
	if len(c.order) >= maxCachedFrames {
		delete(c.items, c.order[0])
		c.order = c.order[1:]
	}
	c.items[k] = b
	c.order = append(c.order, k)
}

// frameContent returns the decompressed content of the compressed frame at
// off in segment seg, checking its CRC (a failure is a *CorruptError for
// the record seq being read).
func (j *Journal) frameContent(seq, seg uint64, off int64) ([]byte, error) {
	k := frameKey{seg, off}
	if c, ok := j.frames.get(k); ok {
		return c, nil
	}
	f, err := j.segs.get(seg)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &CorruptError{Seq: seq, Reason: fmt.Sprintf("its log segment %s is gone", segmentName(seg))}
		}
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	corrupt := func(why string) error {
		return &CorruptError{Seq: seq, Reason: fmt.Sprintf("its frame at %s offset %d %s", segmentName(seg), off, why)}
	}
	var h [frameHeader]byte
	if _, err := f.ReadAt(h[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, corrupt("is cut short (the segment is truncated)")
		}
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	if m := binary.BigEndian.Uint32(h[0:]); m != frameMagicZ && m != frameMagicE {
		return nil, corrupt("has a damaged header")
	}
	bl, cl := int64(binary.BigEndian.Uint32(h[4:])), int64(binary.BigEndian.Uint32(h[8:]))
	c := make([]byte, cl)
	if _, err := f.ReadAt(c, off+frameHeader+bl); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, corrupt("is cut short (the segment is truncated)")
		}
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	if got, want := crc32.Checksum(c, castagnoli), binary.BigEndian.Uint32(h[12:]); got != want {
		return nil, corrupt(fmt.Sprintf("fails its checksum (stored %08x, computed %08x)", want, got))
	}
	plain, err := unzip(c)
	if err != nil {
		return nil, corrupt(fmt.Sprintf("does not decompress: %v", err))
	}
	j.frames.put(k, plain)
	return plain, nil
}
