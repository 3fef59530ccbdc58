package journal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Bodies live outside the LSM, in append-only segment files under
// <dir>/bodies/, named <number>.seg:
//   - small bodies (Body.Data) are appended by the writer goroutine to the
//     current shared segment, which it fsyncs once per group commit before
//     committing the events that refer to them;
//   - a large body is streamed by its session into a segment of its own
//     (CreateBodyFile), fsynced by Append before the writer sees it.
//
// Pebble holds a pointer per body (bodyRef: segment, offset, length) and a
// reference per (segment, body), so that a segment no body refers to can be
// deleted (ReclaimSegments). Bodies written before segments existed are
// Pebble values under prefixBody and are still read.
const (
	prefixBodyRef = "r/" // r/<key>                -> bodyRef
	prefixSegRef  = "g/" // g/<seg:8 BE>/<key>     -> empty
	bodiesDir     = "bodies"
	// SegmentSize is the size at which the shared segment is closed and a
	// new one started.
	SegmentSize = 64 << 20
)

// BodyRef says where a body is stored.
type BodyRef struct {
	Segment uint64
	Offset  int64
	Length  int64
}

func (r BodyRef) encode() []byte {
	b := make([]byte, 0, 24)
	b = binary.BigEndian.AppendUint64(b, r.Segment)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Offset))
	return binary.BigEndian.AppendUint64(b, uint64(r.Length))
}

func decodeBodyRef(b []byte) (BodyRef, error) {
	if len(b) != 24 {
		return BodyRef{}, fmt.Errorf("malformed body pointer (%d bytes)", len(b))
	}
	return BodyRef{Segment: binary.BigEndian.Uint64(b), Offset: int64(binary.BigEndian.Uint64(b[8:])), Length: int64(binary.BigEndian.Uint64(b[16:]))}, nil
}

func bodyRefKey(key string) []byte { return append([]byte(prefixBodyRef), key...) }

func segRefPrefix(seg uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefixSegRef), seg)
}

func segRefKey(seg uint64, key string) []byte {
	return append(append(segRefPrefix(seg), '/'), key...)
}

func segmentName(seg uint64) string { return fmt.Sprintf("%012d.seg", seg) }

// bodyStore is the segment directory. next and open are shared; cur is
// owned by the writer goroutine.
type bodyStore struct {
	dir  string
	mu   sync.Mutex
	next uint64
	open map[uint64]bool // segments being written by a session

	cur     *os.File
	curSeg  uint64
	curOff  int64
	inFrame bool // a frame is being written: no new segment until it ends
}

func openBodyStore(dir string, readOnly bool) (*bodyStore, error) {
	s := &bodyStore{dir: filepath.Join(dir, bodiesDir), open: map[uint64]bool{}, next: 1}
	if !readOnly {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return nil, fmt.Errorf("journal: create %s: %w", s.dir, err)
		}
	}
	segs, err := s.list()
	if err != nil && !readOnly {
		return nil, err
	}
	if len(segs) > 0 {
		s.next = segs[len(segs)-1] + 1
	}
	return s, nil
}

// list returns the segment numbers on disk, in order.
func (s *bodyStore) list() ([]uint64, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("journal: list %s: %w", s.dir, err)
	}
	var segs []uint64
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok {
			continue
		}
		if v, err := strconv.ParseUint(n, 10, 64); err == nil {
			segs = append(segs, v)
		}
	}
	sort.Slice(segs, func(a, b int) bool { return segs[a] < segs[b] })
	return segs, nil
}

// create makes a new, empty segment file and makes its name durable.
func (s *bodyStore) create(session bool) (uint64, *os.File, error) {
	s.mu.Lock()
	seg := s.next
	s.next++
	if session {
		s.open[seg] = true
	}
	s.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(s.dir, segmentName(seg)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		s.done(seg)
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
		return 0, nil, fmt.Errorf("journal: create body segment: %w", err)
	}
	return seg, f, nil
}

