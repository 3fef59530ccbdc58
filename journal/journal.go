// Package journal is ledgermail's one durable path: an append-only,
// checksummed, hash-chained event log and a message-body store, both kept in
// one Pebble database under the data directory.
//
// The contract:
//   - Append returns only after its events and bodies are fsynced; on error
//     nothing of that Write is visible to readers, now or after a restart.
//   - Sequence numbers start at 1 and increase by one per event, without gaps.
//   - Every record carries its sequence number, the checksum of the record
//     before it (a chain) and a CRC-32C of itself. Readers verify all three
//     and report a mismatch as a *CorruptError naming the sequence number;
//     they never skip a record silently.
//   - Concurrent Appends are grouped by one writer goroutine into one Pebble
//     batch and one fsync (group commit).
//   - Subscribers see every committed event exactly once, in sequence order,
//     after it is durable.
package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
}

// Body is a message body to store under Key (normally the envelope ID).
type Body struct {
	Key  string
	Data []byte
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

	mu       sync.Mutex // guards subs and closed
	subs     []func([]events.Event)
	onCommit func(time.Duration, int)
	closed   bool
	stopped  chan struct{}

	committedSeq atomic.Uint64

	// Owned by the writer goroutine after Open.
	lastSeq uint64
	lastSum uint32
}

type appendReq struct {
	w      Write
	frames [][]byte // encoded payloads, one per event
	done   chan appendRes
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
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: create %s: %w", opts.Dir, err)
	}
	if err := checkWritable(opts.Dir); err != nil {
		return nil, err
	}
	po := &pebble.Options{Logger: pebbleLogger{opts.Logger}}
	db, err := pebble.Open(opts.Dir, po)
	if err != nil {
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("journal: open %s: %w", opts.Dir, ErrLocked)
		}
		return nil, fmt.Errorf("journal: open %s: %w", opts.Dir, err)
	}
	j := &Journal{db: db, opts: opts, reqs: make(chan *appendReq, 1024), stopped: make(chan struct{})}
	if err := j.loadTail(); err != nil {
		db.Close()
		return nil, err
	}
	go j.writer()
	return j, nil
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

// loadTail finds the last record and verifies it, so that appends continue
// the sequence and the chain.
func (j *Journal) loadTail() error {
	it, err := j.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixEvent), UpperBound: prefixEnd(prefixEvent)})
	if err != nil {
		return fmt.Errorf("journal: iterate: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		return it.Error()
	}
	seq, err := seqFromKey(it.Key())
	if err != nil {
		return err
	}
	rec, err := decodeRecord(seq, it.Value())
	if err != nil {
		return err
	}
	j.lastSeq, j.lastSum = seq, rec.sum
	j.committedSeq.Store(seq)
	return nil
}

// Dir returns the journal's directory.
func (j *Journal) Dir() string { return j.opts.Dir }

// LastSeq returns the sequence number of the newest durable event.
func (j *Journal) LastSeq() uint64 { return j.committedSeq.Load() }

// SetOnCommit sets the commit observer (metrics) after Open.
func (j *Journal) SetOnCommit(fn func(d time.Duration, n int)) {
	j.mu.Lock()
	j.onCommit = fn
	j.mu.Unlock()
}

// Subscribe registers fn to be called with every batch of events committed
// from now on, in order, from the writer goroutine. fn must not call Append.
func (j *Journal) Subscribe(fn func([]events.Event)) {
	j.mu.Lock()
	j.subs = append(j.subs, fn)
	j.mu.Unlock()
}

// Append makes w durable and returns its events with Seq (and Time, when it
// was zero) filled in.
func (j *Journal) Append(w Write) ([]events.Event, error) {
	req := &appendReq{w: w, done: make(chan appendRes, 1)}
	for _, e := range w.Events {
		if e.Envelope == "" {
			return nil, fmt.Errorf("journal: %s event without envelope ID", e.Type())
		}
	}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil, ErrClosed
	}
	j.reqs <- req
	j.mu.Unlock()
	res := <-req.done
	return res.evs, res.err
}

// Close waits for pending appends and closes the database.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	close(j.reqs)
	j.mu.Unlock()
	<-j.stopped
	return j.db.Close()
}

// Checkpoint writes a consistent copy of the journal into dir (which must
// not exist), for backups and for offline reading while the server runs.
func (j *Journal) Checkpoint(dir string) error {
	if err := j.db.Checkpoint(filepath.Clean(dir), pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("journal: checkpoint to %s: %w", dir, err)
	}
	return nil
}

type pebbleLogger struct{ l *zap.Logger }

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

// Fatalf must not exit the process from inside a library: it logs and panics,
// which the caller's recovery (or the crash) reports with a stack.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p.l != nil {
		p.l.Error(msg, zap.String("component", "pebble"))
	}
	panic("pebble: " + msg)
}
