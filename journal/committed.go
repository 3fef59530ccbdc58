package journal

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ledgermail/ledgermail/events"
)

// CommittedFile is the name, in the journal directory, of the record of the
// last committed sequence number. It lives outside the log and the index so
// that a log that lost its tail where the index had not reached (recovery
// stops at the first damaged frame) or a damaged MANIFEST cannot take
// acknowledged records away unnoticed.
const CommittedFile = "COMMITTED"

// LostError is returned by Open when the journal ends before the last
// sequence number it is known to have committed.
type LostError struct {
	End       uint64 // the last record the journal still has
	Committed uint64 // the last record it had acknowledged
}

func (e *LostError) Error() string {
	return fmt.Sprintf("journal: records %d to %d were committed but are gone (the journal now ends at %d): its log is damaged; refusing to continue (run `mta journal repair`)",
		e.End+1, e.Committed, e.End)
}

// Lost returns the range of committed sequence numbers missing from the
// journal ([0, 0] when none): only non-empty with Options.AllowLost.
func (j *Journal) Lost() (from, to uint64) { return j.lost[0], j.lost[1] }

func encodeCommitted(seq uint64) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), seq)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// readCommitted returns the recorded sequence number; ok is false when the
// file does not exist (a journal from before it, or a new one).
func readCommitted(dir string) (seq uint64, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, CommittedFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("journal: read %s: %w", CommittedFile, err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.BigEndian.Uint32(b[8:]) {
		return 0, false, fmt.Errorf("journal: %s is corrupt (%d bytes, checksum mismatch); refusing to trust the journal's end (run `mta journal repair`)",
			filepath.Join(dir, CommittedFile), len(b))
	}
	return binary.BigEndian.Uint64(b), true, nil
}

// checkCommitted compares the journal's end with COMMITTED and, when
// writable, opens the file for the writer.
func (j *Journal) checkCommitted() error {
	m, ok, err := readCommitted(j.opts.Dir)
	if err != nil && !j.opts.AllowLost {
		return err
	}
	if ok && m > j.lastSeq {
		if !j.opts.AllowLost {
			return &LostError{End: j.lastSeq, Committed: m}
		}
		j.lost = [2]uint64{j.lastSeq + 1, m}
	}
	if j.opts.ReadOnly {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(j.opts.Dir, CommittedFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("journal: open %s: %w", CommittedFile, err)
	}
	j.marker = f
	if !ok || m != j.lastSeq {
		if m > j.lastSeq && j.lost[1] != 0 {
			// Lost records stay reported until a repair resets the mark.
			return nil
		}
		return j.writeCommitted(j.lastSeq)
	}
	return nil
}

// writeCommitted records seq in COMMITTED; it is not fsynced (the log is,
// before it, so the file can only lag the journal, never lead it).
func (j *Journal) writeCommitted(seq uint64) error {
	if j.marker == nil {
		return nil
	}
	if _, err := j.marker.WriteAt(encodeCommitted(seq), 0); err != nil {
		return fmt.Errorf("journal: write %s: %w", CommittedFile, err)
	}
	return nil
}

// FreeBytes returns the space available to this process on the journal's
// filesystem.
func FreeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("journal: statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// HasRoom says whether n more bytes can be accepted while keeping
// Options.MinFree free for the events of delivering what was already
// accepted (Postfix's queue_minfree). A failed journal has no room; a
// filesystem that cannot be asked is assumed to have room (the write
// itself will then say).
func (j *Journal) HasRoom(n int64) bool {
	if j.Err() != nil {
		return false
	}
	if j.opts.MinFree <= 0 {
		return true
	}
	free, err := FreeBytes(j.opts.Dir)
	if err != nil {
		return true
	}
	return free-n >= j.opts.MinFree
}

// Head returns the journal's head: the last sequence number and the
// SHA-256 link of its record, which every later record chains from. Kept
// elsewhere (a log shipped off the machine), it lets VerifyAnchor prove
// later that the journal still extends it.
func (j *Journal) Head() (uint64, string) {
	h := j.head.Load()
	if h == nil {
		return 0, ""
	}
	return h.seq, hex.EncodeToString(h.sha[:])
}

type headInfo struct {
	seq uint64
	sha [32]byte
}

// setHead publishes the head (the writer, after each commit; Open).
func (j *Journal) setHead(seq uint64, l link) { j.head.Store(&headInfo{seq: seq, sha: l.sha}) }

// ErrAnchor is wrapped by VerifyAnchor's error when the journal does not
// extend the anchor.
var ErrAnchor = errors.New("journal: does not extend the anchor")

// VerifyAnchor checks that record seq still has the SHA-256 link hash (an
// earlier Head). With the chain from there on verified by Scan or Verify,
// that proves the journal extends that head: no record up to seq was
// changed, removed or reordered, even with its checksums recomputed.
func (j *Journal) VerifyAnchor(seq uint64, hash string) (err error) {
	defer recoverRead(&err)
	if mark := *j.mark.Load(); seq <= mark.seq {
		return j.verifyArchivedAnchor(seq, hash, mark)
	}
	v, closer, err := j.rd.Get(eventKey(seq))
	if err != nil {
		return fmt.Errorf("%w: record %d cannot be read: %v", ErrAnchor, seq, err)
	}
	defer closer.Close()
	r, _, err := j.loadRecord(seq, v)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAnchor, err)
	}
	l := r.linkOf()
	if got := hex.EncodeToString(l.sha[:]); !strings.EqualFold(got, hash) {
		return fmt.Errorf("%w: record %d's link is %s, the anchor says %s", ErrAnchor, seq, got, hash)
	}
	return nil
}

// verifyArchivedAnchor is VerifyAnchor for a record that left the hot
// journal: its link is read from the archive (or, for the last archived
// record, from the hot journal's mark).
func (j *Journal) verifyArchivedAnchor(seq uint64, hash string, mark archiveMark) error {
	var found *link
	if seq == mark.seq {
		found = &mark.link
	} else if seq > mark.dropped {
		_, _, err := j.scanArchive(seq, mark, func(events.Event) error { return nil }, func(err error) error { return err },
			func(n uint64, l link) {
				if n == seq {
					found = &l
				}
			})
		if err != nil {
			return fmt.Errorf("%w: record %d is archived and cannot be read: %v", ErrAnchor, seq, err)
		}
	}
	if found == nil {
		return fmt.Errorf("%w: record %d was dropped from the journal (retention without archive)", ErrAnchor, seq)
	}
	if got := hex.EncodeToString(found.sha[:]); !strings.EqualFold(got, hash) {
		return fmt.Errorf("%w: record %d's link is %s, the anchor says %s", ErrAnchor, seq, got, hash)
	}
	return nil
}
