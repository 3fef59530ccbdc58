package journal

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// ErrNoBody is returned by Body for a key that has no stored body.
var ErrNoBody = errors.New("journal: no such body")

// recoverRead turns a panic inside Pebble while reading (a block that fails
// its checksum can raise one) into an error; it is deferred by every read.
func recoverRead(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("journal: storage is corrupt: %v", r)
	}
}

// BodyCorruptError reports a stored body that fails the SHA-256 its
// Received event recorded.
type BodyCorruptError struct {
	Key       string
	Want, Got string
	// Truncated says why the body cannot be whole (its segment is
	// shorter than its pointer says), when that is the damage.
	Truncated string
}

func (e *BodyCorruptError) Error() string {
	if e.Truncated != "" {
		return fmt.Sprintf("journal: stored body %s is corrupt: %s", e.Key, e.Truncated)
	}
	return fmt.Sprintf("journal: stored body %s is corrupt (SHA-256 %s, its Received event says %s)", e.Key, e.Got, e.Want)
}

// BodySum is the hex SHA-256 that Received events record for a body.
func BodySum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// BodyChecked returns the body under key, in memory, after checking it
// against sum (see OpenBody). For small bodies (DSNs, tests); the relay
// streams with OpenBody.
func (j *Journal) BodyChecked(key, sum string) ([]byte, error) {
	br, err := j.OpenBody(key, sum)
	if err != nil {
		return nil, err
	}
	defer br.Close()
	b, err := br.Bytes()
	if err != nil {
		return nil, fmt.Errorf("journal: read body %s: %w", key, err)
	}
	return b, nil
}

// Body returns the stored body under key, in memory, unchecked.
func (j *Journal) Body(key string) ([]byte, error) { return j.BodyChecked(key, "") }

// Scan calls fn for every event with Seq >= from, in order, verifying each
// record's checksum, sequence and chain. It stops at the first corrupt
// record and returns its *CorruptError, or at the first error from fn.
func (j *Journal) Scan(from uint64, fn func(events.Event) error) error {
	return j.scan(from, fn, nil)
}

// ScanTolerant is Scan that reports each corrupt record to report and goes
// on with the next one. report returning an error stops the scan.
func (j *Journal) ScanTolerant(from uint64, fn func(events.Event) error, report func(*CorruptError) error) error {
	return j.scan(from, fn, report)
}

func (j *Journal) scan(from uint64, fn func(events.Event) error, report func(*CorruptError) error) (err error) {
	defer recoverRead(&err)
	if from == 0 {
		from = 1
	}
	fail := func(err error) error {
		var ce *CorruptError
		if report != nil && errors.As(err, &ce) {
			return report(ce)
		}
		return err
	}
	// The chain needs the checksum of the record before the first one read.
	var prevLink link
	havePrev := from == 1
	mark := *j.mark.Load()
	switch {
	case from <= mark.seq:
		// Archived records first, then on into the hot journal.
		if prevLink, havePrev, err = j.scanArchive(from, mark, fn, fail, nil); err != nil {
			return err
		}
		from = mark.seq + 1
	case from == mark.seq+1 && mark.seq > 0:
		prevLink, havePrev = mark.link, true
	case from > 1:
		if v, closer, err := j.rd.Get(eventKey(from - 1)); err == nil {
			r, _, derr := j.loadRecord(from-1, v)
			closer.Close()
			if derr == nil {
				prevLink, havePrev = r.linkOf(), true
			}
		}
	}
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: eventKey(from), UpperBound: prefixEnd(prefixEvent)})
	if err != nil {
		return fmt.Errorf("journal: iterate: %w", err)
	}
	defer it.Close()
	expect := from
	// Each event is decoded (copied out) before the next record is read.
	var fb frameBuf
	for ok := it.First(); ok; ok = it.Next() {
		seq, err := seqFromKey(it.Key())
		if err != nil {
			return err
		}
		if seq != expect {
			if err := fail(&CorruptError{Seq: expect, Reason: fmt.Sprintf("missing (next record is %d)", seq)}); err != nil {
				return err
			}
			havePrev = false
		}
		expect = seq + 1
		r, _, err := j.loadRecordVia(seq, it.Value(), &fb)
		if err != nil {
			if err := fail(err); err != nil {
				return err
			}
			havePrev = false
			continue
		}
		if havePrev && !r.follows(prevLink) {
			if err := fail(chainBroken(seq, prevLink, r)); err != nil {
				return err
			}
		}
		prevLink, havePrev = r.linkOf(), true
		e, err := decodeEvent(r)
		if err != nil {
			if err := fail(err); err != nil {
				return err
			}
			continue
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return j.storageError(expect-1, err)
	}
	if j.lost[1] != 0 && j.lost[1] >= from {
		return fail(j.lostError())
	}
	return nil
}

