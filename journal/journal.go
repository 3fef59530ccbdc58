// Package journal is ledgermail's one durable path: an append-only,
// checksummed, hash-chained log of event records and message bodies, kept
// in segment files under the data directory (log.go, bodies.go), and a
// Pebble database that indexes it.
//
// The contract:
//   - Append returns only after its events and bodies are fsynced: its
//     records and small bodies in the group's frame of the log, a large
//     body in its own segment before that; on error nothing of that Write
//     is visible to readers, now or after a restart. A body written to a
//     segment by a Write that failed is garbage that nothing refers to.
//   - The index (Pebble) has no WAL: what a crash takes from it is
//     re-indexed from the log by Open (writable: durably; read-only: in
//     memory), checking every frame and record.
//   - A write or fsync error on the log fails the journal (fail-stop,
//     below).
//   - Sequence numbers start at 1 and increase by one per event, without gaps.
//   - Every record carries its sequence number, the SHA-256 link of the
//     record before it (a cryptographic chain; records of the older format 1
//     carry a CRC-32C instead) and a CRC-32C of itself. Readers verify all
//     three and report a mismatch as a *CorruptError naming the sequence
//     number; they never skip a record silently. Head returns the chain's
//     head; VerifyAnchor proves the journal still extends an earlier one.
//   - Bodies are checked by OpenBody (streaming) and BodyChecked against the
//     SHA-256 that their Received event records; a segment that is shorter
//     than a pointer into it is a *BodyCorruptError too. A segment file is
//     deleted once no body refers to it and none of its records is in the
//     hot journal (ReclaimSegments); a dropped body inside a segment that
//     stays is punched out.
//   - Concurrent Appends are grouped by one writer goroutine into one frame
//     and one fsync (group commit). No lock is held while an Append
//     waits for room in the writer's bounded queue: a full queue makes
//     callers wait, it never deadlocks them. Close answers every Append
//     already admitted, then returns.
//   - Subscribers see every committed event exactly once, in sequence order,
//     after it is durable.
//   - Fail-stop: a failed commit (a write or fsync error on the log, after
//     which its state is unknown; or Pebble failing to apply the index) or a
//     background error (a flush or compaction
//     that cannot write) fails the journal for good. That commit's Appends and
//     every later one return an error wrapping ErrFailed, Failed() is closed,
//     and the process is expected to exit; nothing is acknowledged that is not
//     durable. Pebble's own fatal errors (Fatalf) call Options.OnFatal, which
//     by default logs one line and exits with status 1.
//   - Acknowledged records never disappear silently: after each commit the
//     last committed sequence number is written to the COMMITTED file (no
//     extra fsync: it only ever lags the log). Open refuses, with a
//     *LostError, a journal that ends before it (a damaged log tail after a
//     crash, MANIFEST damage), unless Options.AllowLost.
//   - Options.ReadOnly opens without modifying anything in the directory
//     (Pebble's read-only mode; no COMMITTED update): what `mta queue`,
//     `mta replay` and `check-config` use.
//   - Reads never panic: a checksum failure inside Pebble's files surfaces as
//     an error naming the problem.
package journal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
)

// ErrLocked is returned by Open when another process (normally a running
// `mta serve`) holds the journal.
var ErrLocked = errors.New("journal is in use by another process (is the server running?)")

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("journal: closed")

// Options configure Open. The zero value of every field is usable.
type Options struct {
	// Dir is the journal's directory; created if missing.
	Dir string
	// Logger receives Pebble's own messages; nil discards them.
	Logger *zap.Logger
	// MaxBatch bounds how many Appends share one commit; 0 means 256.
	MaxBatch int
	// NoSync skips the fsync. Only benchmarks comparing costs use it.
	NoSync bool
	// OnCommit, if set, is called after each group commit with its duration
	// and the number of events (metrics).
	OnCommit func(d time.Duration, n int)
	// ReadOnly opens the journal without changing any file in Dir; Append
	// then returns ErrReadOnly.
	ReadOnly bool
	// AllowLost opens a journal that ends before its last committed
	// sequence number (for `mta replay --verify` and `mta journal repair`,
	// which report or repair it); Lost() then says what is missing.
	AllowLost bool
	// OnFatal is called, instead of exiting with status 1, when Pebble
	// reports an error it cannot continue from. It must not return
	// normally unless the caller can tolerate a broken database (tests).
	OnFatal func(msg string)
	// QueueSize bounds the Appends waiting for the writer; 0 means 1024.
	QueueSize int
	// MinFree is the space HasRoom keeps free on the journal's filesystem;
	// 0 checks nothing.
	MinFree int64
	// ArchiveDir holds the archive segments; "" means "archive" beside
	// Dir.
	ArchiveDir string
	// CommitWindow: when the last group commit carried more than one
	// Append, the writer waits up to this long for more before the next
	// one (fewer, larger commits under load); 0 commits at once.
	CommitWindow time.Duration
}

