package journal

import (
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
func (j *Journal) PutSnapshot(name string, seq uint64, data []byte) (err error) {
	if j.opts.ReadOnly {
		return ErrReadOnly
	}
	if err := j.Err(); err != nil {
		return err
	}
	b := make([]byte, 12, 12+len(data))
	binary.BigEndian.PutUint64(b, seq)
	binary.BigEndian.PutUint32(b[8:], crc32.Checksum(data, castagnoli))
	b = append(b, data...)
	if err := WriteFile(j.snapshotFile(name), b, 0o600); err != nil {
		return fmt.Errorf("journal: save snapshot %s: %w", name, err)
	}
	// The older form, if any, would only take room in the index.
	if _, closer, err := j.rd.Get([]byte(prefixSnapshot + name)); err == nil {
		closer.Close()
		j.send(&appendReq{put: &putReq{key: []byte(prefixSnapshot + name), del: true}, done: make(chan appendRes, 1)})
	}
	return nil
}

// Snapshot returns the state saved under name and the sequence number it
// is as of. A snapshot that fails its checksum or claims a sequence past
// the end of the journal is an error (the caller replays from scratch).
func (j *Journal) Snapshot(name string) (_ uint64, _ []byte, err error) {
	defer recoverRead(&err)
	v, ferr := os.ReadFile(j.snapshotFile(name))
	if errors.Is(ferr, os.ErrNotExist) {
		var closer io.Closer
		v, closer, err = j.rd.Get([]byte(prefixSnapshot + name))
		if errors.Is(err, pebble.ErrNotFound) {
			return 0, nil, ErrNoSnapshot
		}
		if err != nil {
			return 0, nil, fmt.Errorf("journal: read snapshot %s: %w", name, err)
		}
		v = append([]byte(nil), v...)
		closer.Close()
	} else if ferr != nil {
		return 0, nil, fmt.Errorf("journal: read snapshot %s: %w", name, ferr)
	}
	if len(v) < 12 {
		return 0, nil, fmt.Errorf("journal: snapshot %s is truncated", name)
	}
	seq := binary.BigEndian.Uint64(v)
	data := v[12:]
	if crc32.Checksum(data, castagnoli) != binary.BigEndian.Uint32(v[8:]) {
		return 0, nil, fmt.Errorf("journal: snapshot %s fails its checksum", name)
	}
	if seq > j.LastSeq() {
		return 0, nil, fmt.Errorf("journal: snapshot %s is as of sequence %d, past the journal's end %d", name, seq, j.LastSeq())
	}
	return seq, data, nil
}
