package smtpedge

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/ledgermail/ledgermail/journal"
)

// Memory of a message being received. A body is held in memory up to
// spoolMemMax bytes; past that it is streamed into a body segment of its
// own through a spoolFileBuf buffer. With the read and normalisation
// buffers, a session never holds more than 1 MiB of a message, whatever
// its size.
const (
	spoolMemMax  = 512 << 10
	spoolStep    = 16 << 10
	spoolFileBuf = 64 << 10
	spoolReadBuf = 32 << 10
	// DefaultBodyMemory is [limits] body_memory's default.
	DefaultBodyMemory = 256 << 20
	// bodyMemoryWait is how long a session waits for body memory before
	// it is answered 452 4.3.1.
	bodyMemoryWait = time.Second
)

var errNoMemory = errors.New("body_memory is exhausted")

// BodyMemory caps the memory of all bodies being received at once
// ([limits] body_memory), shared by every edge. No lock is held while a
// caller waits.
type BodyMemory struct {
	mu      sync.Mutex
	used    int64
	max     int64
	changed chan struct{}
	// scratch keeps the spools' read and normalisation buffers for the
	// next message, which would otherwise allocate ~100 KiB each.
	scratch sync.Pool
	// bodies keeps the in-memory bodies of 16, 32 and 64 KiB that the
	// journal has made durable, for the next messages (most mail fits).
	bodies [3]sync.Pool
}

// bodyClass is the pool of BodyMemory.bodies for a buffer of capacity c
// (-1: none; larger ones are left to the collector).
func bodyClass(c int) int {
	switch c {
	case spoolStep:
		return 0
	case 2 * spoolStep:
		return 1
	case 4 * spoolStep:
		return 2
	}
	return -1
}

// getBody returns an empty buffer of capacity c, from the pool if it can.
func (m *BodyMemory) getBody(c int) []byte {
	if i := bodyClass(c); i >= 0 {
		if b, ok := m.bodies[i].Get().(*[]byte); ok {
			return (*b)[:0]
		}
	}
	return make([]byte, 0, c)
}

// putBody keeps b for a later message when its size is one the pool
// holds. Nothing else may hold b.
func (m *BodyMemory) putBody(b []byte) {
	if i := bodyClass(cap(b)); i >= 0 {
		m.bodies[i].Put(&b)
	}
}

// spoolScratch are the buffers a Spool needs only while it reads.
type spoolScratch struct{ read, out, sep []byte }

func (m *BodyMemory) getScratch() *spoolScratch {
	if sc, ok := m.scratch.Get().(*spoolScratch); ok {
		return sc
	}
	return &spoolScratch{read: make([]byte, spoolReadBuf)}
}

// NewBodyMemory makes a budget of max bytes (0: DefaultBodyMemory).
func NewBodyMemory(max int64) *BodyMemory {
	if max <= 0 {
		max = DefaultBodyMemory
	}
	return &BodyMemory{max: max, changed: make(chan struct{})}
}

