package journal

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ledgermail/ledgermail/events"
)

// The archive: a prefix of the log, records 1..N, leaves the hot journal
// (ArchiveThrough). With Keep, the records go, byte for byte (so the chain
// verifies across), with the bodies their Received events stored, into a
// gzip-compressed, read-only archive segment <first>-<last>.arc.gz under
// the archive directory; without, they are dropped. The hot journal keeps
// N and the link of record N (metaArchivedKey), so that the chain goes on
// from it and Scan reads the archive first, transparently.
//
// Segment format (inside gzip):
//
//	"LMARCH1\n" JSON header line {"first","last","prev","prev_crc"}
//	'R' uvarint(len) record          (as stored in the hot journal), or
//	'r' uvarint(len) record without its 32-byte SHA-256 link: a format-2
//	    record's link is the SHA-256 of the record before it, so it is
//	    put back when read, and the record's CRC, which covers it, checks
//	    it (an edit of record k shows as record k+1's mismatch, as a
//	    stored link would). Random hashes do not compress; this halves
//	    the segment.
//	'B' uvarint(len) key uvarint(len) body   (after its Received record)
//	'E' uvarint(records) sha256 link of the last record
const (
	archiveMagic   = "LMARCH1\n"
	archiveSuffix  = ".arc.gz"
	prefixMeta     = "m/"
	archiveTmpName = ".archive.tmp"
)

var metaArchivedKey = []byte(prefixMeta + "archived")

// archiveMark is how far the log has left the hot journal: records up to
// seq are archived (or dropped: those up to dropped are gone for good), and
// link is record seq's.
type archiveMark struct {
	seq     uint64
	link    link
	dropped uint64
}

func (m archiveMark) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, m.seq)
	b = binary.BigEndian.AppendUint32(b, m.link.crc)
	b = append(b, m.link.sha[:]...)
	return binary.BigEndian.AppendUint64(b, m.dropped)
}

func decodeArchiveMark(b []byte) (archiveMark, error) {
	if len(b) != 8+4+32+8 {
		return archiveMark{}, fmt.Errorf("journal: malformed archive mark (%d bytes)", len(b))
	}
	m := archiveMark{seq: binary.BigEndian.Uint64(b), dropped: binary.BigEndian.Uint64(b[44:])}
	m.link.crc = binary.BigEndian.Uint32(b[8:])
	copy(m.link.sha[:], b[12:44])
	return m, nil
}

func (j *Journal) loadArchiveMark() (err error) {
	defer recoverRead(&err)
	v, closer, err := j.db.Get(metaArchivedKey)
	if errors.Is(err, pebble.ErrNotFound) {
		j.mark.Store(&archiveMark{})
		return nil
	}
	if err != nil {
		return j.storageError(0, fmt.Errorf("read the archive mark: %w", err))
	}
	defer closer.Close()
	m, err := decodeArchiveMark(v)
	if err != nil {
		return err
	}
	j.mark.Store(&m)
	return nil
}

// FirstSeq is the first record still in the hot journal (earlier ones are
// archived or dropped).
func (j *Journal) FirstSeq() uint64 { return j.mark.Load().seq + 1 }

// ArchiveDir is where archive segments are kept.
func (j *Journal) ArchiveDir() string {
	if j.opts.ArchiveDir != "" {
		return j.opts.ArchiveDir
	}
	return filepath.Join(filepath.Dir(filepath.Clean(j.opts.Dir)), "archive")
}

// ArchiveOptions say what happens to what leaves the hot journal.
type ArchiveOptions struct {
	// Keep writes an archive segment; false drops the records.
	Keep bool
	// Bodies copies the stored bodies into the segment too.
	Bodies bool
}

// ArchiveResult says what ArchiveThrough did.
type ArchiveResult struct {
	From, To uint64 // the records that left the hot journal (none: To < From)
	Bodies   int    // bodies archived
	Segment  string // the archive segment written, if any
	Freed    int64  // bytes of body segments deleted
}