func (s *bodyStore) done(seg uint64) {
	s.mu.Lock()
	delete(s.open, seg)
	s.mu.Unlock()
}

func (s *bodyStore) busy(seg uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[seg]
}

// appendShared writes data to the current shared segment (starting one
// when there is none or it is full) and returns where; the caller syncs.
func (s *bodyStore) appendShared(data []byte) (BodyRef, error) {
	return s.appendSharedFrom(bytes.NewReader(data))
}

// appendSharedFrom is appendShared streaming from r.
func (s *bodyStore) appendSharedFrom(r io.Reader) (BodyRef, error) {
	if err := s.ensureShared(); err != nil {
		return BodyRef{}, err
	}
	n, err := io.Copy(s.cur, r)
	ref := BodyRef{Segment: s.curSeg, Offset: s.curOff, Length: n}
	s.curOff += n
	if err != nil {
		// Whatever part was written is garbage nobody refers to.
		s.closeShared()
		return BodyRef{}, fmt.Errorf("journal: write body segment: %w", err)
	}
	return ref, nil
}

// ensureShared makes sure there is a current shared segment with room
// (a new one, started with logMagic, when there is none or it is full and
// no frame is open).
func (s *bodyStore) ensureShared() error {
	if s.cur != nil && s.curOff >= SegmentSize && !s.inFrame {
		s.closeShared()
	}
	if s.cur != nil {
		return nil
	}
	seg, f, err := s.create(false)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(logMagic)); err != nil {
		f.Close()
		return fmt.Errorf("journal: write log segment: %w", err)
	}
	s.cur, s.curSeg, s.curOff = f, seg, int64(len(logMagic))
	return nil
}

// beginFrame starts a frame in the shared segment: a header to be filled
// in by endFrame; the bodies appended until then belong to the frame.
func (s *bodyStore) beginFrame() (seg uint64, start int64, err error) {
	if err := s.ensureShared(); err != nil {
		return 0, 0, err
	}
	if _, err := s.cur.Write(make([]byte, frameHeader)); err != nil {
		s.closeShared()
		return 0, 0, fmt.Errorf("journal: write log segment: %w", err)
	}
	start = s.curOff
	s.curOff += frameHeader
	s.inFrame = true
	return s.curSeg, start, nil
}

// endFrame writes the frame's content (compressed with S2 when zipped)
// after its bodies and then its header; it returns the offset of the
// content. The caller syncs.
func (s *bodyStore) endFrame(start int64, content []byte, zipped bool) (int64, error) {
	s.inFrame = false
	if s.cur == nil {
		return 0, errors.New("journal: the log segment was closed during a frame")
	}
	coff := s.curOff
	var h [frameHeader]byte
	binary.BigEndian.PutUint32(h[0:], frameMagic)
	if zipped {
		binary.BigEndian.PutUint32(h[0:], frameMagicE)
	}
	binary.BigEndian.PutUint32(h[4:], uint32(coff-start-frameHeader))
	binary.BigEndian.PutUint32(h[8:], uint32(len(content)))
	binary.BigEndian.PutUint32(h[12:], crc32.Checksum(content, castagnoli))
	if _, err := s.cur.Write(content); err != nil {
		s.closeShared()
		return 0, fmt.Errorf("journal: write log segment: %w", err)
	}
	s.curOff += int64(len(content))
	if _, err := s.cur.WriteAt(h[:], start); err != nil {
		s.closeShared()
		return 0, fmt.Errorf("journal: write log segment: %w", err)
	}
	return coff, nil
}

// syncShared fsyncs the shared segment.
func (s *bodyStore) syncShared() error {
	if s.cur == nil {
		return nil
	}
	if err := fdatasync(s.cur); err != nil {
		s.closeShared()
		return fmt.Errorf("journal: sync body segment: %w", err)
	}
	return nil
}

func (s *bodyStore) closeShared() {
	if s.cur != nil {
		s.cur.Close()
		s.cur = nil
	}
	s.inFrame = false
}

