package journal

import (
	"fmt"
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

// zip compresses b into dst when dst has room for the worst case (the
// writer passes its own buffer back each commit), into a new slice if not.
//
// Frames of 4 to 16 KiB take S2's default encoder rather than its "better"
// one: in klauspost/compress v1.18.0 the better encoder keeps its 80 KiB
// table (inputs of 4–16 KiB) and its 576 KiB table (16 KiB and more) in the
// same pool, so frames that alternate between the two sizes, as group
// commits do, allocated a new 576 KiB table almost every time (a fifth of
// all the bytes the server allocated under load).
func zip(dst, b []byte) []byte {
	enc := s2.EncodeBetter
	if len(b) >= 4<<10 && len(b) < 16<<10 {
		enc = s2.Encode
	}
	if n := s2.MaxEncodedLen(len(b)); n > 0 && cap(dst) >= n {
		return enc(dst[:n], b)
	}
	return enc(nil, b)
}

func unzip(b []byte) ([]byte, error) { return unzipInto(nil, b) }

// unzipInto is unzip decoding into dst when it is large enough.
func unzipInto(dst, b []byte) ([]byte, error) {
	n, err := s2.DecodedLen(b)
	if err != nil {
		return nil, err
	}
	if n > maxFrameContent {
		return nil, fmt.Errorf("claims %d bytes", n)
	}
	return s2.Decode(dst, b)
}

// frameBuf holds the one frame a sequential reader (a scan) is in, in
// buffers it reuses from frame to frame: such a reader reads each frame
// once, in order, so the shared cache would only churn and every frame
// would be two fresh allocations.
type frameBuf struct {
	key        frameKey
	have       bool
	raw, plain []byte // plain: the frame's content, once have
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
//
// With fb, the frame is read through it instead of the shared cache: the
// content stays valid until fb reads another frame.
func (j *Journal) frameContent(seq, seg uint64, off int64, fb *frameBuf) ([]byte, error) {
	k := frameKey{seg, off}
	if fb != nil {
		if fb.have && fb.key == k {
			return fb.plain, nil
		}
		fb.have = false
	} else if c, ok := j.frames.get(k); ok {
		return c, nil
	}
	f, err := j.segmentOf(seq, seg)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	// frameAt checks the stored lengths against the file's size before it
	// allocates: a damaged header cannot claim gigabytes.
	plain, _, _, magic, why, err := frameInto(f, off, st.Size(), fb)
	if err != nil {
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	if why == "" && magic == frameMagic {
		why = "has a damaged header" // a compressed frame's pointer, an uncompressed frame
	}
	if why != "" {
		return nil, &CorruptError{Seq: seq, Reason: fmt.Sprintf("its frame at %s offset %d %s", segmentName(seg), off, why)}
	}
	if fb != nil {
		fb.key, fb.have, fb.plain = k, true, plain
		return plain, nil
	}
	j.frames.put(k, plain)
	return plain, nil
}