// ArchiveThrough moves records up to and including to out of the hot
// journal, with their index entries and the bodies their Received events
// stored. The caller decides that no live envelope has a record there (see
// queue.Prune). The segment is durable before the hot journal forgets the
// records; a crash in between leaves a segment that the next run replaces.
func (j *Journal) ArchiveThrough(to uint64, o ArchiveOptions) (res ArchiveResult, err error) {
	defer recoverRead(&err)
	if j.opts.ReadOnly {
		return res, ErrReadOnly
	}
	mark := *j.mark.Load()
	res.From = mark.seq + 1
	to = min(to, j.LastSeq())
	res.To = to
	if to <= mark.seq {
		return res, nil
	}
	var aw *archiveWriter
	if o.Keep {
		if aw, err = j.createArchive(mark.seq+1, to, mark.link); err != nil {
			return res, err
		}
		defer aw.abort()
	}
	batch := j.db.NewBatch()
	defer batch.Close()
	var bodyKeys []string
	var maxEnv, maxBody string // what was deleted lies below these
	prev, havePrev := mark.link, true
	it, err := j.rd.NewIter(&pebble.IterOptions{LowerBound: eventKey(mark.seq + 1), UpperBound: eventKey(to + 1)})
	if err != nil {
		return res, fmt.Errorf("journal: iterate: %w", err)
	}
	defer it.Close()
	expect := mark.seq + 1
	for ok := it.First(); ok; ok = it.Next() {
		seq, err := seqFromKey(it.Key())
		if err != nil {
			return res, err
		}
		if seq != expect {
			return res, &CorruptError{Seq: expect, Reason: fmt.Sprintf("missing (next record is %d); not archived", seq)}
		}
		expect++
		r, raw, err := j.loadRecord(seq, it.Value())
		if err != nil {
			return res, fmt.Errorf("%w; not archived", err)
		}
		if havePrev && !r.follows(prev) {
			return res, chainBroken(seq, prev, r)
		}
		prev = r.linkOf()
		e, err := decodeEvent(r)
		if err != nil {
			return res, fmt.Errorf("%w; not archived", err)
		}
		if aw != nil {
			if err := aw.record(raw); err != nil {
				return res, err
			}
		}
		if err := batch.Delete(indexKey(e.Envelope, seq), nil); err != nil {
			return res, err
		}
		e.Seq = seq
		if err := unstageAddresses(batch, e); err != nil {
			return res, err
		}
		maxEnv = max(maxEnv, e.Envelope)
		if rcv, ok := e.Payload.(events.Received); ok && rcv.BodyKey != "" {
			bodyKeys = append(bodyKeys, rcv.BodyKey)
			maxBody = max(maxBody, rcv.BodyKey)
			if aw != nil && o.Bodies {
				n, err := aw.body(j, rcv.BodyKey)
				if err != nil {
					return res, err
				}
				res.Bodies += n
			}
		}
	}
	if err := it.Error(); err != nil {
		return res, j.storageError(expect-1, err)
	}
	if expect != to+1 {
		return res, &CorruptError{Seq: expect, Reason: "missing (journal ends before it); not archived"}
	}
	if aw != nil {
		if res.Segment, err = aw.finish(prev); err != nil {
			return res, err
		}
	}
	next := archiveMark{seq: to, link: prev, dropped: mark.dropped}
	if !o.Keep {
		next.dropped = to
	}
	var maxSeg uint64
	err = j.onWriter(func() error {
		if err := batch.DeleteRange(eventKey(mark.seq+1), eventKey(to+1), nil); err != nil {
			return err
		}
		var dropped []uint64
		for _, k := range bodyKeys {
			ref, err := j.stageDrop(batch, k)
			if err != nil {
				return err
			}
			if seg := ref.Segment; seg != 0 {
				dropped = append(dropped, seg)
				maxSeg = max(maxSeg, seg)
			}
		}
		if err := batch.Set(metaArchivedKey, next.encode(), nil); err != nil {
			return err
		}
		if err := j.persist(batch); err != nil {
			j.fail(fmt.Errorf("commit: %w", err))
			return j.Err()
		}
		j.mark.Store(&next)
		// A new shared segment from now on, so that the old one can go
		// once nothing in it is needed.
		j.bodies.closeShared()
		freed, err := j.reclaimSegments()
		res.Freed = freed
		return err
	})
	if err != nil {
		return res, err
	}
	// Give the space back now rather than at some later compaction, by
	// compacting only the key ranges that held what was deleted: the
	// records, and the index entries and body pointers up to the largest
	// archived envelope ID and body key (IDs sort by time, so these are
	// prefixes of their ranges) — work in proportion to what left, not to
	// the hot journal.
	ranges := [][2][]byte{
		{eventKey(res.From), eventKey(to + 1)},
		{[]byte(prefixIndex), append([]byte(prefixIndex+maxEnv), 0xff)},
		{[]byte(prefixBodyRef), append(bodyRefKey(maxBody), 0xff)},
		{[]byte(prefixBody), append(bodyKey(maxBody), 0xff)},
		{[]byte(prefixSegRef), segRefPrefix(maxSeg + 1)},
	}
	for _, r := range ranges {
		if err := j.db.Compact(context.Background(), r[0], r[1], false); err != nil {
			return res, fmt.Errorf("journal: compact after archiving: %w", err)
		}
	}
	return res, nil
}