// ErrReadOnly is returned by Append on a journal opened with ReadOnly.
var ErrReadOnly = errors.New("journal: opened read-only")

// ErrFailed is wrapped by the errors of Append after the journal failed
// (fail-stop): the cause is in the message and in Err.
var ErrFailed = errors.New("journal: failed")

// Body is a message body to store under Key (normally the envelope ID):
// Data (appended to the shared body segment at commit) or File (a large
// body already streamed into a segment of its own; Append makes it
// durable first). A Received event in the same Write whose BodyKey is Key
// gets the body's segment and offset filled in.
type Body struct {
	Key  string
	Data []byte
	File *BodyFile
}

// Write is one atomic unit of Append: all of it becomes durable, or none.
type Write struct {
	Bodies []Body
	Events []events.Event
	// DropBodies deletes stored bodies (the envelope that needed them has
	// reached a final state).
	DropBodies []string
}

// Journal is an open event log. It is safe for concurrent use.
type Journal struct {
	db   *pebble.DB
	opts Options
	reqs chan *appendReq

	mu       sync.Mutex // guards closed; never held across a channel operation
	closed   bool
	inflight sync.WaitGroup // Appends admitted before Close
	stopped  chan struct{}

	subMu    sync.Mutex // guards subs and onCommit
	subs     []func([]events.Event)
	onCommit func(time.Duration, int)

	failOnce sync.Once
	failErr  atomic.Pointer[error]
	failed   chan struct{}

	committedSeq  atomic.Uint64
	writerID      atomic.Uint64 // goroutine ID of the writer
	inCommit      atomic.Bool
	corruptPath   atomic.Pointer[string] // the last file Pebble found corrupt
	corruptLogged sync.Map               // files already logged as corrupt
	marker        *os.File               // COMMITTED; nil when read-only
	bodies        *bodyStore
	segs          *segCache    // open segment files, for reading records
	zbuf          []byte       // the writer goroutine's compression buffer
	cbuf          []byte       // the writer goroutine's frame content buffer
	hashBufs      sync.Pool    // buffers for checking bodies (OpenBody)
	frames        frameCache   // compressed frames read last, decompressed
	rd            pebbleReader // j.db, or the read-only overlay (recoverLog)
	recovered     int          // frames recoverLog re-indexed at Open
	punchWarned   atomic.Bool
	mark          atomic.Pointer[archiveMark]
	lost          [2]uint64
	tailErr       error

	// Owned by the writer goroutine after Open.
	lastSeq  uint64
	lastLink link
	head     atomic.Pointer[headInfo] // published copy of lastSeq/lastLink
}

type appendReq struct {
	put    *putReq      // a snapshot instead of a Write
	run    func() error // work on the writer goroutine instead of a Write
	w      Write
	frames [][]byte // encoded payloads, one per event
	done   chan appendRes
}

type putReq struct {
	key, value []byte
	del        bool // delete key instead
}

type appendRes struct {
	evs []events.Event
	err error
}

// Open opens (creating if needed) the journal in opts.Dir.
func Open(opts Options) (*Journal, error) {
	if opts.Dir == "" {
		return nil, errors.New("journal: no directory given")
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	j := &Journal{opts: opts, reqs: make(chan *appendReq, opts.QueueSize), stopped: make(chan struct{}), failed: make(chan struct{})}
	// No WAL: the log (log.go) is the index's write-ahead log.
	po := &pebble.Options{Logger: pebbleLogger{l: opts.Logger, fatal: j.fatal}, ReadOnly: opts.ReadOnly, MemTableSize: memTableSize, DisableWAL: !opts.ReadOnly,
		L0CompactionThreshold: 8, L0StopWritesThreshold: 32}
	po.EventListener = &pebble.EventListener{
		BackgroundError: func(err error) {
			j.fail(fmt.Errorf("storage background error: %w", err))
		},
		// Reads of a damaged table return an error (reported by the
		// reader); the default would call Fatalf.
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			path := info.Path
			j.corruptPath.Store(&path)
			if _, seen := j.corruptLogged.LoadOrStore(path, true); !seen && opts.Logger != nil {
				opts.Logger.Error("journal storage is corrupt", zap.String("file", info.Path), zap.String("error", fmt.Sprint(info.Details)))
			}
		},
	}
	if opts.ReadOnly {
		if _, err := os.Stat(opts.Dir); err != nil {
			return nil, fmt.Errorf("journal: open %s: %w", opts.Dir, unwrapPath(err))
		}
	} else {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("journal: create %s: %w", opts.Dir, err)
		}
		if err := checkWritable(opts.Dir); err != nil {
			return nil, err
		}
	}
	db, err := openPebble(opts.Dir, po)
	if err != nil {
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("journal: open %s: %w", opts.Dir, ErrLocked)
		}
		return nil, fmt.Errorf("journal: open %s: %w", opts.Dir, err)
	}
	j.db, j.rd = db, db
	if j.bodies, err = openBodyStore(opts.Dir, opts.ReadOnly); err != nil {
		db.Close()
		return nil, err
	}
	if err := j.loadArchiveMark(); err != nil {
		db.Close()
		return nil, err
	}
	j.segs = &segCache{dir: j.bodies.path, files: map[uint64]*segFile{}}
	if err := j.loadTail(); err != nil {
		db.Close()
		return nil, err
	}
	if err := j.recoverLog(); err != nil {
		db.Close()
		return nil, err
	}
	if j.recovered > 0 {
		if err := j.loadTail(); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := j.checkCommitted(); err != nil {
		db.Close()
		return nil, err
	}
	if opts.ReadOnly {
		close(j.stopped)
	} else {
		go j.writer()
	}
	return j, nil
}

