package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// The log. The shared body segments are the journal's log: each group
// commit appends one frame to the current one and fdatasyncs it, once,
// before anything is acknowledged. A frame holds the commit's small bodies
// and then its content: where each body of the commit went, the bodies it
// drops, and its records (the chained, checksummed records described in
// record.go). Pebble is the index of the log: a pointer per record
// (e/<seq>), the per-envelope index, the body pointers and references, the
// last record of each log segment (l/<seg>) and the end of the last frame
// it holds (m/logpos). Pebble runs without a WAL: whatever of its memtable a
// crash loses, Open rebuilds from the frames after m/logpos (recoverLog).
// So a commit costs one fsync, and a record is written once (to the log)
// rather than through a WAL, a flush and compactions; what the index
// writes is small pointers.
//
// A log segment starts with logMagic; segments without it hold one large
// body each (CreateBodyFile), or bodies from before the log existed.
//
// Frame layout (integers big-endian):
//
//	magic(4) | bodies length(4) | content length(4) | crc32c of content(4)
//	bodies | content
//
// content: uvarint count, then per body uvarint key length, key, BodyRef
// (24); uvarint count, then per dropped body uvarint key length, key;
// uvarint count, then per record (LMF3) uvarint length, envelope ID, and
// uvarint length, record. LMF1 and LMF2 frames (no envelope IDs) are read
// too.
const (
	logMagic    = "LMLOG01\n"
	frameMagic  = 0x4c4d4631 // "LMF1": content as is
	frameMagicZ = 0x4c4d4632 // "LMF2": content compressed with S2
	// "LMF3": compressed, and each record preceded by its envelope ID, so
	// that recovery re-indexes without decoding events (what is written).
	frameMagicE = 0x4c4d4633
	frameHeader = 16
	prefixLog   = "l/" // l/<seg:8 BE> -> last sequence number recorded in it
	// ptrFormat marks an e/<seq> value that points into the log rather
	// than holding the record (records written before the log existed).
	ptrFormat = 3
	ptrLen    = 1 + 8 + 8 + 4
	// ptrFormatZ points at a record inside a compressed frame: segment,
	// the frame's offset, the record's offset in the frame's content once
	// decompressed, and its length.
	ptrFormatZ = 4
	ptrLenZ    = 1 + 8 + 8 + 4 + 4
)

var metaLogPosKey = []byte(prefixMeta + "logpos")

func logSegKey(seg uint64) []byte { return binary.BigEndian.AppendUint64([]byte(prefixLog), seg) }

// recordPtr says where a record is in the log: at off in segment seg, or,
// with frame set, at off in the content of the compressed frame that
// starts at offset frame.
type recordPtr struct {
	seg    uint64
	off    int64
	n      uint32
	frame  int64
	zipped bool
}

func (p recordPtr) encode() []byte {
	if p.zipped {
		b := make([]byte, 0, ptrLenZ)
		b = append(b, ptrFormatZ)
		b = binary.BigEndian.AppendUint64(b, p.seg)
		b = binary.BigEndian.AppendUint64(b, uint64(p.frame))
		b = binary.BigEndian.AppendUint32(b, uint32(p.off))
		return binary.BigEndian.AppendUint32(b, p.n)
	}
	b := make([]byte, 0, ptrLen)
	b = append(b, ptrFormat)
	b = binary.BigEndian.AppendUint64(b, p.seg)
	b = binary.BigEndian.AppendUint64(b, uint64(p.off))
	return binary.BigEndian.AppendUint32(b, p.n)
}

func isPtr(v []byte) bool {
	return len(v) == ptrLen && v[0] == ptrFormat || len(v) == ptrLenZ && v[0] == ptrFormatZ
}

func decodePtr(v []byte) recordPtr {
	if v[0] == ptrFormatZ {
		return recordPtr{seg: binary.BigEndian.Uint64(v[1:]), frame: int64(binary.BigEndian.Uint64(v[9:])),
			off: int64(binary.BigEndian.Uint32(v[17:])), n: binary.BigEndian.Uint32(v[21:]), zipped: true}
	}
	return recordPtr{seg: binary.BigEndian.Uint64(v[1:]), off: int64(binary.BigEndian.Uint64(v[9:])), n: binary.BigEndian.Uint32(v[17:])}
}

type logPos struct {
	seg uint64
	end int64
}

