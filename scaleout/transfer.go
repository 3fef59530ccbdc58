package scaleout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// Local is what a node's transfers need of its own queue.
type Local struct {
	Journal *journal.Journal
	Queue   *projections.Queue
	// Withhold takes an envelope out of scheduling (false while an attempt
	// of it runs); Release puts it back; Enqueue schedules a new one.
	Withhold func(id string) (bool, error)
	Release  func(id string)
	Enqueue  func(id string)
	// DropBodies (queue.keep_bodies = false) deletes a transferred
	// envelope's stored body with its TransferredOut, unless a live
	// sibling shares it.
	DropBodies bool
}

// SetLocal gives the node its queue, once the actors run: from then on it
// takes envelopes from draining peers, and resolves the transfers a crash
// left open (TransferStarted without an outcome) in the background.
func (n *Node) SetLocal(l *Local) {
	n.tmu.Lock()
	n.local = l
	n.tmu.Unlock()
	n.wg.Add(1)
	go n.resolveLoop()
}

func (n *Node) getLocal() *Local {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	return n.local
}

// chunkSize is how much of a body one transfer message carries.
const chunkSize = 256 << 10

// transferReq is one step of the transfer protocol, origin → peer.
type transferReq struct {
	Op       string                `json:"op"` // offer, chunk, commit, has
	Envelope string                `json:"envelope"`
	Meta     *events.TransferredIn `json:"meta,omitempty"`   // offer
	Data     []byte                `json:"data,omitempty"`   // chunk
	SHA256   string                `json:"sha256,omitempty"` // commit
	Size     int64                 `json:"size,omitempty"`   // commit
}

type transferResp struct {
	Have  bool   `json:"have"` // the peer has the envelope, durably
	Error string `json:"error,omitempty"`
}

// incoming is a body being received from a draining peer.
type incoming struct {
	meta events.TransferredIn
	file *journal.BodyFile
	sum  hash.Hash
}

// receiveTransfer runs on the node actor, one request at a time.
func (n *Node) receiveTransfer(c actor.Context, kind string, msg any) {
	var req transferReq
	if err := unwrap(msg, &req); err != nil {
		c.Respond(wrap(transferResp{Error: err.Error()}))
		return
	}
	res, err := n.handleTransfer(kind, req)
	if err != nil {
		n.o.Log.Warn("transfer request failed", zap.String("envelope", req.Envelope), zap.String("op", kind), zap.Error(err))
		res.Error = err.Error()
	}
	c.Respond(wrap(res))
}

func (n *Node) handleTransfer(kind string, req transferReq) (transferResp, error) {
	l := n.getLocal()
	if l == nil {
		return transferResp{}, errors.New("this node is starting: its queue is not ready")
	}
	have := func() (bool, error) {
		evs, err := l.Journal.EnvelopeEvents(req.Envelope, false)
		return len(evs) > 0, err
	}
	switch kind {
	case "has":
		h, err := have()
		if err != nil {
			return transferResp{}, err
		}
		if !h {
			// The origin will deliver it itself: a commit still on its
			// way must not make it ours too.
			n.refused[req.Envelope] = true
			n.dropIncoming(req.Envelope)
		}
		return transferResp{Have: h}, nil
	case "offer":
		if h, err := have(); err != nil || h {
			return transferResp{Have: h}, err
		}
		if n.refused[req.Envelope] {
			return transferResp{}, errors.New("this envelope's transfer was resolved as not here")
		}
		if req.Meta == nil {
			return transferResp{}, errors.New("offer without the envelope")
		}
		n.dropIncoming(req.Envelope)
		f, err := l.Journal.CreateBodyFile()
		if err != nil {
			return transferResp{}, err
		}
		n.incoming[req.Envelope] = &incoming{meta: *req.Meta, file: f, sum: sha256.New()}
		return transferResp{}, nil
	case "chunk":
		in := n.incoming[req.Envelope]
		if in == nil {
			return transferResp{}, errors.New("chunk without an offer")
		}
		if _, err := in.file.Write(req.Data); err != nil {
			n.dropIncoming(req.Envelope)
			return transferResp{}, err
		}
		in.sum.Write(req.Data)
		return transferResp{}, nil
	case "commit":
		in := n.incoming[req.Envelope]
		if h, err := have(); err != nil || h {
			n.dropIncoming(req.Envelope)
			return transferResp{Have: h}, err
		}
		if in == nil {
			return transferResp{}, errors.New("commit without an offer")
		}
		delete(n.incoming, req.Envelope)
		got := hex.EncodeToString(in.sum.Sum(nil))
		if in.file.Size() != req.Size || got != req.SHA256 {
			in.file.Abort()
			return transferResp{}, fmt.Errorf("body arrived with %d bytes, sha256 %s; the origin sent %d, %s", in.file.Size(), got, req.Size, req.SHA256)
		}
		meta := in.meta
		meta.BodyKey, meta.BodySHA256, meta.Size = req.Envelope, got, req.Size
		if _, err := l.Journal.Append(journal.Write{Bodies: []journal.Body{{Key: req.Envelope, File: in.file}},
			Events: []events.Event{{Envelope: req.Envelope, Payload: meta}}}); err != nil {
			return transferResp{}, err
		}
		n.o.Log.Info("envelope transferred in", zap.String("envelope", req.Envelope), zap.String("origin", meta.Origin),
			zap.Strings("recipients", meta.Recipients), zap.Int64("size", meta.Size))
		l.Enqueue(req.Envelope)
		return transferResp{Have: true}, nil
	}
	return transferResp{}, fmt.Errorf("unknown request %q", kind)
}

