package projections

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// snapMagic starts a snapshot in the binary form below; anything else is
// the older gob form, still read.
//
// The form: the magic, then uvarint sequence number; the counts (uvarint
// n, then n × state string, varint count); the body references (the same
// with body keys; written empty now, and skipped when read: they are
// counted from the envelopes); the suspended domains (uvarint n, then n × domain,
// time); the live envelopes (uvarint n, then n × envelope). A string is a
// uvarint length and its bytes; a time is a uvarint length and
// time.MarshalBinary's bytes; a string list is a uvarint count and its
// strings. An envelope is ID, Parent, State, Sender, LastError, BodyKey,
// Prepend, Recipients, Pending, varint Size, Arrived, uvarint Attempts,
// NextAttempt, one byte Warned, uvarint LastSeq, then a string holding the
// Received event's JSON ("" when the live queue does not keep it).
const snapMagic = "LMQS1\n"

var errSnapTruncated = errors.New("truncated")

// snapState is what a snapshot holds, taken under the read lock: the
// envelopes' entries (which the queue replaces instead of changing while
// the snapshot encodes: see put), so that encoding runs without the lock.
type snapState struct {
	seq       uint64
	counts    map[State]int
	suspended map[string]time.Time
	live      []*entry
}

// encodeSnapshot writes st in the binary form to w, through a buffer of
// about 64 KiB it reuses: a snapshot of a million envelopes (some 230 MB)
// is never held whole.
func encodeSnapshot(w io.Writer, st *snapState) error {
	const flushAt = 64 << 10
	b := make([]byte, 0, flushAt+4096)
	flush := func() error {
		_, err := w.Write(b)
		b = b[:0]
		return err
	}
	b = append(b, snapMagic...)
	b = binary.AppendUvarint(b, st.seq)
	b = binary.AppendUvarint(b, uint64(len(st.counts)))
	for s, n := range st.counts {
		b = appendStr(b, string(s))
		b = binary.AppendVarint(b, int64(n))
	}
	// The body references are counted again from the envelopes at load:
	// none are listed.
	b = binary.AppendUvarint(b, 0)
	b = binary.AppendUvarint(b, uint64(len(st.suspended)))
	for d, t := range st.suspended {
		b = appendStr(b, d)
		b = appendTime(b, t)
	}
	b = binary.AppendUvarint(b, uint64(len(st.live)))
	var e Envelope
	for _, x := range st.live {
		x.fill(&e)
		for _, s := range []string{e.ID, e.Parent, string(e.State), e.Sender, e.LastError, e.BodyKey, e.Prepend} {
			b = appendStr(b, s)
		}
		b = appendStrs(b, e.Recipients)
		b = appendStrs(b, e.Pending)
		b = binary.AppendVarint(b, e.Size)
		b = appendTime(b, e.Arrived)
		b = binary.AppendUvarint(b, uint64(e.Attempts))
		b = appendTime(b, e.NextAttempt)
		if e.Warned {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.AppendUvarint(b, e.LastSeq)
		var recv []byte
		if e.Received != nil {
			var err error
			if recv, err = json.Marshal(e.Received); err != nil {
				return fmt.Errorf("queue snapshot: envelope %s: %w", e.ID, err)
			}
		}
		b = appendStr(b, string(recv))
		if len(b) >= flushAt {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendStrs(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendStr(b, s)
	}
	return b
}

func appendTime(b []byte, t time.Time) []byte {
	tb, err := t.MarshalBinary()
	if err != nil {
		// Only a zone offset that is not a whole minute: keep the instant.
		tb, _ = t.UTC().MarshalBinary()
	}
	b = binary.AppendUvarint(b, uint64(len(tb)))
	return append(b, tb...)
}

// snapReader decodes the binary form as it streams in: b is the unread
// part of a window over src, refilled as the decoding needs (a snapshot of
// a million envelopes is some 230 MB: it is not held whole beside the
// queue it becomes). The first error sticks.
type snapReader struct {
	b    []byte    // unread bytes of the window
	buf  []byte    // the window
	src  io.Reader // what follows b (nil once it has ended)
	left int64     // bytes src still holds
	err  error
	q    *Queue // strings many envelopes repeat are shared through it
}

// snapChunk is how many decoded envelopes go to the maps at a time.
const snapChunk = 4096

// snapWindow is the window's size, unless an item needs more.
const snapWindow = 1 << 20

// fill makes b hold at least n bytes, reading from src, and says whether
// it does (false: the snapshot ends before, or src failed: r.err).
func (r *snapReader) fill(n int) bool {
	if len(r.b) >= n {
		return true
	}
	want := n // at most what is left
	if int64(want-len(r.b)) > r.left {
		want = len(r.b) + int(r.left)
	}
	if r.src == nil || r.err != nil || want <= len(r.b) {
		return false
	}
	// The unread bytes move to the window's start (a larger window when
	// want needs it), and src fills what follows, up to what is left.
	if want > len(r.buf) {
		buf := make([]byte, max(want, 2*len(r.buf)))
		r.b = buf[:copy(buf, r.b)]
		r.buf = buf
	} else {
		r.b = r.buf[:copy(r.buf, r.b)]
	}
	room := r.buf[len(r.b):]
	if int64(len(room)) > r.left {
		room = room[:r.left]
	}
	k, err := io.ReadAtLeast(r.src, room, want-len(r.b))
	r.b = r.buf[:len(r.b)+k]
	r.left -= int64(k)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		r.src = nil
	default:
		r.err = err
	}
	return len(r.b) >= n
}

// more says how many bytes the snapshot still holds.
func (r *snapReader) more() int64 { return int64(len(r.b)) + r.left }

func (r *snapReader) uvarint() uint64 { return readNum(r, binary.Uvarint) }
func (r *snapReader) varint() int64   { return readNum(r, binary.Varint) }

func readNum[T uint64 | int64](r *snapReader, read func([]byte) (T, int)) T {
	if r.err != nil {
		return 0
	}
	r.fill(binary.MaxVarintLen64) // fewer at the end
	v, n := read(r.b)
	if n <= 0 {
		if r.err == nil {
			r.err = errSnapTruncated
		}
		return 0
	}
	r.b = r.b[n:]
	return v
}

// bytes reads a length-prefixed item. What it returns is valid until the
// next read: every caller copies or decodes it at once.
func (r *snapReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(r.more()) || !r.fill(int(n)) {
		if r.err == nil {
			r.err = errSnapTruncated
		}
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *snapReader) flag() bool {
	if r.err != nil {
		return false
	}
	if !r.fill(1) {
		if r.err == nil {
			r.err = errSnapTruncated
		}
		return false
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v == 1
}

func (r *snapReader) str() string { return string(r.bytes()) }

// shared is str for strings many envelopes repeat: no copy when the queue
// already holds one.
func (r *snapReader) shared() string {
	v := r.bytes()
	if len(v) == 0 {
		return ""
	}
	if s, ok := r.q.shared[string(v)]; ok {
		return s
	}
	return r.q.share(string(v))
}

// count bounds a decoded length by what is left (each item takes a byte
// at least), so a damaged count cannot make a huge allocation.
func (r *snapReader) count() int {
	n := r.uvarint()
	if r.err == nil && n > uint64(r.more()) {
		r.err = errSnapTruncated
	}
	if r.err != nil {
		return 0
	}
	return int(n)
}

// strLike is str that returns like itself when the bytes are the same
// (a child's body key is its parent's ID): one string, not two.
func (r *snapReader) strLike(like string) string {
	v := r.bytes()
	if string(v) == like {
		return like
	}
	return string(v)
}

// strs reads a string list; an item equal to like's at the same place is
// like's (pending recipients are mostly the recipients).
func (r *snapReader) strs(like []string) []string {
	n := r.count()
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		if i < len(like) {
			ss[i] = r.strLike(like[i])
		} else {
			ss[i] = r.str()
		}
	}
	return ss
}

func (r *snapReader) time() time.Time {
	var t time.Time
	v := r.bytes()
	if r.err == nil {
		if err := t.UnmarshalBinary(v); err != nil {
			r.err = err
		}
	}
	return t
}

// decodeSnapshot reads the binary form (after its magic) from src, which
// holds size bytes, into st, through a window of the given size (grown
// when an item needs it); the strings it shares go into q.shared. It reads
// src to its end: a stream that checks a checksum there fails then.
func (q *Queue) decodeSnapshot(src io.Reader, size int64, st *queueState, window int) error {
	r := &snapReader{src: src, left: size, buf: make([]byte, min(int64(window), max(size, 1))), q: q}
	r.b = r.buf[:0]
	st.Seq = r.uvarint()
	st.Counts = map[State]int{}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		s := State(r.shared())
		st.Counts[s] = int(r.varint())
	}
	// The body references are counted again from the envelopes (see
	// LoadSnapshot): skipped.
	for n := r.count(); n > 0 && r.err == nil; n-- {
		r.bytes()
		r.varint()
	}
	st.Suspended = map[string]time.Time{}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		d := r.str()
		st.Suspended[d] = r.time()
	}
	n := r.count()
	// The envelopes go to the maps on a goroutine of their own, in chunks,
	// while the next ones decode: a start-up loads a large snapshot on two
	// cores.
	chunks, built := make(chan []*entry, 8), make(chan struct{})
	go func() {
		defer close(built)
		st.newMaps(n)
		for c := range chunks {
			for _, x := range c {
				st.add(x)
			}
		}
	}()
	err := func() error {
		defer func() {
			close(chunks)
			<-built
		}()
		var e Envelope
		chunk := make([]*entry, 0, snapChunk)
		for i := 0; i < n && r.err == nil; i++ {
			e = Envelope{ID: r.str(), Parent: r.str(), State: State(r.shared()), Sender: r.shared(), LastError: r.shared()}
			e.BodyKey = r.strLike(e.Parent)
			e.Prepend = r.str()
			e.Recipients = r.strs(nil)
			e.Pending = r.strs(e.Recipients)
			e.Size = r.varint()
			e.Arrived = r.time()
			e.Attempts = int(r.uvarint())
			e.NextAttempt = r.time()
			e.Warned = r.flag()
			e.LastSeq = r.uvarint()
			if recv := r.bytes(); len(recv) > 0 && r.err == nil {
				var p events.Received
				if err := json.Unmarshal(recv, &p); err != nil {
					return fmt.Errorf("envelope %s: %w", e.ID, err)
				}
				e.Received = &p
			}
			x := new(entry) // one each: a slice of them would live as long as its last
			toEntry(&e, x)
			if chunk = append(chunk, x); len(chunk) == cap(chunk) {
				chunks <- chunk
				chunk = make([]*entry, 0, snapChunk)
			}
		}
		if len(chunk) > 0 {
			chunks <- chunk
		}
		return r.err
	}()
	if err != nil {
		return err
	}
	if r.more() > 0 {
		return fmt.Errorf("%d bytes after the last envelope", r.more())
	}
	// Read src to its end: a stream that checks a checksum there fails
	// then. (A src that ended already was read to its end.)
	if r.src != nil {
		if _, err := io.Copy(io.Discard, r.src); err != nil {
			return err
		}
	}
	return nil
}