// openPebble opens the database, turning a panic inside Pebble (a
// corrupt MANIFEST or table can raise one) into an error.
func openPebble(dir string, po *pebble.Options) (db *pebble.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("storage is corrupt: %v", r)
		}
	}()
	return pebble.Open(dir, po)
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("journal: data directory %s is not writable: %w", dir, unwrapPath(err))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// loadTail finds the last record, so that appends continue the sequence
// and the chain. A last record that fails verification does not stop
// Open (the readers report it with its sequence number): the chain goes
// on from the checksum stored in it.
func (j *Journal) loadTail() (err error) {
	defer recoverRead(&err)
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixEvent), UpperBound: prefixEnd(prefixEvent)})
	if err != nil {
		return fmt.Errorf("journal: iterate: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		if err := it.Error(); err != nil {
			return fmt.Errorf("journal: read the last record: %w", err)
		}
		// Empty, or everything archived: go on after the archive.
		if m := j.mark.Load(); m.seq > 0 {
			j.lastSeq, j.lastLink = m.seq, m.link
			j.setHead(m.seq, m.link)
			j.committedSeq.Store(m.seq)
		}
		return nil
	}
	seq, err := seqFromKey(it.Key())
	if err != nil {
		return err
	}
	rec, v, derr := j.loadRecord(seq, it.Value())
	tail := rec.linkOf()
	if derr != nil {
		// Continue the chain from what the damaged record holds.
		j.tailErr = derr
		if len(v) >= 4 {
			tail = link{crc: binary.BigEndian.Uint32(v[len(v)-4:]), sha: sha256.Sum256(v[:len(v)-4])}
		}
	}
	j.lastSeq, j.lastLink = seq, tail
	j.setHead(seq, tail)
	j.committedSeq.Store(seq)
	return nil
}

// Dir returns the journal's directory.
func (j *Journal) Dir() string { return j.opts.Dir }

// LastSeq returns the sequence number of the newest durable event.
func (j *Journal) LastSeq() uint64 { return j.committedSeq.Load() }

// SetOnCommit sets the commit observer (metrics) after Open.
func (j *Journal) SetOnCommit(fn func(d time.Duration, n int)) {
	j.subMu.Lock()
	j.onCommit = fn
	j.subMu.Unlock()
}

// Subscribe registers fn to be called with every batch of events committed
// from now on, in order, from the writer goroutine. fn must not call Append.
func (j *Journal) Subscribe(fn func([]events.Event)) {
	j.subMu.Lock()
	j.subs = append(j.subs, fn)
	j.subMu.Unlock()
}

// Append makes w durable and returns its events with Seq (and Time, when it
// was zero) filled in. When the writer's queue is full it waits for room.
func (j *Journal) Append(w Write) ([]events.Event, error) {
	// Append owns w's body files from here: a failed Append removes them.
	abort := func() {
		for _, b := range w.Bodies {
			if b.File != nil {
				b.File.Abort()
			}
		}
	}
	for _, e := range w.Events {
		if e.Envelope == "" {
			abort()
			return nil, fmt.Errorf("journal: %s event without envelope ID", e.Type())
		}
	}
	if j.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	if err := j.Err(); err != nil {
		abort()
		return nil, err
	}
	// Large bodies are made durable here, on the caller's goroutine (in
	// parallel with other sessions), before the writer commits the events
	// that point at them.
	for _, b := range w.Bodies {
		if b.File != nil {
			if err := b.File.sync(j.opts.NoSync); err != nil {
				abort()
				return nil, err
			}
		}
	}
	res := j.send(&appendReq{w: w, done: make(chan appendRes, 1)})
	if res.err != nil {
		abort()
	} else {
		for _, b := range w.Bodies {
			if b.File != nil {
				b.File.committed()
			}
		}
	}
	return res.evs, res.err
}