func (s *bodyStore) path(seg uint64) string { return filepath.Join(s.dir, segmentName(seg)) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// BodyFile is a large body being streamed into a segment of its own by
// the session receiving it (Journal.CreateBodyFile). Give it to Append in
// Body.File, or Abort it.
type BodyFile struct {
	s    *bodyStore
	seg  uint64
	f    *os.File
	n    int64
	err  error
	done bool
}

// CreateBodyFile starts a body that is written as it arrives.
func (j *Journal) CreateBodyFile() (*BodyFile, error) {
	if j.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	seg, f, err := j.bodies.create(true)
	if err != nil {
		return nil, err
	}
	return &BodyFile{s: j.bodies, seg: seg, f: f}, nil
}

// Write appends p to the body.
func (b *BodyFile) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.f.Write(p)
	b.n += int64(n)
	if err != nil {
		b.err = fmt.Errorf("journal: write body: %w", err)
	}
	return n, b.err
}

// Size is the number of bytes written.
func (b *BodyFile) Size() int64 { return b.n }

// sync makes the content durable and closes the file (Append does it).
func (b *BodyFile) sync(noSync bool) error {
	if b.err != nil {
		return b.err
	}
	if !noSync {
		if err := b.f.Sync(); err != nil {
			b.err = fmt.Errorf("journal: sync body: %w", err)
			return b.err
		}
	}
	if err := b.f.Close(); err != nil {
		b.err = fmt.Errorf("journal: close body: %w", err)
		return b.err
	}
	return nil
}

// Abort discards the body. Safe to call after Append (then a no-op).
func (b *BodyFile) Abort() {
	if b.done {
		return
	}
	b.done = true
	b.f.Close()
	os.Remove(b.f.Name())
	b.s.done(b.seg)
}

// committed hands the file over to the journal.
func (b *BodyFile) committed() {
	b.done = true
	b.s.done(b.seg)
}

// BodyReader reads one stored body. Reader may be called many times; each
// reader starts at the beginning. Close releases the file.
type BodyReader struct {
	key     string
	size    int64
	ra      io.ReaderAt
	release func() // gives the file back (Close)
}

// Size is the body's length in bytes.
func (b *BodyReader) Size() int64 { return b.size }

// Reader returns a reader of the whole body from its start.
func (b *BodyReader) Reader() io.Reader { return io.NewSectionReader(b.ra, 0, b.size) }

// Header returns the header block (through the empty line that ends it),
// reading at most max bytes.
func (b *BodyReader) Header(max int64) ([]byte, error) {
	n := min(max, b.size)
	buf := make([]byte, n)
	if _, err := b.ra.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("journal: read body %s: %w", b.key, err)
	}
	if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
		return buf[:i+4], nil
	}
	return buf, nil
}

// Close releases the body's file.
func (b *BodyReader) Close() error {
	if b.release != nil {
		b.release()
		b.release = nil
	}
	return nil
}

// Bytes reads the whole body into memory (small bodies: DSNs, tests).
func (b *BodyReader) Bytes() ([]byte, error) {
	return io.ReadAll(b.Reader())
}

// OpenBody opens the body stored under key, first checking it against sum
// (the Received event's BodySHA256; "" checks nothing) by reading it once:
// a mismatch is a *BodyCorruptError. The caller closes the reader.
func (j *Journal) OpenBody(key, sum string) (_ *BodyReader, err error) {
	defer recoverRead(&err)
	br, err := j.openBody(key)
	if err != nil {
		return nil, err
	}
	if sum == "" {
		return br, nil
	}
	got, err := br.sha256(&j.hashBufs)
	if err != nil {
		br.Close()
		return nil, err
	}
	if got != sum {
		br.Close()
		return nil, &BodyCorruptError{Key: key, Want: sum, Got: got}
	}
	return br, nil
}

