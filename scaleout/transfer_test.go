//go:build !race

package scaleout

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/scaleout/etcdtest"
)

// local is a node's queue for the transfer tests: a real journal on disk,
// the queue projection, and the scheduler's calls recorded.
type local struct {
	*Local
	mu       sync.Mutex
	released []string
	enqueued []string
}

func newLocal(t *testing.T) *local {
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	q := projections.NewQueue()
	j.Subscribe(q.Apply)
	l := &local{}
	l.Local = &Local{Journal: j, Queue: q,
		Withhold: func(string) (bool, error) { return true, nil },
		Release:  func(id string) { l.mu.Lock(); l.released = append(l.released, id); l.mu.Unlock() },
		Enqueue:  func(id string) { l.mu.Lock(); l.enqueued = append(l.enqueued, id); l.mu.Unlock() },
	}
	return l
}

func (l *local) append(t *testing.T, w journal.Write) {
	t.Helper()
	if _, err := l.Journal.Append(w); err != nil {
		t.Fatal(err)
	}
}

// openTransfer journals, on the origin, a child envelope whose transfer to
// peer started and got no outcome (the origin crashed).
func openTransfer(t *testing.T, l *local, peer string) string {
	root := events.NewID()
	child := root + ".1"
	l.append(t, journal.Write{Bodies: []journal.Body{{Key: root, Data: []byte("Subject: x\r\n\r\nhi\r\n")}}, Events: []events.Event{
		{Envelope: root, Payload: events.Received{Sender: "s@a.test", Recipients: []string{"r@b.test"}, BodyKey: root, Size: 19}},
		{Envelope: root, Payload: events.Split{Mode: "domain", Children: []events.Child{{ID: child, Recipients: []string{"r@b.test"}}}}},
		{Envelope: child, Payload: events.TransferStarted{Peer: peer, Recipients: []string{"r@b.test"}}},
	}})
	return child
}

// bodyOf is the body key of a child openTransfer made (its root's ID).
func bodyOf(child string) string { return strings.TrimSuffix(child, ".1") }

func lastType(t *testing.T, j *journal.Journal, id string) events.Type {
	evs, err := j.EnvelopeEvents(id, false)
	if err != nil || len(evs) == 0 {
		t.Fatalf("events of %s: %v (%d)", id, err, len(evs))
	}
	return evs[len(evs)-1].Type()
}

// After a crash of the origin, a transfer the peer completed ends as
// TransferredOut and one it never got as TransferAborted (the envelope is
// scheduled here again), both before the origin delivers anything.
func TestOpenTransfersResolvedByAskingThePeer(t *testing.T) {
	e := etcdtest.Start(t)
	origin := startNode(t, "origin", e.Endpoint, 0)
	peer := startNode(t, "peer", e.Endpoint, 0)
	waitFor(t, 15*time.Second, "both nodes see two members", func() bool {
		return origin.Clustered() && peer.Clustered() && origin.memberCount() == 2 && peer.memberCount() == 2
	})
	ol, pl := newLocal(t), newLocal(t)
	ol.DropBodies = true // queue.keep_bodies = false
	arrived := openTransfer(t, ol, "peer")
	lostOnTheWay := openTransfer(t, ol, "peer")
	// The peer had journaled the first one before the origin died.
	pl.append(t, journal.Write{Bodies: []journal.Body{{Key: arrived, Data: []byte("Subject: x\r\n\r\nhi\r\n")}},
		Events: []events.Event{{Envelope: arrived, Payload: events.TransferredIn{Origin: "origin", Sender: "s@a.test",
			Recipients: []string{"r@b.test"}, BodyKey: arrived, Size: 19}}}})
	peer.SetLocal(pl.Local)
	origin.SetLocal(ol.Local) // starts the resolver
	waitFor(t, 15*time.Second, "both open transfers resolved", func() bool {
		return lastType(t, ol.Journal, arrived) == events.TypeTransferredOut && lastType(t, ol.Journal, lostOnTheWay) == events.TypeTransferAborted
	})
	ol.mu.Lock()
	released := append([]string(nil), ol.released...)
	ol.mu.Unlock()
	if len(released) != 1 || released[0] != lostOnTheWay {
		t.Fatalf("scheduled here again: %v, want only %s", released, lostOnTheWay)
	}
	if e, ok := ol.Queue.Get(lostOnTheWay); !ok || e.State != projections.StateDeferred {
		t.Fatalf("the aborted envelope is not due here again: %+v", e)
	}
	if _, ok := ol.Queue.Get(arrived); ok {
		t.Fatal("the transferred envelope is still live at the origin")
	}
	// Without keep_bodies, the body left with the envelope; the aborted
	// one's is still needed here.
	if b, err := ol.Journal.Body(bodyOf(arrived)); err == nil {
		t.Fatalf("the transferred envelope's body is still stored at the origin (%d bytes)", len(b))
	}
	if _, err := ol.Journal.Body(bodyOf(lostOnTheWay)); err != nil {
		t.Fatalf("the body of the envelope that stays here: %v", err)
	}
	// A commit that arrives after the peer said "not here" is refused: the
	// origin delivers that envelope itself.
	res, err := peer.handleTransfer("offer", transferReq{Op: "offer", Envelope: lostOnTheWay, Meta: &events.TransferredIn{Origin: "origin"}})
	if err == nil || res.Have {
		t.Fatalf("a late offer of a resolved envelope was taken: %+v %v", res, err)
	}
}