// onWriter runs fn on the writer goroutine, between commits.
func (j *Journal) onWriter(fn func() error) error {
	return j.send(&appendReq{run: fn, done: make(chan appendRes, 1)}).err
}

// send hands req to the writer and waits for its answer.
func (j *Journal) send(req *appendReq) appendRes {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return appendRes{err: ErrClosed}
	}
	j.inflight.Add(1)
	j.mu.Unlock()
	// No lock here: the writer goroutine runs until every admitted request
	// has been answered (Close waits for inflight before closing reqs).
	j.reqs <- req
	j.inflight.Done()
	return <-req.done
}

// Close waits for pending appends and closes the database.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	if !j.opts.ReadOnly {
		j.inflight.Wait() // every admitted request is in the channel
		close(j.reqs)
		<-j.stopped
	}
	if j.marker != nil {
		j.marker.Close()
	}
	if !j.opts.ReadOnly && j.Err() == nil {
		// The index's memtable to a table, so that the next Open has no
		// frames to re-index (it would, without loss, if this failed).
		if err := j.flush(); err != nil && j.opts.Logger != nil {
			j.opts.Logger.Warn("could not flush the journal's index at close", zap.Error(err))
		}
	}
	if b, ok := j.rd.(*pebble.Batch); ok {
		j.rd = j.db
		b.Close()
	}
	j.segs.closeAll()
	return closePebble(j.db)
}

func closePebble(db *pebble.DB) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("journal: close: %v", r)
		}
	}()
	return db.Close()
}

// Failed is closed when the journal has failed (fail-stop); Err then
// returns the cause.
func (j *Journal) Failed() <-chan struct{} { return j.failed }

// Err returns nil, or the error (wrapping ErrFailed) that failed the
// journal.
func (j *Journal) Err() error {
	if p := j.failErr.Load(); p != nil {
		return *p
	}
	return nil
}

// fail records the first failure and wakes whoever watches Failed.
func (j *Journal) fail(cause error) {
	j.failOnce.Do(func() {
		err := fmt.Errorf("%w: %w", ErrFailed, cause)
		j.failErr.Store(&err)
		close(j.failed)
	})
}

// fatalInCommit is what Fatalf panics with on the writer goroutine during a
// commit; commitBatch recovers it into that commit's error.
type fatalInCommit struct{ msg string }

// fatal handles Pebble's Fatalf. During a commit, on the writer goroutine
// (Pebble reports a failed WAL write or sync there), it unwinds to the
// writer, which fails the journal and answers the commit's Appends with an
// error. Anywhere else the journal fails, then OnFatal runs (by default:
// one log line and exit status 1, no panic trace).
func (j *Journal) fatal(msg string) {
	if j.inCommit.Load() && goid() == j.writerID.Load() {
		panic(fatalInCommit{msg})
	}
	j.fail(errors.New(msg))
	if j.opts.OnFatal != nil {
		j.opts.OnFatal(msg)
		return
	}
	if j.opts.Logger != nil {
		j.opts.Logger.Error("journal storage failed; exiting", zap.String("cause", msg))
		j.opts.Logger.Sync()
	} else {
		fmt.Fprintf(os.Stderr, "journal storage failed; exiting: %s\n", msg)
	}
	os.Exit(1)
}

// TailError returns the verification error of the last record, if it was
// corrupt when the journal was opened (readers report it too).
func (j *Journal) TailError() error { return j.tailErr }

type pebbleLogger struct {
	l     *zap.Logger
	fatal func(string)
}

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l != nil {
		p.l.Debug(fmt.Sprintf(format, args...), zap.String("component", "pebble"))
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	if p.l != nil {
		p.l.Error(fmt.Sprintf(format, args...), zap.String("component", "pebble"))
	}
}

// Fatalf is Pebble's "cannot continue": the journal fails and the process
// exits (Options.OnFatal), logging one line, never a panic trace.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.fatal(fmt.Sprintf(format, args...))
}

// goid returns the current goroutine's ID (only used to tell whether
// Pebble's Fatalf runs on the writer goroutine).
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}

// memTableSize is the index's memtable size. The index has no WAL: what a
// crash takes from the memtable (at most this much index, some 150,000
// records) is re-indexed from the log at Open, and a read-only Open
// re-indexes in memory what the server has not flushed yet. Large, with
// L0 compactions postponed (8 files rather than 4), because every flush
// spans the whole key space (records, bodies, per-envelope index) and so
// each L0 compaction rewrites most of the level below: fewer flushes and
// compactions are what keep the index's writes small (docs/BENCHMARKS.md).
const memTableSize = 16 << 20