func (n *Node) dropIncoming(id string) {
	if in := n.incoming[id]; in != nil {
		in.file.Abort()
		delete(n.incoming, id)
	}
}

// DrainReport is what a drain did and what is left.
type DrainReport struct {
	Transferred map[string]int    `json:"transferred"` // envelopes per peer
	Left        map[string]string `json:"left"`        // envelope -> why it is still here
}

// Drain hands every live envelope to the other members, round robin, until
// the queue is empty or ctx ends; the caller has stopped accepting mail.
// Envelopes being worked on (policies, an attempt) are waited for.
func (n *Node) Drain(ctx context.Context) (DrainReport, error) {
	rep := DrainReport{Transferred: map[string]int{}, Left: map[string]string{}}
	l := n.getLocal()
	if l == nil {
		return rep, errors.New("the queue is not running yet")
	}
	turn := 0
	for {
		live := l.Queue.Live()
		if len(live) == 0 {
			rep.Left = map[string]string{}
			return rep, nil
		}
		peers := n.Peers()
		names := make([]string, 0, len(peers))
		for name := range peers {
			names = append(names, name)
		}
		sort.Strings(names)
		left := map[string]string{}
		for _, e := range live {
			switch e.State {
			case projections.StateQueued, projections.StateDeferred:
			case projections.StateTransferring:
				left[e.ID] = "transfer started; asking its peer"
				continue // the resolver's
			default:
				left[e.ID] = "being worked on (" + string(e.State) + ")"
				continue
			}
			if len(names) == 0 {
				left[e.ID] = "no other member of the cluster is alive"
				continue
			}
			peer := names[turn%len(names)]
			turn++
			done, why := n.transferOut(ctx, l, e.ID, peer, peers[peer])
			if done {
				rep.Transferred[peer]++
			} else {
				left[e.ID] = why
			}
		}
		rep.Left = left
		if len(left) == 0 {
			continue
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return rep, ctx.Err()
		case <-t.C:
		}
		n.resolveOpen(l)
	}
}

// transferOut hands one envelope to peer at addr; done reports that the
// peer has it and TransferredOut is journaled.
func (n *Node) transferOut(ctx context.Context, l *Local, id, peer, addr string) (done bool, why string) {
	n.rmu.Lock() // the resolver must not ask about a transfer under way
	defer n.rmu.Unlock()
	ok, err := l.Withhold(id)
	if err != nil {
		return false, err.Error()
	}
	if !ok {
		return false, "an attempt is under way"
	}
	e, found := l.Queue.Get(id)
	if !found || (e.State != projections.StateQueued && e.State != projections.StateDeferred) {
		l.Release(id)
		return false, "changed state meanwhile"
	}
	log := n.o.Log.With(zap.String("envelope", id), zap.String("peer", peer))
	if _, err := l.Journal.Append(journal.Write{Events: []events.Event{{Envelope: id,
		Payload: events.TransferStarted{Peer: peer, Recipients: e.Pending}}}}); err != nil {
		l.Release(id)
		return false, "journal: " + err.Error()
	}
	log.Info("transfer started", zap.Strings("recipients", e.Pending))
	have, err := n.send(ctx, l, e, addr)
	if err != nil {
		log.Warn("transfer failed; asking the peer whether it has the envelope", zap.Error(err))
	}
	return n.settle(l, id, peer, addr, have, err)
}