// archiveWriter writes one archive segment.
type archiveWriter struct {
	dir, tmp    string
	first, last uint64
	f           *os.File
	gz          *gzip.Writer
	w           *bufio.Writer
	n           uint64
	done        bool
}

func (j *Journal) createArchive(first, last uint64, prev link) (*archiveWriter, error) {
	dir := j.ArchiveDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: create %s: %w", dir, err)
	}
	// A segment from a run that crashed before the hot journal forgot its
	// records covers records still here: it is replaced.
	segs, _ := listArchives(dir)
	for _, s := range segs {
		if s.first >= first {
			os.Remove(s.path)
		}
	}
	tmp := filepath.Join(dir, archiveTmpName)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: create archive segment: %w", err)
	}
	aw := &archiveWriter{dir: dir, tmp: tmp, first: first, last: last, f: f}
	aw.gz = gzip.NewWriter(f)
	aw.w = bufio.NewWriterSize(aw.gz, 64<<10)
	h, _ := json.Marshal(map[string]any{"first": first, "last": last, "prev": hex.EncodeToString(prev.sha[:]), "prev_crc": prev.crc})
	aw.w.WriteString(archiveMagic)
	aw.w.Write(append(h, '\n'))
	return aw, nil
}

func (aw *archiveWriter) entry(kind byte, parts ...[]byte) error {
	aw.w.WriteByte(kind)
	for _, p := range parts {
		aw.w.Write(binary.AppendUvarint(nil, uint64(len(p))))
		if _, err := aw.w.Write(p); err != nil {
			return fmt.Errorf("journal: write archive segment: %w", err)
		}
	}
	return nil
}

func (aw *archiveWriter) record(raw []byte) error {
	aw.n++
	if len(raw) >= recordOverhead && raw[0] == recordFormat {
		compact := make([]byte, 0, len(raw)-32)
		compact = append(append(compact, raw[:9]...), raw[9+32:]...)
		return aw.entry('r', compact)
	}
	return aw.entry('R', raw)
}

// body copies the stored body under key (1), or nothing when it is gone
// (dropped at delivery: keep_bodies = false) (0).
func (aw *archiveWriter) body(j *Journal, key string) (int, error) {
	br, err := j.openBody(key)
	if errors.Is(err, ErrNoBody) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer br.Close()
	aw.w.WriteByte('B')
	aw.w.Write(binary.AppendUvarint(nil, uint64(len(key))))
	aw.w.WriteString(key)
	aw.w.Write(binary.AppendUvarint(nil, uint64(br.Size())))
	if n, err := io.Copy(aw.w, br.Reader()); err != nil || n != br.Size() {
		return 0, fmt.Errorf("journal: archive body %s: read %d of %d bytes: %v", key, n, br.Size(), err)
	}
	return 1, nil
}