func (j *Journal) openBody(key string) (*BodyReader, error) {
	v, closer, err := j.rd.Get(bodyRefKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		// A body stored before segments existed.
		v, closer, err := j.rd.Get(bodyKey(key))
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrNoBody, key)
		}
		if err != nil {
			return nil, fmt.Errorf("journal: read body %s: %w", key, err)
		}
		data := bytes.Clone(v)
		closer.Close()
		return &BodyReader{key: key, size: int64(len(data)), ra: bytes.NewReader(data)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: read body %s: %w", key, err)
	}
	ref, derr := decodeBodyRef(v)
	closer.Close()
	if derr != nil {
		return nil, fmt.Errorf("journal: body %s: %w", key, derr)
	}
	end := ref.Offset + ref.Length
	var (
		f       *os.File
		release func()
		size    int64
	)
	if ref.Offset >= int64(len(logMagic)) {
		// In a log segment, which the journal keeps open for its readers.
		var sf *segFile
		sf, size, err = j.segs.acquire(ref.Segment, end)
		if err == nil {
			f, release = sf.f, func() { j.segs.release(sf) }
		}
	} else {
		// A segment of its own: not kept open, so that its space is freed
		// as soon as the body is dropped.
		f, err = os.Open(j.bodies.path(ref.Segment))
		if err == nil {
			release, size = func() { f.Close() }, end
			if st, serr := f.Stat(); serr == nil {
				size = st.Size()
			}
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s (segment %s is gone)", ErrNoBody, key, segmentName(ref.Segment))
		}
		return nil, fmt.Errorf("journal: read body %s: %w", key, err)
	}
	if size < end {
		release()
		return nil, &BodyCorruptError{Key: key, Truncated: fmt.Sprintf("segment %s holds %d bytes, the body ends at %d", segmentName(ref.Segment), size, end)}
	}
	return &BodyReader{key: key, size: ref.Length, ra: io.NewSectionReader(f, ref.Offset, ref.Length), release: release}, nil
}

// BodyLocation returns where the body under key is stored (ok is false
// for a body kept in the older in-database form, or none).
func (j *Journal) BodyLocation(key string) (ref BodyRef, ok bool, err error) {
	defer recoverRead(&err)
	v, closer, err := j.rd.Get(bodyRefKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return BodyRef{}, false, nil
	}
	if err != nil {
		return BodyRef{}, false, err
	}
	defer closer.Close()
	ref, err = decodeBodyRef(v)
	return ref, err == nil, err
}

// stageDrop deletes the pointers of the body under key in b, and returns
// where it was (Segment 0: nowhere, or an in-database body).
func (j *Journal) stageDrop(b *pebble.Batch, key string) (BodyRef, error) {
	if err := b.Delete(bodyKey(key), nil); err != nil {
		return BodyRef{}, err
	}
	ref, ok, err := j.BodyLocation(key)
	if err != nil || !ok {
		return BodyRef{}, err
	}
	if err := b.Delete(bodyRefKey(key), nil); err != nil {
		return BodyRef{}, err
	}
	return ref, b.Delete(segRefKey(ref.Segment, key), nil)
}

// punchHoles frees the space of dropped bodies inside log segments that
// must stay (they hold records of the hot journal): the bytes are
// deallocated and read back as zeros (fallocate PUNCH_HOLE). A file system
// without it keeps the bytes until the segment goes.
func (j *Journal) punchHoles(refs []BodyRef) {
	bySeg := map[uint64][]BodyRef{}
	for _, r := range refs {
		if r.Length > 0 && r.Offset >= int64(len(logMagic)) {
			bySeg[r.Segment] = append(bySeg[r.Segment], r)
		}
	}
	for seg, rs := range bySeg {
		f, err := os.OpenFile(j.bodies.path(seg), os.O_WRONLY, 0)
		if err != nil {
			continue // gone already
		}
		for _, r := range rs {
			err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, r.Offset, r.Length)
			if err != nil {
				break
			}
		}
		f.Close()
		if err != nil && !j.punchWarned.Swap(true) && j.opts.Logger != nil {
			j.opts.Logger.Warn("cannot free the space of dropped bodies inside log segments (it is freed when the segment goes)", zap.String("segment", segmentName(seg)), zap.Error(err))
		}
	}
}