func (p logPos) encode() []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), p.seg)
	return binary.BigEndian.AppendUint64(b, uint64(p.end))
}

// frame is one commit's frame being built by the writer.
type frame struct {
	seg     uint64
	start   int64 // offset of the header
	refs    []frameRef
	drops   []string
	records [][]byte
	envs    []string // the envelope of each record
}

type frameRef struct {
	key string
	ref BodyRef
}

// content encodes the frame's content into buf (reusing its memory);
// recOff[i] is where record i starts within it.
func (f *frame) content(buf []byte) (out []byte, recOff []int) {
	b := binary.AppendUvarint(buf[:0], uint64(len(f.refs)))
	for _, r := range f.refs {
		b = binary.AppendUvarint(b, uint64(len(r.key)))
		b = append(b, r.key...)
		b = append(b, r.ref.encode()...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.drops)))
	for _, k := range f.drops {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.records)))
	recOff = make([]int, len(f.records))
	for i, r := range f.records {
		b = binary.AppendUvarint(b, uint64(len(f.envs[i])))
		b = append(b, f.envs[i]...)
		b = binary.AppendUvarint(b, uint64(len(r)))
		recOff[i] = len(b)
		b = append(b, r...)
	}
	return b, recOff
}

// parsedFrame is a frame read back from the log.
type parsedFrame struct {
	refs    []frameRef
	drops   []string
	records [][]byte
	envs    []string // LMF3: the envelope of each record
	// recOff are the records' offsets: in the segment, or, for a
	// compressed frame (zipped), in its decompressed content.
	recOff []int64
	start  int64 // the frame's offset
	end    int64
	zipped bool
}

// ptr is where record i of the frame is.
func (p *parsedFrame) ptr(seg uint64, i int) recordPtr {
	return recordPtr{seg: seg, off: p.recOff[i], n: uint32(len(p.records[i])), frame: p.start, zipped: p.zipped}
}

// parseContent decodes a frame's content found at offset base.
func parseContent(c []byte, base int64, withEnvs bool) (*parsedFrame, error) {
	p := &parsedFrame{}
	pos := 0
	uv := func() (int, error) {
		v, n := binary.Uvarint(c[pos:])
		if n <= 0 || v > uint64(len(c)) {
			return 0, errors.New("malformed frame")
		}
		pos += n
		return int(v), nil
	}
	bytesOf := func(n int) ([]byte, error) {
		if pos+n > len(c) {
			return nil, errors.New("malformed frame")
		}
		b := c[pos : pos+n]
		pos += n
		return b, nil
	}
	str := func() (string, error) { // uvarint length, bytes
		n, err := uv()
		if err != nil {
			return "", err
		}
		b, err := bytesOf(n)
		return string(b), err
	}
	n, err := uv()
	if err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		k, err := str()
		if err != nil {
			return nil, err
		}
		rb, err := bytesOf(24)
		if err != nil {
			return nil, err
		}
		ref, _ := decodeBodyRef(rb)
		p.refs = append(p.refs, frameRef{key: k, ref: ref})
	}
	if n, err = uv(); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		k, err := str()
		if err != nil {
			return nil, err
		}
		p.drops = append(p.drops, k)
	}
	if n, err = uv(); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		if withEnvs {
			env, err := str()
			if err != nil {
				return nil, err
			}
			p.envs = append(p.envs, env)
		}
		rl, err := uv()
		if err != nil {
			return nil, err
		}
		off := pos
		r, err := bytesOf(rl)
		if err != nil {
			return nil, err
		}
		p.records = append(p.records, r)
		p.recOff = append(p.recOff, base+int64(off))
	}
	if pos != len(c) {
		return nil, errors.New("malformed frame")
	}
	return p, nil
}

// frameAt reads and checks the frame at off in f (size bytes long): its
// content (decompressed when the frame is compressed), where the stored
// content starts, where the frame ends, and its magic. why says what is
// wrong with a frame that is damaged or cut short; err is an I/O error.
func frameAt(f *os.File, off, size int64) (c []byte, coff, end int64, magic uint32, why string, err error) {
	return frameInto(f, off, size, nil)
}