// finish writes the trailer and makes the segment durable under its name.
func (aw *archiveWriter) finish(last link) (string, error) {
	aw.w.WriteByte('E')
	aw.w.Write(binary.AppendUvarint(nil, aw.n))
	aw.w.Write(last.sha[:])
	err := aw.w.Flush()
	if err == nil {
		err = aw.gz.Close()
	}
	if err == nil {
		err = aw.f.Sync()
	}
	if cerr := aw.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("journal: write archive segment: %w", err)
	}
	name := filepath.Join(aw.dir, fmt.Sprintf("%020d-%020d%s", aw.first, aw.last, archiveSuffix))
	if err := os.Chmod(aw.tmp, 0o400); err != nil {
		return "", err
	}
	if err := os.Rename(aw.tmp, name); err != nil {
		return "", fmt.Errorf("journal: write archive segment: %w", err)
	}
	if err := syncDir(aw.dir); err != nil {
		return "", fmt.Errorf("journal: write archive segment: %w", err)
	}
	aw.done = true
	return name, nil
}

func (aw *archiveWriter) abort() {
	if aw.done {
		return
	}
	aw.f.Close()
	os.Remove(aw.tmp)
}

type archiveFile struct {
	path        string
	first, last uint64
}

// listArchives returns the archive segments in dir, by first record.
func listArchives(dir string) ([]archiveFile, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: list %s: %w", dir, err)
	}
	var out []archiveFile
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), archiveSuffix)
		if !ok {
			continue
		}
		a, b, ok := strings.Cut(name, "-")
		first, err1 := strconv.ParseUint(a, 10, 64)
		last, err2 := strconv.ParseUint(b, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		out = append(out, archiveFile{path: filepath.Join(dir, e.Name()), first: first, last: last})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].first < out[b].first })
	return out, nil
}

// scanArchive reads the archived records from..mark.seq in order, checking
// each record, the chain (across segments and into the hot journal), each
// segment's trailer and each archived body against its Received event. It
// returns the link of the last record (for the hot journal's first).
// Records dropped by configuration are skipped silently; a missing or
// truncated segment is a *CorruptError naming it.
func (j *Journal) scanArchive(from uint64, mark archiveMark, fn func(events.Event) error, fail func(error) error, onRecord func(uint64, link)) (link, bool, error) {
	start := max(from, mark.dropped+1)
	files, err := listArchives(j.ArchiveDir())
	if err != nil {
		return link{}, false, err
	}
	var prev link
	havePrev := false
	expect := mark.dropped + 1 // the chain is checked from the first kept record
	for _, af := range files {
		if af.last > mark.seq || af.last < expect {
			continue // a leftover, or below what was dropped
		}
		if af.first > expect {
			if err := fail(&CorruptError{Seq: expect, Reason: fmt.Sprintf("missing: records %d to %d were archived but no archive segment holds them", expect, af.first-1)}); err != nil {
				return link{}, false, err
			}
			havePrev = false
		}
		last, ok, err := j.readArchive(af, start, prev, havePrev, fn, fail, onRecord)
		if err != nil {
			return link{}, false, err
		}
		prev, havePrev = last, ok
		expect = af.last + 1
	}
	if expect <= mark.seq {
		if err := fail(&CorruptError{Seq: expect, Reason: fmt.Sprintf("missing: records %d to %d were archived but no archive segment holds them", expect, mark.seq)}); err != nil {
			return link{}, false, err
		}
		return link{}, false, nil
	}
	if mark.dropped == mark.seq {
		return mark.link, true, nil
	}
	return prev, havePrev, nil
}