// StorageError is a failure to read Pebble's own files (a table or block
// that fails its checksum), below the level of records.
type StorageError struct {
	File  string // the damaged file, when Pebble named it
	After uint64 // the last record read before it
	Cause string // one line
}

func (e *StorageError) Error() string {
	where := "the journal's storage"
	if e.File != "" {
		where = e.File
	}
	return fmt.Sprintf("journal: %s is corrupt (reading after sequence %d): %s", where, e.After, e.Cause)
}

// storageError turns an iterator error into a one-line *StorageError
// naming the file.
func (j *Journal) storageError(after uint64, err error) error {
	cause, _, _ := strings.Cut(err.Error(), "\n")
	se := &StorageError{After: after, Cause: cause}
	if p := j.corruptPath.Load(); p != nil {
		se.File = *p
	}
	return se
}

// chainBroken reports a record that does not carry its predecessor's link:
// the predecessor (or this record) was altered, or a record between them
// replaced.
func chainBroken(seq uint64, prev link, r record) *CorruptError {
	return &CorruptError{Seq: seq, Reason: fmt.Sprintf("chain broken: record %d was altered or replaced (its link is %s, record %d says %s)",
		seq-1, prev.String(r.format), seq, r.prevString())}
}

func (j *Journal) lostError() *CorruptError {
	return &CorruptError{Seq: j.lost[0], Reason: fmt.Sprintf("missing: records %d to %d were committed (%s) but the journal ends at %d",
		j.lost[0], j.lost[1], CommittedFile, j.lost[0]-1)}
}

// Verify checks the checksum, sequence number and chain of every record in
// the hot journal up to and including seq, without decoding events (fast: what start-up runs
// over the part of the journal a snapshot covers). The first problem is
// returned as a *CorruptError; with report set, each is reported instead.
func (j *Journal) Verify(seq uint64, report func(*CorruptError) error) error {
	return j.VerifyUntil(seq, report, nil)
}

// ErrVerifyStopped is VerifyUntil's error when stop closed first.
var ErrVerifyStopped = errors.New("journal: verification stopped")

