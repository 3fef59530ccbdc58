package journal

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
)

const prefixSnapshot = "s/" // s/<name> -> seq(8) | crc32c(4) | data

// ErrNoSnapshot is returned by Snapshot when none was saved under the name.
var ErrNoSnapshot = errors.New("journal: no snapshot")

// snapshotFile is where a read model's snapshot lives, beside the log: a
// file read at page-cache speed, not a value of tens of megabytes that
// the index would read block by block and rewrite at each compaction.
// Snapshots saved by earlier versions, under s/<name> in the index, are
// still read when there is no file.
func (j *Journal) snapshotFile(name string) string {
	return filepath.Join(j.opts.Dir, "SNAPSHOT-"+name)
}

// PutSnapshot durably stores a read model's state as of sequence seq, so
// that start-up replays only the events after it. A snapshot is an
// optimisation: the events stay and remain the truth. Every event up to
// seq must be durable (a read model folds only committed events).
func (j *Journal) PutSnapshot(name string, seq uint64, data []byte) error {
	_, _, err := j.WriteSnapshot(name, func(w io.Writer) (uint64, error) {
		_, err := w.Write(data)
		return seq, err
	})
	return err
}

// WriteSnapshot is PutSnapshot for a state written as it is encoded:
// write writes it to w and returns the sequence number it is as of. It
// goes through a 256 KiB buffer into the new file (a million queued
// envelopes make some 230 MB, never held whole), whose header (the
// sequence number and the checksum) is filled in at the end; the file
// replaces the old snapshot only once it is whole and synced. It returns
// the sequence number and the state's size.
func (j *Journal) WriteSnapshot(name string, write func(w io.Writer) (uint64, error)) (seq uint64, size int64, err error) {
	if j.opts.ReadOnly {
		return 0, 0, ErrReadOnly
	}
	if err := j.Err(); err != nil {
		return 0, 0, err
	}
	err = writeFileFrom(j.snapshotFile(name), 0o600, func(f *os.File) error {
		var head [12]byte
		if _, err := f.Write(head[:]); err != nil {
			return err
		}
		cw := &crcWriter{w: bufio.NewWriterSize(f, 256<<10)}
		var err error
		if seq, err = write(cw); err != nil {
			return err
		}
		if err := cw.w.Flush(); err != nil {
			return err
		}
		binary.BigEndian.PutUint64(head[:], seq)
		binary.BigEndian.PutUint32(head[8:], cw.crc)
		size = cw.n
		_, err = f.WriteAt(head[:], 0)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("journal: save snapshot %s: %w", name, err)
	}
	// The older form, if any, would only take room in the index.
	if _, closer, err := j.rd.Get([]byte(prefixSnapshot + name)); err == nil {
		closer.Close()
		j.send(&appendReq{put: &putReq{key: []byte(prefixSnapshot + name), del: true}, done: make(chan appendRes, 1)})
	}
	return seq, size, nil
}

// crcWriter counts and checksums what goes through it.
type crcWriter struct {
	w   *bufio.Writer
	crc uint32
	n   int64
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, castagnoli, p[:n])
	c.n += int64(n)
	return n, err
}

// Snapshot returns the state saved under name and the sequence number it
// is as of. A snapshot that fails its checksum or claims a sequence past
// the end of the journal is an error (the caller replays from scratch).
func (j *Journal) Snapshot(name string) (uint64, []byte, error) {
	seq, sr, err := j.OpenSnapshot(name)
	if err != nil {
		return 0, nil, err
	}
	defer sr.Close()
	data, err := io.ReadAll(sr) // the checksum's verdict comes at the end
	if err != nil {
		return 0, nil, err
	}
	return seq, data, nil
}

// SnapshotReader streams a snapshot's state (OpenSnapshot).
type SnapshotReader struct {
	name string
	src  io.Reader
	f    *os.File // nil for a snapshot of the older form
	size int64
	crc  uint32
	want uint32
}

// Size is how many bytes the state holds.
func (s *SnapshotReader) Size() int64 { return s.size }

// Read reads the state. At its end it returns io.EOF only when what was
// read matches the snapshot's checksum, an error otherwise: a reader must
// reach the end before it trusts what it decoded.
func (s *SnapshotReader) Read(p []byte) (int, error) {
	n, err := s.src.Read(p)
	s.crc = crc32.Update(s.crc, castagnoli, p[:n])
	if errors.Is(err, io.EOF) && s.crc != s.want {
		return n, fmt.Errorf("journal: snapshot %s fails its checksum", s.name)
	}
	return n, err
}

// Close releases the snapshot's file.
func (s *SnapshotReader) Close() error {
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}

// OpenSnapshot is Snapshot as a stream, for a state too large to hold
// whole beside what it decodes into (a million queued envelopes make a
// snapshot of some 230 MB): the checksum is checked as the state is read,
// and its verdict comes at the end (see SnapshotReader.Read). The caller
// closes the reader.
func (j *Journal) OpenSnapshot(name string) (_ uint64, _ *SnapshotReader, err error) {
	defer recoverRead(&err)
	var head [12]byte
	sr := &SnapshotReader{name: name}
	f, ferr := os.Open(j.snapshotFile(name))
	switch {
	case errors.Is(ferr, os.ErrNotExist):
		// The older form, a value in the index.
		v, closer, err := j.rd.Get([]byte(prefixSnapshot + name))
		if errors.Is(err, pebble.ErrNotFound) {
			return 0, nil, ErrNoSnapshot
		}
		if err != nil {
			return 0, nil, fmt.Errorf("journal: read snapshot %s: %w", name, err)
		}
		v = append([]byte(nil), v...)
		closer.Close()
		if len(v) < len(head) {
			return 0, nil, fmt.Errorf("journal: snapshot %s is truncated", name)
		}
		copy(head[:], v)
		sr.src, sr.size = bytes.NewReader(v[len(head):]), int64(len(v)-len(head))
	case ferr != nil:
		return 0, nil, fmt.Errorf("journal: read snapshot %s: %w", name, ferr)
	default:
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return 0, nil, fmt.Errorf("journal: read snapshot %s: %w", name, err)
		}
		if _, err := io.ReadFull(f, head[:]); err != nil {
			f.Close()
			return 0, nil, fmt.Errorf("journal: snapshot %s is truncated", name)
		}
		sr.src, sr.f, sr.size = f, f, st.Size()-int64(len(head))
	}
	seq := binary.BigEndian.Uint64(head[:])
	if seq > j.LastSeq() {
		sr.Close()
		return 0, nil, fmt.Errorf("journal: snapshot %s is as of sequence %d, past the journal's end %d", name, seq, j.LastSeq())
	}
	sr.want = binary.BigEndian.Uint32(head[8:])
	return seq, sr, nil
}