// readArchive reads one segment, calling fn for the records from start on.
// onRecord, if set, is told each record's link.
func (j *Journal) readArchive(af archiveFile, start uint64, prev link, havePrev bool, fn func(events.Event) error, fail func(error) error, onRecord func(uint64, link)) (link, bool, error) {
	name := filepath.Base(af.path)
	f, err := os.Open(af.path)
	if err != nil {
		return link{}, false, fail(&CorruptError{Seq: af.first, Reason: fmt.Sprintf("archive segment %s cannot be read: %v", name, err)})
	}
	defer f.Close()
	done := af.first - 1 // the last record read whole
	truncated := func(err error) error {
		return fail(&CorruptError{Seq: done + 1, Reason: fmt.Sprintf("archive segment %s is truncated or damaged after record %d: %v", name, done, err)})
	}
	gz, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return link{}, false, truncated(err)
	}
	r := bufio.NewReaderSize(gz, 64<<10)
	magic := make([]byte, len(archiveMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != archiveMagic {
		return link{}, false, truncated(fmt.Errorf("no archive header"))
	}
	hline, err := r.ReadBytes('\n')
	var hdr struct {
		First, Last uint64
		Prev        string
		PrevCRC     uint32 `json:"prev_crc"`
	}
	if err != nil || json.Unmarshal(hline, &hdr) != nil || hdr.First != af.first || hdr.Last != af.last {
		return link{}, false, truncated(fmt.Errorf("bad archive header"))
	}
	if !havePrev && hdr.Prev != "" {
		// The first kept segment: its header says what came before.
		if b, err := hex.DecodeString(hdr.Prev); err == nil && len(b) == 32 {
			copy(prev.sha[:], b)
			prev.crc = hdr.PrevCRC
			havePrev = af.first > 1
		}
		if af.first == 1 {
			havePrev = true
		}
	}
	sums := map[string]struct {
		seq uint64
		sum string
	}{}
	for {
		kind, err := r.ReadByte()
		if err != nil {
			return link{}, false, truncated(err)
		}
		switch kind {
		case 'R', 'r':
			raw, err := readChunk(r)
			if err != nil {
				return link{}, false, truncated(err)
			}
			seq := done + 1
			if kind == 'r' {
				if len(raw) < 9 {
					return link{}, false, truncated(fmt.Errorf("short record %d", seq))
				}
				full := make([]byte, 0, len(raw)+32)
				full = append(append(append(full, raw[:9]...), prev.sha[:]...), raw[9:]...)
				raw = full
			}
			rec, err := decodeRecord(seq, raw)
			if err != nil && kind == 'r' && havePrev {
				err = &CorruptError{Seq: seq, Reason: fmt.Sprintf("chain broken: record %d was altered or replaced, or record %d is damaged (record %d's checksum does not cover the link of the record before it)", seq-1, seq, seq)}
			}
			if err != nil {
				if err := fail(err); err != nil {
					return link{}, false, err
				}
				done, havePrev = seq, false
				continue
			}
			if havePrev && !rec.follows(prev) {
				if err := fail(chainBroken(seq, prev, rec)); err != nil {
					return link{}, false, err
				}
			}
			prev, havePrev, done = rec.linkOf(), true, seq
			if onRecord != nil {
				onRecord(seq, prev)
			}
			e, err := decodeEvent(rec)
			if err != nil {
				if err := fail(err); err != nil {
					return link{}, false, err
				}
				continue
			}
			if rcv, ok := e.Payload.(events.Received); ok && rcv.BodyKey != "" {
				sums[rcv.BodyKey] = struct {
					seq uint64
					sum string
				}{seq, rcv.BodySHA256}
			}
			if seq >= start {
				if err := fn(e); err != nil {
					return link{}, false, err
				}
			}
		case 'B':
			key, err := readChunk(r)
			if err != nil {
				return link{}, false, truncated(err)
			}
			n, err := binary.ReadUvarint(r)
			if err != nil {
				return link{}, false, truncated(err)
			}
			h := sha256.New()
			if _, err := io.CopyN(h, r, int64(n)); err != nil {
				return link{}, false, truncated(err)
			}
			if want, ok := sums[string(key)]; ok && want.sum != "" && hex.EncodeToString(h.Sum(nil)) != want.sum {
				if err := fail(&CorruptError{Seq: want.seq, Reason: fmt.Sprintf("archived body %s is corrupt (SHA-256 %s, its Received event says %s)", key, hex.EncodeToString(h.Sum(nil)), want.sum)}); err != nil {
					return link{}, false, err
				}
			}
		case 'E':
			count, err := binary.ReadUvarint(r)
			var sha [32]byte
			if err == nil {
				_, err = io.ReadFull(r, sha[:])
			}
			if err != nil {
				return link{}, false, truncated(err)
			}
			if done != af.last || count != af.last-af.first+1 || (havePrev && sha != prev.sha) {
				return link{}, false, truncated(fmt.Errorf("its trailer does not match its records"))
			}
			if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
				return link{}, false, truncated(fmt.Errorf("data after the trailer"))
			}
			return prev, havePrev, nil
		default:
			return link{}, false, truncated(fmt.Errorf("unknown entry %q", kind))
		}
	}
}

func readChunk(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > 1<<30 {
		return nil, fmt.Errorf("entry of %d bytes", n)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r, b)
	return b, err
}