// frameInto is frameAt reading into fb's buffers, which it grows as needed
// (nil: fresh ones). The content returned may be one of them.
func frameInto(f *os.File, off, size int64, fb *frameBuf) (c []byte, coff, end int64, magic uint32, why string, err error) {
	const short = "is cut short (the segment is truncated)"
	if off+frameHeader > size {
		return nil, 0, 0, 0, short, nil
	}
	var h [frameHeader]byte
	if _, err := f.ReadAt(h[:], off); err != nil {
		return nil, 0, 0, 0, "", err
	}
	magic = binary.BigEndian.Uint32(h[0:])
	if magic != frameMagic && magic != frameMagicZ && magic != frameMagicE {
		return nil, 0, 0, 0, "has a damaged header", nil
	}
	bl, cl := int64(binary.BigEndian.Uint32(h[4:])), int64(binary.BigEndian.Uint32(h[8:]))
	coff = off + frameHeader + bl
	if coff+cl > size {
		return nil, 0, 0, 0, short, nil
	}
	if fb != nil {
		if int64(cap(fb.raw)) < cl {
			fb.raw = make([]byte, cl)
		}
		c = fb.raw[:cl]
	} else {
		c = make([]byte, cl)
	}
	if _, err := f.ReadAt(c, coff); err != nil {
		return nil, 0, 0, 0, "", err
	}
	if got, want := crc32.Checksum(c, castagnoli), binary.BigEndian.Uint32(h[12:]); got != want {
		return nil, 0, 0, 0, fmt.Sprintf("fails its checksum (stored %08x, computed %08x)", want, got), nil
	}
	if magic != frameMagic {
		var dst []byte
		if fb != nil {
			dst = fb.plain[:cap(fb.plain)]
		}
		if c, err = unzipInto(dst, c); err != nil {
			return nil, 0, 0, 0, fmt.Sprintf("does not decompress: %v", err), nil
		}
	}
	return c, coff, coff + cl, magic, "", nil
}

// readFrame reads the frame at off in f (size bytes long); ok is false
// where no whole, intact frame is (the end of the log, or a torn write).
func readFrame(f *os.File, off, size int64) (*parsedFrame, bool) {
	c, coff, end, magic, why, err := frameAt(f, off, size)
	if why != "" || err != nil {
		return nil, false
	}
	base := coff
	if magic != frameMagic {
		base = 0 // offsets within the decompressed content
	}
	p, err := parseContent(c, base, magic == frameMagicE)
	if err != nil {
		return nil, false
	}
	p.start, p.end, p.zipped = off, end, magic != frameMagic
	return p, true
}

// isLogSegment reports whether f starts with logMagic.
func isLogSegment(f *os.File) bool {
	var b [len(logMagic)]byte
	_, err := f.ReadAt(b[:], 0)
	return err == nil && string(b[:]) == logMagic
}

// segCache keeps log segment files open for reading records and the
// bodies stored in them (a body read used to open, stat and close its
// segment). A body reader holds its file (acquire/release): a file leaves
// the cache when it is evicted, forgotten (being deleted) or the journal
// closes, and is closed then, or at its last reader's release. Records are
// read through get, without holding.
type segCache struct {
	dir   func(uint64) string
	mu    sync.Mutex
	files map[uint64]*segFile
}

// segFile is one open segment.
type segFile struct {
	f    *os.File
	size int64 // as last seen: a segment being written grows
	refs int   // body readers holding it
	gone bool  // out of the cache: closed at the last release
}

const maxOpenSegments = 64

// open returns seg's entry, opening the file if needed. c.mu is held.
func (c *segCache) open(seg uint64) (*segFile, error) {
	if sf, ok := c.files[seg]; ok {
		return sf, nil
	}
	f, err := os.Open(c.dir(seg))
	if err != nil {
		return nil, err
	}
	if len(c.files) >= maxOpenSegments {
		evict := uint64(0)
		for k, old := range c.files {
			evict = k
			if old.refs == 0 {
				break
			}
		}
		c.drop(evict)
	}
	sf := &segFile{f: f, size: -1}
	c.files[seg] = sf
	return sf, nil
}

// drop takes seg out of the cache, closing it unless a reader holds it.
// c.mu is held.
func (c *segCache) drop(seg uint64) {
	sf, ok := c.files[seg]
	if !ok {
		return
	}
	delete(c.files, seg)
	if sf.refs == 0 {
		sf.f.Close()
	} else {
		sf.gone = true
	}
}

