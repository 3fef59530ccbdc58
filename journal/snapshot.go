package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/cockroachdb/pebble/v2"
)

const prefixSnapshot = "s/" // s/<name> -> seq(8) | crc32c(4) | data

// ErrNoSnapshot is returned by Snapshot when none was saved under the name.
var ErrNoSnapshot = errors.New("journal: no snapshot")

// PutSnapshot durably stores a read model's state as of sequence seq, so
// that start-up replays only the events after it. A snapshot is an
// optimisation: the events stay and remain the truth.
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
	res := j.send(&appendReq{put: &putReq{key: []byte(prefixSnapshot + name), value: b}, done: make(chan appendRes, 1)})
	if err := res.err; err != nil {
		return fmt.Errorf("journal: save snapshot %s: %w", name, err)
	}
	return nil
}

// Snapshot returns the state saved under name and the sequence number it
// is as of. A snapshot that fails its checksum or claims a sequence past
// the end of the journal is an error (the caller replays from scratch).
func (j *Journal) Snapshot(name string) (_ uint64, _ []byte, err error) {
	defer recoverRead(&err)
	v, closer, err := j.rd.Get([]byte(prefixSnapshot + name))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil, ErrNoSnapshot
	}
	if err != nil {
		return 0, nil, fmt.Errorf("journal: read snapshot %s: %w", name, err)
	}
	defer closer.Close()
	if len(v) < 12 {
		return 0, nil, fmt.Errorf("journal: snapshot %s is truncated", name)
	}
	seq := binary.BigEndian.Uint64(v)
	data := append([]byte(nil), v[12:]...)
	if crc32.Checksum(data, castagnoli) != binary.BigEndian.Uint32(v[8:]) {
		return 0, nil, fmt.Errorf("journal: snapshot %s fails its checksum", name)
	}
	if seq > j.LastSeq() {
		return 0, nil, fmt.Errorf("journal: snapshot %s is as of sequence %d, past the journal's end %d", name, seq, j.LastSeq())
	}
	return seq, data, nil
}