// send runs offer, chunks and commit with the peer.
func (n *Node) send(ctx context.Context, l *Local, e *projections.Envelope, addr string) (bool, error) {
	meta := &events.TransferredIn{Origin: n.o.Name, Sender: e.Sender, Recipients: e.Pending, Arrived: e.Arrived, Attempts: e.Attempts}
	sum := ""
	if e.Received != nil {
		meta.AuthUser, meta.ClientAddr = e.Received.AuthUser, e.Received.ClientAddr
		sum = e.Received.BodySHA256
	}
	var res transferResp
	ask := func(req transferReq) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		req.Envelope = e.ID
		if err := n.askPeer(addr, req, &res, 30*time.Second); err != nil {
			return err
		}
		if res.Error != "" {
			return errors.New(res.Error)
		}
		return nil
	}
	if err := ask(transferReq{Op: "offer", Meta: meta}); err != nil || res.Have {
		return res.Have, err
	}
	body, err := l.Journal.OpenBody(e.BodyKey, sum)
	if err != nil {
		return false, err
	}
	defer body.Close()
	h := sha256.New()
	r := io.TeeReader(io.MultiReader(strings.NewReader(e.Prepend), body.Reader()), h)
	buf := make([]byte, chunkSize)
	var size int64
	for {
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			size += int64(k)
			if err := ask(transferReq{Op: "chunk", Data: buf[:k]}); err != nil {
				return false, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return false, rerr
		}
	}
	if err := ask(transferReq{Op: "commit", SHA256: hex.EncodeToString(h.Sum(nil)), Size: size}); err != nil {
		return false, err
	}
	return res.Have, nil
}

// settle journals the transfer's outcome: TransferredOut when the peer has
// the envelope; TransferAborted (and the envelope scheduled here again)
// when the peer says it has not; nothing while the peer cannot be asked
// (the resolver asks again).
func (n *Node) settle(l *Local, id, peer, addr string, have bool, sendErr error) (bool, string) {
	if !have && sendErr != nil {
		var res transferResp
		if err := n.askPeer(addr, transferReq{Op: "has", Envelope: id}, &res, 10*time.Second); err != nil || res.Error != "" {
			return false, fmt.Sprintf("transfer to %s unresolved (the peer cannot say whether it has it: %v%s)", peer, err, res.Error)
		}
		have = res.Have
	}
	log := n.o.Log.With(zap.String("envelope", id), zap.String("peer", peer))
	if have {
		e, _ := l.Queue.Get(id)
		var rcpts, drop []string
		if e != nil {
			rcpts = e.Pending
			if l.DropBodies && e.BodyKey != "" && l.Queue.BodyRefs(e.BodyKey) <= 1 {
				drop = []string{e.BodyKey}
			}
		}
		if _, err := l.Journal.Append(journal.Write{Events: []events.Event{{Envelope: id,
			Payload: events.TransferredOut{Peer: peer, Recipients: rcpts}}}, DropBodies: drop}); err != nil {
			return false, "journal: " + err.Error()
		}
		log.Info("envelope transferred out")
		return true, ""
	}
	reason := "the peer does not have it"
	if sendErr != nil {
		reason = sendErr.Error()
	}
	if _, err := l.Journal.Append(journal.Write{Events: []events.Event{{Envelope: id,
		Payload: events.TransferAborted{Peer: peer, Reason: reason}}}}); err != nil {
		return false, "journal: " + err.Error()
	}
	l.Release(id)
	log.Warn("transfer aborted; the envelope stays here", zap.String("reason", reason))
	return false, "transfer to " + peer + " aborted: " + reason
}

// resolveLoop resolves, every 2 s, the transfers a crash left open, until
// none is left.
func (n *Node) resolveLoop() {
	defer n.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		l := n.getLocal()
		if l != nil && n.resolveOpen(l) == 0 {
			return
		}
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}

// resolveOpen asks the peer of every envelope in StateTransferring whether
// it has it, before this node delivers it itself; it returns how many are
// still open.
func (n *Node) resolveOpen(l *Local) int {
	n.rmu.Lock() // not while a transfer is under way
	defer n.rmu.Unlock()
	open := 0
	peers := n.Peers()
	for _, e := range l.Queue.Live() {
		if e.State != projections.StateTransferring {
			continue
		}
		peer := lastTransferPeer(l.Journal, e.ID)
		addr, ok := peers[peer]
		if !ok {
			open++
			continue // its peer is not (yet) a member: ask when it is
		}
		var res transferResp
		if err := n.askPeer(addr, transferReq{Op: "has", Envelope: e.ID}, &res, 10*time.Second); err != nil || res.Error != "" {
			open++
			continue
		}
		if done, _ := n.settle(l, e.ID, peer, addr, res.Have, nil); !done && res.Have {
			open++
		}
	}
	return open
}

// lastTransferPeer reads which peer the envelope's last TransferStarted
// named.
func lastTransferPeer(j *journal.Journal, id string) string {
	evs, err := j.EnvelopeEvents(id, false)
	if err != nil {
		return ""
	}
	peer := ""
	for _, ev := range evs {
		if ts, ok := ev.Payload.(events.TransferStarted); ok {
			peer = ts.Peer
		}
	}
	return peer
}

// transferState is the node's side of transfers: bodies arriving from
// draining peers (only the node actor touches incoming and refused) and
// the queue.
type transferState struct {
	tmu      sync.Mutex
	local    *Local
	rmu      sync.Mutex
	incoming map[string]*incoming
	refused  map[string]bool
}