func (c *segCache) get(seg uint64) (*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sf, err := c.open(seg)
	if err != nil {
		return nil, err
	}
	return sf.f, nil
}

// acquire holds seg's file for a body that ends at end, and returns it
// with the segment's size as last seen (seen again when it was less than
// end: the segment may have grown). The caller releases it.
func (c *segCache) acquire(seg uint64, end int64) (sf *segFile, size int64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sf, err = c.open(seg); err != nil {
		return nil, 0, err
	}
	if sf.size < end {
		st, err := sf.f.Stat()
		if err != nil {
			return nil, 0, err
		}
		sf.size = st.Size()
	}
	sf.refs++
	return sf, sf.size, nil
}

// release gives back a file acquire returned.
func (c *segCache) release(sf *segFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sf.refs--; sf.refs == 0 && sf.gone {
		sf.f.Close()
	}
}

// forget closes seg's file (it is being deleted), at once or at its last
// reader's release.
func (c *segCache) forget(seg uint64) {
	c.mu.Lock()
	c.drop(seg)
	c.mu.Unlock()
}

func (c *segCache) closeAll() {
	c.mu.Lock()
	for k := range c.files {
		c.drop(k)
	}
	c.mu.Unlock()
}

// recordBytes returns the record stored for seq: v itself, or, when v
// points into the log, the record read from there (a segment that is gone
// or too short is a *CorruptError).
func (j *Journal) recordBytes(seq uint64, v []byte, fb *frameBuf) ([]byte, error) {
	if !isPtr(v) {
		return v, nil
	}
	p := decodePtr(v)
	if p.zipped {
		c, err := j.frameContent(seq, p.seg, p.frame, fb)
		if err != nil {
			return nil, err
		}
		if p.off+int64(p.n) > int64(len(c)) {
			return nil, &CorruptError{Seq: seq, Reason: fmt.Sprintf("its frame at %s offset %d is shorter than its pointer", segmentName(p.seg), p.frame)}
		}
		return c[p.off : p.off+int64(p.n)], nil
	}
	f, err := j.segmentOf(seq, p.seg)
	if err != nil {
		return nil, err
	}
	b := make([]byte, p.n)
	if n, err := f.ReadAt(b, p.off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &CorruptError{Seq: seq, Reason: fmt.Sprintf("log segment %s is truncated (%d of the record's %d bytes at offset %d)", segmentName(p.seg), n, p.n, p.off)}
		}
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	return b, nil
}

// segmentOf opens the log segment that record seq is in (one that is gone
// is a *CorruptError).
func (j *Journal) segmentOf(seq, seg uint64) (*os.File, error) {
	f, err := j.segs.get(seg)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &CorruptError{Seq: seq, Reason: fmt.Sprintf("its log segment %s is gone", segmentName(seg))}
	}
	if err != nil {
		return nil, fmt.Errorf("journal: read record %d: %w", seq, err)
	}
	return f, nil
}

// loadRecord decodes the record stored for seq (see recordBytes).
func (j *Journal) loadRecord(seq uint64, v []byte) (record, []byte, error) {
	return j.loadRecordVia(seq, v, nil)
}

// loadRecordVia is loadRecord reading a compressed frame through fb (see
// frameContent): the record's bytes are valid until fb reads another
// frame.
func (j *Journal) loadRecordVia(seq uint64, v []byte, fb *frameBuf) (record, []byte, error) {
	raw, err := j.recordBytes(seq, v, fb)
	if err != nil {
		return record{}, nil, err
	}
	r, err := decodeRecord(seq, raw)
	return r, raw, err
}

// stageFrame stages in b what a frame says, as the commit that wrote it
// did: the body pointers, the drops, the records' pointers and index
// entries, the segment's last record and the log position. It returns
// where the dropped bodies were.
func (j *Journal) stageFrame(b *pebble.Batch, seg uint64, p *parsedFrame, evs []events.Event) ([]BodyRef, error) {
	var dropped []BodyRef
	for _, r := range p.refs {
		if err := stageRef(b, r.key, r.ref); err != nil {
			return nil, err
		}
	}
	for _, k := range p.drops {
		ref, err := j.stageDrop(b, k)
		if err != nil {
			return nil, err
		}
		if ref.Segment != 0 {
			dropped = append(dropped, ref)
		}
	}
	var last uint64
	for i, e := range evs {
		if err := b.Set(eventKey(e.Seq), p.ptr(seg, i).encode(), nil); err != nil {
			return nil, err
		}
		if err := b.Set(indexKey(e.Envelope, e.Seq), nil, nil); err != nil {
			return nil, err
		}
		if err := stageAddresses(b, e); err != nil {
			return nil, err
		}
		last = e.Seq
	}
	if last != 0 {
		if err := b.Set(logSegKey(seg), binary.BigEndian.AppendUint64(nil, last), nil); err != nil {
			return nil, err
		}
	}
	return dropped, b.Set(metaLogPosKey, logPos{seg: seg, end: p.end}.encode(), nil)
}

