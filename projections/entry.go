package projections

import (
	"strings"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// entry is how the live queue holds one envelope: an Envelope's fields in
// half its memory (128 bytes against 256), since a queue of a million
// deferred envelopes is mostly these. What every envelope has is inline;
// what few have is behind one pointer (entryMore): a body key that is
// neither the parent's ID nor the envelope's own, pending recipients that
// are not all of the recipients, the header block and Received details a
// child keeps until its first attempt ends, a state, time, size or count
// this form cannot hold.
//
// The recipients are one string: the address itself when there is one (no
// slice to allocate), the addresses joined by NUL, which no address holds
// (RFC 5321), when there are more.
//
// The queue converts at its edges: Apply inflates the envelope an event
// concerns, folds it (lifecycle.Fold) and deflates it again; every read
// returns Envelopes. Strings are shared, never copied.
type entry struct {
	id, parent, sender, lastError string
	rcpts                         string // see above
	lastSeq                       uint64
	arrived, next                 int64 // see stamp
	size                          uint32
	attempts                      int32
	state                         uint8 // an index into stateCodes
	flags                         uint16
	more                          *entryMore
}

// rcptSep joins the recipients of an entry.
const rcptSep = "\x00"

// entryMore holds what few envelopes need (see entry).
type entryMore struct {
	bodyKey       string
	pending       []string
	prepend       string
	received      *events.Received
	state         State     // when not in stateCodes
	arrived, next time.Time // when stamp cannot hold them
	attempts      int       // when an int32 cannot
	size          int64     // when a uint32 cannot
	recipients    []string  // when one holds a NUL (rcpts cannot)
}

const (
	flagWarned      = 1 << iota
	flagBodyParent  // the body key is the parent's ID
	flagBodyOwn     // the body key is the envelope's own ID
	flagPendingAll  // pending = recipients
	flagArrivedMore // the arrival time is in more
	flagNextMore    // the next attempt's time is in more
	flagAttemptsMore
	flagSizeMore
	flagRcptsMore // the recipients are in more
)

// stateCodes are the states an entry holds as a byte; stateOther says the
// state is in more.
var stateCodes = [...]State{"", StateReceived, StateSplit, StateQueued, StateActive, StateDeferred, StateDelivered,
	StateBounced, StateExpired, StateDeleted, StateLost, StateTransferring, StateTransferred}

const stateOther = 255

func stateCode(s State) (uint8, bool) {
	for i, c := range stateCodes {
		if c == s {
			return uint8(i), true
		}
	}
	return stateOther, false
}

// stamp is a time as Unix nanoseconds, 0 for the zero time; ok is false
// for a time that form cannot hold (outside 1700–2200, or exactly the Unix
// epoch), which the entry keeps in more. Times come back in the local
// zone, without a monotonic reading.
func stamp(t time.Time) (n int64, ok bool) {
	if t.IsZero() {
		return 0, true
	}
	if y := t.Year(); y < 1700 || y > 2200 {
		return 0, false
	}
	n = t.UnixNano()
	return n, n != 0
}

func unstamp(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func (x *entry) stateOf() State {
	if x.state == stateOther {
		return x.more.state
	}
	return stateCodes[x.state]
}

func (x *entry) bodyKey() string {
	switch {
	case x.flags&flagBodyParent != 0:
		return x.parent
	case x.flags&flagBodyOwn != 0:
		return x.id
	case x.more != nil:
		return x.more.bodyKey
	}
	return ""
}

// recipients splits x.rcpts (sharing its bytes).
func (x *entry) recipients() []string {
	switch {
	case x.flags&flagRcptsMore != 0:
		return x.more.recipients
	case x.rcpts == "":
		return nil
	case strings.Contains(x.rcpts, rcptSep):
		return strings.Split(x.rcpts, rcptSep)
	}
	return []string{x.rcpts}
}

// joinRecipients is the rcpts of an entry holding rs (ok is false when
// one holds a NUL: they cannot be joined); like, the rcpts it held, is
// kept when it holds the same (no new string).
func joinRecipients(rs []string, like string) (_ string, ok bool) {
	for _, r := range rs {
		if strings.Contains(r, rcptSep) {
			return "", false
		}
	}
	switch len(rs) {
	case 0:
		return "", true
	case 1:
		return rs[0], rs[0] != "" // "" is no recipients
	}
	if like != "" && joinedAre(like, rs) {
		return like, true
	}
	return strings.Join(rs, rcptSep), true
}

// joinedAre says whether joined is rs joined by rcptSep.
func joinedAre(joined string, rs []string) bool {
	for i, r := range rs {
		head, rest, found := strings.Cut(joined, rcptSep)
		if head != r || found != (i < len(rs)-1) {
			return false
		}
		joined = rest
	}
	return true
}

// fill sets *e to the envelope x holds (sharing its strings).
func (x *entry) fill(e *Envelope) {
	rs := x.recipients()
	*e = Envelope{ID: x.id, Parent: x.parent, State: x.stateOf(), Sender: x.sender, Recipients: rs,
		Size: int64(x.size), Arrived: unstamp(x.arrived), Attempts: int(x.attempts),
		NextAttempt: unstamp(x.next), LastError: x.lastError, Warned: x.flags&flagWarned != 0,
		BodyKey: x.bodyKey(), LastSeq: x.lastSeq}
	if x.flags&flagPendingAll != 0 {
		e.Pending = rs
	}
	if m := x.more; m != nil {
		e.Prepend, e.Received = m.prepend, m.received
		if x.flags&flagPendingAll == 0 {
			e.Pending = m.pending
		}
		if x.flags&flagArrivedMore != 0 {
			e.Arrived = m.arrived
		}
		if x.flags&flagNextMore != 0 {
			e.NextAttempt = m.next
		}
		if x.flags&flagAttemptsMore != 0 {
			e.Attempts = m.attempts
		}
		if x.flags&flagSizeMore != 0 {
			e.Size = m.size
		}
	}
}

// envelope returns the envelope x holds, sharing its strings and slices.
func (x *entry) envelope() *Envelope {
	e := new(Envelope)
	x.fill(e)
	return e
}

// toEntry sets *x to hold e.
func toEntry(e *Envelope, x *entry) {
	rcpts, joined := joinRecipients(e.Recipients, x.rcpts)
	*x = entry{id: e.ID, parent: e.Parent, sender: e.Sender, lastError: e.LastError, rcpts: rcpts,
		size: uint32(e.Size), lastSeq: e.LastSeq, attempts: int32(e.Attempts)}
	more := func() *entryMore { // allocated only for what needs it
		if x.more == nil {
			x.more = new(entryMore)
		}
		return x.more
	}
	if !joined {
		x.flags |= flagRcptsMore
		more().recipients = e.Recipients
	}
	var ok bool
	if x.state, ok = stateCode(e.State); !ok {
		more().state = e.State
	}
	if int64(x.size) != e.Size {
		x.flags |= flagSizeMore
		more().size = e.Size
	}
	if int(x.attempts) != e.Attempts {
		x.flags |= flagAttemptsMore
		more().attempts = e.Attempts
	}
	if e.Warned {
		x.flags |= flagWarned
	}
	switch e.BodyKey {
	case e.Parent:
		x.flags |= flagBodyParent
	case e.ID:
		x.flags |= flagBodyOwn
	default:
		more().bodyKey = e.BodyKey
	}
	if sameStrings(e.Pending, e.Recipients) {
		x.flags |= flagPendingAll
	} else if len(e.Pending) > 0 {
		more().pending = e.Pending
	}
	if x.arrived, ok = stamp(e.Arrived); !ok {
		x.flags |= flagArrivedMore
		more().arrived = e.Arrived
	}
	if x.next, ok = stamp(e.NextAttempt); !ok {
		x.flags |= flagNextMore
		more().next = e.NextAttempt
	}
	if e.Prepend != "" || e.Received != nil {
		m := more()
		m.prepend, m.received = e.Prepend, e.Received
	}
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