// stageRef records in b that key's body is at ref.
func stageRef(b *pebble.Batch, key string, ref BodyRef) error {
	if err := b.Set(bodyRefKey(key), ref.encode(), nil); err != nil {
		return err
	}
	return b.Set(segRefKey(ref.Segment, key), nil, nil)
}

// segmentUsed reports whether any body still refers to seg.
func (j *Journal) segmentUsed(seg uint64) (bool, error) {
	p := segRefPrefix(seg)
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(string(p))})
	if err != nil {
		return true, err
	}
	defer it.Close()
	return it.First(), it.Error()
}

// ReclaimSegments deletes every segment file that no body refers to and
// nobody is writing (the writer's current shared segment is kept), and
// returns how many bytes it freed. It also removes what a crash left
// behind (a session's large body that was never committed). It runs on the
// writer goroutine, between commits.
func (j *Journal) ReclaimSegments() (freed int64, err error) {
	if j.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	err = j.onWriter(func() error {
		var e error
		freed, e = j.reclaimSegments()
		return e
	})
	return freed, err
}

func (j *Journal) reclaimSegments() (freed int64, err error) {
	segs, err := j.bodies.list()
	if err != nil {
		return 0, err
	}
	for _, seg := range segs {
		n, err := j.removeIfUnused(seg)
		if err != nil {
			return freed, fmt.Errorf("journal: reclaim: %w", err)
		}
		freed += n
	}
	return freed, nil
}

// removeIfUnused deletes segment seg when it is not the shared segment
// being appended to, no session is writing it, no body refers to it and,
// for a log segment, every record in it has left the hot journal; it
// returns the bytes freed. Writer goroutine only.
func (j *Journal) removeIfUnused(seg uint64) (int64, error) {
	if j.bodies.cur != nil && seg == j.bodies.curSeg || j.bodies.busy(seg) {
		return 0, nil
	}
	used, err := j.segmentUsed(seg)
	if err != nil || used {
		return 0, err
	}
	last, err := j.logSegLast(seg)
	if err != nil || last > j.mark.Load().seq {
		return 0, err
	}
	p := j.bodies.path(seg)
	st, err := os.Stat(p)
	if err != nil {
		return 0, nil // already gone
	}
	j.segs.forget(seg)
	if err := os.Remove(p); err != nil {
		return 0, err
	}
	if last > 0 {
		if err := j.db.Delete(logSegKey(seg), pebble.NoSync); err != nil {
			return st.Size(), err
		}
	}
	return st.Size(), nil
}

// logSegLast returns the last sequence number recorded in log segment seg
// (0: none, or not a log segment).
func (j *Journal) logSegLast(seg uint64) (uint64, error) {
	v, closer, err := j.rd.Get(logSegKey(seg))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("journal: malformed log segment entry for %s", segmentName(seg))
	}
	return binary.BigEndian.Uint64(v), nil
}

// BodySHA256 reads the body under key, streaming, and returns its hex
// SHA-256 (what verification compares with the Received event).
func (j *Journal) BodySHA256(key string) (_ string, err error) {
	defer recoverRead(&err)
	br, err := j.openBody(key)
	if err != nil {
		return "", err
	}
	defer br.Close()
	return br.sha256(&j.hashBufs)
}

// sha256 reads the whole body, streaming, and returns its hex SHA-256.
func (b *BodyReader) sha256(bufs *sync.Pool) (string, error) {
	h := sha256.New()
	// io.Copy would take a fresh 32 KiB buffer for every body.
	buf, ok := bufs.Get().(*[32 << 10]byte)
	if !ok {
		buf = new([32 << 10]byte)
	}
	defer bufs.Put(buf)
	if _, err := io.CopyBuffer(h, b.Reader(), buf[:]); err != nil {
		return "", fmt.Errorf("journal: read body %s: %w", b.key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fdatasync flushes f's data and what is needed to read it back (its size),
// not its timestamps.
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