// acquire reserves n bytes, waiting up to wait for others to release.
func (b *BodyMemory) acquire(n int64, wait time.Duration) bool {
	var timer *time.Timer
	for {
		b.mu.Lock()
		if b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return true
		}
		ch := b.changed
		b.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

func (b *BodyMemory) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Used is the memory reserved by bodies being received (tests, metrics).
func (b *BodyMemory) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Spool receives one message as it arrives: bare CR and LF become CRLF
// (NormalizeLineEndings), a header block gets its empty line
// (SeparateHeader), the SHA-256 is computed, and the body goes to memory
// or, once it is bigger than spoolMemMax, into a body segment of its own.
// Get one from Server.NewSpool; hand it to Accept, or Discard it.
type Spool struct {
	j      *journal.Journal
	budget *BodyMemory
	memMax int

	reserved int64
	mem      []byte
	header   []byte // kept when the body spills to a file
	file     *journal.BodyFile
	w        *bufio.Writer
	hash     hash.Hash
	size     int64
	out      []byte // normalisation scratch

	pendingCR bool
	last      [2]byte // of the normalised message so far
	nonEmpty  bool
	// Header separation, line by line: held is the start of a line not
	// yet known to be a header field.
	headerDone bool
	lineNo     int
	decided    bool
	held       []byte
	sep        []byte
	finished   bool
	err        error // errNoMemory or a storage error: refuse at the end
}

// NewSpool starts receiving a message for the server.
func (s *Server) NewSpool() *Spool { return NewSpool(s.o.Journal, s.budget) }

// NewSpool starts receiving a message into j, its memory counted in m (nil:
// a budget of its own).
func NewSpool(j *journal.Journal, m *BodyMemory) *Spool {
	if m == nil {
		m = NewBodyMemory(0)
	}
	return &Spool{j: j, budget: m, memMax: spoolMemMax, hash: sha256.New()}
}

// ReadFrom reads r to its end. An error reading r is returned (the
// caller maps it to a reply); running out of body memory or storage is
// not: the rest of the message is read and dropped, and Accept refuses it.
func (sp *Spool) ReadFrom(r io.Reader) (int64, error) {
	sc := sp.budget.getScratch()
	sp.out, sp.sep = sc.out[:0], sc.sep[:0]
	defer func() {
		sc.out, sc.sep = sp.out[:0], sp.sep[:0]
		sp.out, sp.sep = nil, nil
		sp.budget.scratch.Put(sc)
	}()
	buf := sc.read
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if n > 0 {
			sp.normalize(buf[:n])
		}
		if errors.Is(err, io.EOF) {
			sp.finish()
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// normalize turns p into CRLF lines and emits it.
func (sp *Spool) normalize(p []byte) {
	out := sp.out[:0]
	for _, c := range p {
		if sp.pendingCR {
			sp.pendingCR = false
			out = append(out, '\r', '\n')
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\r':
			sp.pendingCR = true
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	sp.out = out
	sp.track(out)
	sp.separate(out)
}

// track remembers whether the normalised message so far ends with CRLF.
func (sp *Spool) track(p []byte) {
	if len(p) == 0 {
		return
	}
	sp.nonEmpty = true
	if len(p) >= 2 {
		sp.last = [2]byte{p[len(p)-2], p[len(p)-1]}
	} else {
		sp.last = [2]byte{sp.last[1], p[0]}
	}
}

// maxFieldName bounds how long a line may go without a colon and still be
// taken for a header field (RFC 5322's line length).
const maxFieldName = 998

// separate inserts the empty line that SeparateHeader would before the
// first line that is neither a header field nor a continuation, deciding
// each line as its first bytes arrive.
func (sp *Spool) separate(p []byte) {
	if sp.headerDone {
		sp.emit(p)
		return
	}
	out := sp.sep[:0]
	for i, c := range p {
		if sp.headerDone {
			out = append(out, p[i:]...)
			break
		}
		if sp.decided {
			out = append(out, c)
			if c == '\n' {
				sp.decided, sp.lineNo = false, sp.lineNo+1
			}
			continue
		}
		switch {
		case len(sp.held) == 0 && c == '\r':
			// An empty line: the separator is there.
			sp.headerDone = true
			out = append(out, c)
		case len(sp.held) == 0 && sp.lineNo > 0 && (c == ' ' || c == '\t'):
			sp.decided = true // a continuation line
			out = append(out, c)
		case c == ':' && len(sp.held) > 0:
			sp.decided = true
			out = append(append(out, sp.held...), c)
			sp.held = sp.held[:0]
		case c == ':' || c <= ' ' || c > '~' || len(sp.held) >= maxFieldName:
			// Not a header field: the body starts here.
			out = append(append(append(out, '\r', '\n'), sp.held...), c)
			sp.held = sp.held[:0]
			sp.headerDone = true
		default:
			sp.held = append(sp.held, c)
		}
	}
	sp.sep = out
	sp.emit(out)
}

func (sp *Spool) finish() {
	if sp.pendingCR {
		sp.pendingCR = false
		sp.track([]byte("\r\n"))
		sp.separate([]byte("\r\n"))
	}
	if sp.nonEmpty && sp.last != [2]byte{'\r', '\n'} {
		sp.separate([]byte("\r\n"))
	}
	sp.finished = true
	if sp.err != nil || sp.file == nil {
		return
	}
	if err := sp.w.Flush(); err != nil {
		sp.fail(err)
	}
}

// emit adds normalised bytes to the body.
func (sp *Spool) emit(p []byte) {
	if len(p) == 0 {
		return
	}
	sp.size += int64(len(p))
	if sp.err != nil {
		return
	}
	sp.hash.Write(p)
	if sp.file != nil {
		sp.write(p)
		return
	}
	need := len(sp.mem) + len(p)
	if need > sp.memMax {
		// Fill memory first, so that it holds the header block when the
		// header is shorter than memMax, then stream the rest.
		room := max(sp.memMax-len(sp.mem), 0)
		sp.keep(p[:room])
		if sp.err == nil {
			sp.spill()
		}
		if sp.err == nil {
			sp.write(p[room:])
		}
		return
	}
	sp.keep(p)
}

// keep appends p to the body in memory, reserving body memory for it.
func (sp *Spool) keep(p []byte) {
	need := len(sp.mem) + len(p)
	if need > cap(sp.mem) {
		c := max(need, 2*cap(sp.mem))
		c = min((c+spoolStep-1)/spoolStep*spoolStep, sp.memMax)
		if grow := int64(c) - sp.reserved; grow > 0 {
			if !sp.budget.acquire(grow, bodyMemoryWait) {
				sp.fail(errNoMemory)
				return
			}
			sp.reserved += grow
		}
		m := append(sp.budget.getBody(c), sp.mem...)
		sp.budget.putBody(sp.mem) // a nil one has no pool
		sp.mem = m
	}
	sp.mem = append(sp.mem, p...)
}

// spill moves the body from memory into a segment of its own.
func (sp *Spool) spill() {
	f, err := sp.j.CreateBodyFile()
	if err != nil {
		sp.fail(err)
		return
	}
	sp.header = bytes.Clone(policyHeader(sp.mem))
	sp.file = f
	sp.w = bufio.NewWriterSize(f, spoolFileBuf)
	// The file buffer replaces the memory buffer in the budget.
	mem := sp.mem
	sp.mem = nil
	sp.write(mem)
	if sp.reserved > spoolFileBuf {
		sp.budget.release(sp.reserved - spoolFileBuf)
		sp.reserved = spoolFileBuf
	}
}

func (sp *Spool) write(p []byte) {
	if _, err := sp.w.Write(p); err != nil {
		sp.fail(err)
	}
}

// fail records why the message will be refused and frees what it holds.
func (sp *Spool) fail(err error) {
	if sp.err == nil {
		sp.err = err
	}
	sp.mem = nil
	if sp.file != nil {
		sp.file.Abort()
		sp.file = nil
	}
	sp.budget.release(sp.reserved)
	sp.reserved = 0
}

// Discard drops the message and frees its memory and file.
func (sp *Spool) Discard() {
	if sp.err == nil {
		sp.err = errors.New("discarded")
	}
	sp.fail(sp.err)
}

// Size is the length of the stored body.
func (sp *Spool) Size() int64 { return sp.size }

// Sum is the hex SHA-256 of the stored body.
func (sp *Spool) Sum() string { return hex.EncodeToString(sp.hash.Sum(nil)) }

// Header is the message's header block.
func (sp *Spool) Header() []byte {
	if sp.file != nil {
		return sp.header
	}
	return policyHeader(sp.mem)
}

// InMemory returns the whole body when it is held in memory (nil when it
// was streamed to a file).
func (sp *Spool) InMemory() []byte {
	if sp.file != nil {
		return nil
	}
	return sp.mem
}

// Err says why the message cannot be kept (body memory exhausted, a
// storage error), once it has been read.
func (sp *Spool) Err() error { return sp.err }

// Body is what is handed to the journal, under key.
func (sp *Spool) Body(key string) journal.Body {
	if sp.file != nil {
		return journal.Body{Key: key, File: sp.file}
	}
	return journal.Body{Key: key, Data: sp.mem}
}

// Release frees the memory once the journal has the body (Append has
// returned); the file, if any, belongs to the journal now.
func (sp *Spool) Release() {
	sp.mem, sp.file = nil, nil
	sp.budget.release(sp.reserved)
	sp.reserved = 0
}

// Recycle is Release once the journal has made the body durable (Append
// returned no error, so its writer is done with the bytes): the memory
// buffer goes back to the pool for the next message. Nothing may still
// refer to it (InMemory, Header).
func (sp *Spool) Recycle() {
	if sp.mem != nil && sp.file == nil {
		sp.budget.putBody(sp.mem)
	}
	sp.Release()
}