// recoverLog re-indexes the frames that follow the last one Pebble holds
// (m/logpos): those whose index a crash took from Pebble's memtable.
// It stops at the first place where no intact frame continues the
// sequence and the chain (a torn write: never acknowledged, or else the
// COMMITTED check reports the loss). Writable, the result is committed;
// read-only, it stays in an indexed batch through which reads go.
func (j *Journal) recoverLog() (err error) {
	defer recoverRead(&err)
	var pos logPos
	if v, closer, err := j.db.Get(metaLogPosKey); err == nil {
		if len(v) == 16 {
			pos = logPos{seg: binary.BigEndian.Uint64(v), end: int64(binary.BigEndian.Uint64(v[8:]))}
		}
		closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return j.storageError(0, fmt.Errorf("read the log position: %w", err))
	}
	segs, err := j.bodies.list()
	if err != nil {
		return nil // a read-only journal without a bodies directory
	}
	batch := j.db.NewIndexedBatch()
	j.rd = batch
	restore := func() { j.rd = j.db }
	found := 0
	seq, prev := j.lastSeq, j.lastLink
	var dropped []BodyRef
	for _, seg := range segs {
		if seg < pos.seg {
			continue
		}
		f, err := os.Open(j.bodies.path(seg))
		if err != nil {
			continue
		}
		st, err := f.Stat()
		if err != nil || !isLogSegment(f) {
			f.Close()
			continue
		}
		off := int64(len(logMagic))
		if seg == pos.seg {
			off = pos.end
		}
		for {
			p, ok := readFrame(f, off, st.Size())
			if !ok {
				break
			}
			evs := make([]events.Event, 0, len(p.records))
			fits := true
			for i, raw := range p.records {
				if len(raw) < 9 {
					fits = false
					break
				}
				r, err := decodeRecord(binary.BigEndian.Uint64(raw[1:9]), raw)
				if err != nil || r.seq != seq+1 || (seq > 0 && !r.follows(prev)) {
					fits = false
					break
				}
				e := events.Event{Seq: r.seq}
				if p.envs != nil && !hasAddresses(r.data) {
					e.Envelope = p.envs[i] // no need to decode the event
				} else if e, err = decodeEvent(r); err != nil { // for its addresses
					fits = false
					break
				}
				evs = append(evs, e)
				seq, prev = r.seq, r.linkOf()
			}
			if !fits {
				break // what follows cannot be trusted to continue the log
			}
			d, err := j.stageFrame(batch, seg, p, evs)
			if err != nil {
				f.Close()
				restore()
				batch.Close()
				return fmt.Errorf("journal: recover the log: %w", err)
			}
			dropped = append(dropped, d...)
			found++
			off = p.end
		}
		f.Close()
	}
	if found == 0 {
		restore()
		batch.Close()
		return nil
	}
	j.recovered = found
	if j.opts.ReadOnly {
		return nil // reads go through the batch
	}
	restore()
	if err := j.persist(batch); err != nil {
		batch.Close()
		return fmt.Errorf("journal: recover the log: %w", err)
	}
	batch.Close()
	j.punchHoles(dropped) // segments themselves are reclaimed by ReclaimSegments
	return nil
}

// pebbleReader is what reads go through: the database, or, for a
// read-only journal whose log had frames beyond its index, an indexed
// batch holding them on top of it.
type pebbleReader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// IndexWriteBytes is what the index has written to its tables so far
// (flushes and compactions): its share of the journal's device writes.
func (j *Journal) IndexWriteBytes() uint64 {
	t := j.db.Metrics().Total()
	return t.TableBytesFlushed + t.TableBytesCompacted
}
