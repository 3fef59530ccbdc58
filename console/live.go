package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/projections"
)

// notifier wakes the live-refresh streams when events are committed. The
// journal's writer calls notify: it never blocks (each stream has a
// one-slot channel, and a full slot already means "something changed").
type notifier struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

func (n *notifier) notify([]events.Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (n *notifier) add() chan struct{} {
	c := make(chan struct{}, 1)
	n.mu.Lock()
	n.subs[c] = struct{}{}
	n.mu.Unlock()
	return c
}

func (n *notifier) remove(c chan struct{}) {
	n.mu.Lock()
	delete(n.subs, c)
	n.mu.Unlock()
}

// liveInterval is the shortest time between two updates of a stream.
const liveInterval = time.Second

// counts is what a live update carries: the overview's cards.
func (c *console) counts() map[string]int {
	q := c.d.Queue
	m := map[string]int{"live": q.Len()}
	for _, s := range []projections.State{projections.StateReceived, projections.StateQueued, projections.StateActive, projections.StateDeferred} {
		m[string(s)] = q.Count(s)
	}
	return m
}

// live streams the overview's counts as Server-Sent Events ("counts"):
// one at once, then at most one a second while events are committed, and
// a comment every 15 s to keep the connection open.
func (c *console) stream(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	wake := c.live.add()
	defer c.live.remove(wake)
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	send := func() bool {
		b, _ := json.Marshal(c.counts())
		if _, err := fmt.Fprintf(w, "event: counts\ndata: %s\n\n", b); err != nil {
			return false
		}
		fl.Flush()
		return true
	}
	if !send() {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-c.stop:
			return
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case <-wake:
			if !send() {
				return
			}
			select { // at most one update per interval
			case <-r.Context().Done():
				return
			case <-c.stop:
				return
			case <-time.After(liveInterval):
			}
		}
	}
}
