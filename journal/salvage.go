package journal

import (
	"errors"
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// SalvageReport says what Salvage kept and what it could not.
type SalvageReport struct {
	Records int // records copied as they were
	// Unreadable lists, per sequence number, why a record could not be
	// read; each became a RecordLost event in the new journal.
	Unreadable map[uint64]string
	// Affected are the envelopes that lost a record or their body: the
	// caller accounts for those still live (a Lost event and a DSN).
	Affected map[string]string
	// MissingBodies are the body keys, referenced by a Received event, that
	// could not be copied (absent or unreadable), with why. A body dropped
	// after delivery (keep_bodies = false) is absent too: only envelopes
	// still live that need one are concerned.
	MissingBodies map[string]string
	Bodies        int // bodies copied
}

// Salvage reads the damaged journal in src (read-only: src is left as it
// is) and writes into dst, which must not exist, a new journal holding
// every record that can be read, with its original content and sequence
// number, re-chained. An unreadable record (corrupt, missing, in a table
// that fails its checksum, or lost from a damaged WAL up to the COMMITTED
// mark) is replaced by a RecordLost event at its sequence number, naming
// the envelope when the per-envelope index still does. Bodies referenced by
// readable Received events are copied; those that cannot be read mark their
// envelope affected.
func Salvage(src, dst string, progress func(seq, total uint64)) (SalvageReport, error) {
	rep := SalvageReport{Unreadable: map[uint64]string{}, Affected: map[string]string{}, MissingBodies: map[string]string{}}
	if _, err := os.Stat(dst); err == nil {
		return rep, fmt.Errorf("journal: salvage: %s already exists", dst)
	}
	old, err := Open(Options{Dir: src, ReadOnly: true, AllowLost: true})
	if err != nil {
		return rep, err
	}
	defer old.Close()
	end := old.LastSeq()
	if _, to := old.Lost(); to > end {
		end = to
	}
	owners := old.indexOwners()
	db, err := pebble.Open(dst, &pebble.Options{})
	if err != nil {
		return rep, fmt.Errorf("journal: salvage: create %s: %w", dst, err)
	}
	bodies, err := openBodyStore(dst, false)
	if err != nil {
		db.Close()
		return rep, err
	}
	defer bodies.closeShared()
	batch := db.NewBatch()
	flush := func(opt *pebble.WriteOptions) error {
		if opt == pebble.Sync {
			if err := bodies.syncShared(); err != nil {
				return err
			}
		}
		if err := batch.Commit(opt); err != nil {
			return fmt.Errorf("journal: salvage: write %s: %w", dst, err)
		}
		batch.Close()
		batch = db.NewBatch()
		return nil
	}
	// What left for the archive stays there: the salvaged journal goes on
	// from the same mark.
	mark := *old.mark.Load()
	if mark.seq > 0 {
		batch.Set(metaArchivedKey, mark.encode(), nil)
	}
	prev := mark.link
	for seq := mark.seq + 1; seq <= end; seq++ {
		if progress != nil && seq%10000 == 0 {
			progress(seq, end)
		}
		e, payload, why := old.readForSalvage(seq)
		env := e.Envelope
		if why != "" {
			env = owners[seq]
			if env == "" {
				env = "-"
			} else {
				rep.Affected[env] = fmt.Sprintf("record %d unreadable: %s", seq, why)
			}
			rep.Unreadable[seq] = why
			payload, err = events.Marshal(events.Event{Envelope: env, Version: events.CurrentVersion, Payload: events.RecordLost{Reason: why}})
			if err != nil {
				return rep, err
			}
		} else {
			rep.Records++
			if rcv, ok := e.Payload.(events.Received); ok && rcv.BodyKey != "" {
				err := copyBody(old, bodies, batch, rcv.BodyKey)
				switch {
				case err == nil:
					rep.Bodies++
				case errors.Is(err, ErrNoBody):
					rep.MissingBodies[rcv.BodyKey] = "its body is missing"
				default:
					rep.MissingBodies[rcv.BodyKey] = fmt.Sprintf("its body is unreadable: %v", err)
				}
			}
		}
		var rec []byte
		rec, prev = encodeRecord(seq, prev, payload)
		batch.Set(eventKey(seq), rec, nil)
		batch.Set(indexKey(env, seq), nil, nil)
		if batch.Count() >= 3000 {
			if err := flush(pebble.NoSync); err != nil {
				return rep, err
			}
		}
	}
	if err := flush(pebble.Sync); err != nil {
		return rep, err
	}
	batch.Close()
	if err := db.Close(); err != nil {
		return rep, fmt.Errorf("journal: salvage: close %s: %w", dst, err)
	}
	return rep, nil
}

// readForSalvage reads one record; why is non-empty when it cannot be used.
func (j *Journal) readForSalvage(seq uint64) (e events.Event, payload []byte, why string) {
	defer func() {
		if r := recover(); r != nil {
			why = fmt.Sprintf("storage is corrupt: %v", r)
		}
	}()
	if lo, hi := j.Lost(); lo != 0 && seq >= lo && seq <= hi {
		return e, nil, "lost from a damaged log or MANIFEST"
	}
	v, closer, err := j.rd.Get(eventKey(seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return e, nil, "missing"
	}
	if err != nil {
		return e, nil, j.storageError(seq-1, err).Error()
	}
	defer closer.Close()
	r, _, err := j.loadRecord(seq, v)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			return e, nil, ce.Reason
		}
		return e, nil, err.Error()
	}
	e, err = decodeEvent(r)
	if err != nil {
		return e, nil, err.Error()
	}
	return e, append([]byte(nil), r.data...), ""
}

// indexOwners reads as much of the per-envelope index as it can: which
// envelope each sequence number belonged to.
func (j *Journal) indexOwners() map[uint64]string {
	out := map[uint64]string{}
	func() {
		defer func() { recover() }()
		it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixIndex), UpperBound: prefixEnd(prefixIndex)})
		if err != nil {
			return
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			k := it.Key()[len(prefixIndex):]
			if len(k) < 9 || k[len(k)-9] != 0 {
				continue
			}
			out[seqFromIndex(k)] = string(k[:len(k)-9])
		}
	}()
	return out
}

// copyBody copies the body under key from old into dst's segments (the
// caller syncs them) and stages its pointer in b.
func copyBody(old *Journal, dst *bodyStore, b *pebble.Batch, key string) error {
	br, err := old.OpenBody(key, "")
	if err != nil {
		return err
	}
	defer br.Close()
	ref, err := dst.appendSharedFrom(br.Reader())
	if err != nil {
		return err
	}
	if ref.Length != br.Size() {
		return fmt.Errorf("read %d of its %d bytes", ref.Length, br.Size())
	}
	return stageRef(b, key, ref)
}