// VerifyUntil is Verify that gives up, with ErrVerifyStopped, soon after
// stop is closed (between two batches of records): a server that stops
// does not wait for the check of its whole history.
func (j *Journal) VerifyUntil(seq uint64, report func(*CorruptError) error, stop <-chan struct{}) (err error) {
	defer recoverRead(&err)
	// The hot journal only: the archive was verified when it was written,
	// and replay --verify reads it.
	mark := *j.mark.Load()
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: eventKey(mark.seq + 1), UpperBound: eventKey(seq + 1)})
	if err != nil {
		return fmt.Errorf("journal: iterate: %w", err)
	}
	defer it.Close()
	fail := func(ce *CorruptError) error {
		if report != nil {
			return report(ce)
		}
		return ce
	}
	// Records are read in order and checked in batches whose SHA-256 links
	// are computed on every core (the hashing is most of the cost); the
	// checks themselves, and so the reports, stay in sequence order.
	prev := mark.link
	expect, havePrev := mark.seq+1, true
	check := func(items []verifyItem) error {
		for i := range items {
			v := &items[i]
			if v.gap != nil {
				if err := fail(v.gap); err != nil {
					return err
				}
				havePrev = false
			}
			if v.bad != nil {
				if err := fail(v.bad); err != nil {
					return err
				}
				havePrev = false
				continue
			}
			if havePrev && !v.r.follows(prev) {
				if err := fail(chainBroken(v.r.seq, prev, v.r)); err != nil {
					return err
				}
			}
			prev, havePrev = v.link, true
		}
		return nil
	}
	// One batch is hashed while the next is read: two buffers take turns,
	// each with the arena its records' bytes are copied into (the frames
	// they come from are read into one buffer, fb, reused: the check reads
	// the whole journal and allocates next to nothing).
	batch, spare := make([]verifyItem, 0, verifyBatch), make([]verifyItem, 0, verifyBatch)
	var fb frameBuf
	var arena, spareArena []byte
	var pending []verifyItem
	var hashed chan struct{}
	flush := func() error {
		if pending != nil {
			<-hashed
			if err := check(pending); err != nil {
				return err
			}
			spare = pending[:0]
		}
		pending = nil
		if len(batch) > 0 {
			pending, hashed = batch, make(chan struct{})
			go func(items []verifyItem, done chan struct{}) {
				hashLinks(items)
				close(done)
			}(pending, hashed)
			batch = spare
			spare = nil
			arena, spareArena = spareArena[:0], arena
		}
		return nil
	}
	for ok := it.First(); ok; ok = it.Next() {
		n, err := seqFromKey(it.Key())
		if err != nil {
			return err
		}
		var v verifyItem
		if n != expect {
			v.gap = &CorruptError{Seq: expect, Reason: fmt.Sprintf("missing (next record is %d)", n)}
		}
		expect = n + 1
		r, err := verifyRecord(j, n, it.Value(), &fb, &arena)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				return err
			}
			v.bad = ce
		} else {
			v.r = r
			if !isPtr(it.Value()) {
				// An inline record's bytes live only until the iterator moves.
				v.link, v.hashed = r.linkOf(), true
			}
		}
		batch = append(batch, v)
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
			select {
			case <-stop:
				if pending != nil {
					<-hashed
				}
				return ErrVerifyStopped
			default:
			}
		}
	}
	for pending != nil || len(batch) > 0 {
		if err := flush(); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return j.storageError(expect-1, err)
	}
	if expect <= seq {
		return fail(&CorruptError{Seq: expect, Reason: "missing (journal ends before it)"})
	}
	return nil
}

// verifyRecord is loadRecord for VerifyUntil: a record stored in the log is
// read through fb and copied to the end of *arena, where it stays until
// its batch has been checked.
func verifyRecord(j *Journal, seq uint64, v []byte, fb *frameBuf, arena *[]byte) (record, error) {
	raw, err := j.recordBytes(seq, v, fb)
	if err != nil {
		return record{}, err
	}
	if isPtr(v) {
		start := len(*arena)
		*arena = append(*arena, raw...)
		raw = (*arena)[start:len(*arena):len(*arena)]
	}
	return decodeRecord(seq, raw)
}

// verifyBatch is how many records Verify hashes at a time.
const verifyBatch = 2048

// verifyItem is one record on its way through Verify: a gap before it, a
// record that could not be read, or the record and its link.
type verifyItem struct {
	gap, bad *CorruptError
	r        record
	link     link
	hashed   bool
}

// hashLinks computes the links of a batch's records on every core.
func hashLinks(batch []verifyItem) {
	workers := min(runtime.GOMAXPROCS(0), 8)
	if len(batch) < 64 || workers < 2 {
		workers = 1
	}
	var wg sync.WaitGroup
	per := (len(batch) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		part := batch[min(w*per, len(batch)):min((w+1)*per, len(batch))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range part {
				if v := &part[i]; v.bad == nil && !v.hashed {
					v.link, v.hashed = v.r.linkOf(), true
				}
			}
		}()
	}
	wg.Wait()
}

// Event reads one event by sequence number (checksum verified).
func (j *Journal) Event(seq uint64) (_ events.Event, err error) {
	defer recoverRead(&err)
	v, closer, err := j.rd.Get(eventKey(seq))
	if err != nil {
		return events.Event{}, fmt.Errorf("journal: read event %d: %w", seq, err)
	}
	defer closer.Close()
	r, _, err := j.loadRecord(seq, v)
	if err != nil {
		return events.Event{}, err
	}
	return decodeEvent(r)
}

// EnvelopeEvents returns the events of envelope id in sequence order; with
// children, also those of the envelopes split from it (IDs "id.N...").
func (j *Journal) EnvelopeEvents(id string, children bool) (_ []events.Event, err error) {
	defer recoverRead(&err)
	lower := []byte(prefixIndex + id)
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(string(lower))})
	if err != nil {
		return nil, fmt.Errorf("journal: iterate: %w", err)
	}
	var seqs []uint64
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()[len(prefixIndex):]
		if len(k) < 9 || k[len(k)-9] != 0 {
			continue
		}
		env := string(k[:len(k)-9])
		if env != id && !(children && strings.HasPrefix(env, id+".")) {
			continue
		}
		seqs = append(seqs, seqFromIndex(k))
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("journal: iterate: %w", err)
	}
	sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	out := make([]events.Event, 0, len(seqs))
	for _, s := range seqs {
		e, err := j.Event(s)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func seqFromIndex(k []byte) uint64 {
	var s uint64
	for _, b := range k[len(k)-8:] {
		s = s<<8 | uint64(b)
	}
	return s
}

// VerifyRecords checks, for each of seqs in the hot journal, the record's
// checksum and that it carries the link of the record before it (the
// chain at that point); an archived record or the first one is checked
// against the archive mark or alone. It returns the problems found, by
// sequence number (none: nil). What the operator console shows beside a
// message's events.
func (j *Journal) VerifyRecords(seqs []uint64) (problems map[uint64]string, err error) {
	defer recoverRead(&err)
	mark := *j.mark.Load()
	load := func(n uint64) (record, error) {
		v, closer, err := j.rd.Get(eventKey(n))
		if err != nil {
			return record{}, &CorruptError{Seq: n, Reason: "missing: " + err.Error()}
		}
		defer closer.Close()
		r, _, err := j.loadRecord(n, v)
		if err == nil && !isPtr(v) {
			r.body = append([]byte(nil), r.body...) // v is Pebble's until closer.Close
		}
		return r, err
	}
	for _, n := range seqs {
		if n <= mark.seq {
			continue // archived: checked when the archive is read
		}
		r, err := load(n)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				return nil, err
			}
			if problems == nil {
				problems = map[uint64]string{}
			}
			problems[n] = ce.Reason
			continue
		}
		prev := mark.link // the first hot record follows the archive mark
		if n > mark.seq+1 {
			p, err := load(n - 1)
			if err != nil {
				continue // reported for n-1 when it is asked for
			}
			prev = p.linkOf()
		}
		if !r.follows(prev) {
			if problems == nil {
				problems = map[uint64]string{}
			}
			problems[n] = chainBroken(n, prev, r).Reason
		}
	}
	return problems, nil
}

// SeqAt returns the first hot record journaled at or after t (LastSeq()+1
// when none is), by a binary search over the records' times: about
// log2(records) reads, no scan. Times follow commit order up to the
// moments appends wait for their group commit, so a window found this way
// is exact to within that.
func (j *Journal) SeqAt(t time.Time) (uint64, error) {
	lo, hi := j.FirstSeq(), j.LastSeq()+1 // the answer is in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo)/2
		e, err := j.Event(mid)
		if err != nil {
			return 0, err
		}
		if e.Time.Before(t) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, nil
}
