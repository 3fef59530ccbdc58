package main

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ledgermail/ledgermail/journal"
)

// historyCheck is the check of the journal records that the queue snapshot
// covers (checksums and chain). The queue does not need them: their fold
// is in the snapshot, so `mta serve` accepts mail first and checks them
// after (at a million queued envelopes they are millions of records).
// /healthz shows how far it is; a corrupt record stops the server.
type historyCheck struct {
	status atomic.Pointer[string]
	passed chan struct{} // closed once the check passed
	failed chan error    // the check's error, once
}

func newHistoryCheck() *historyCheck {
	h := &historyCheck{passed: make(chan struct{}), failed: make(chan error, 1)}
	h.set("journal history: not checked yet")
	return h
}

func (h *historyCheck) set(s string) { h.status.Store(&s) }

// run runs check (from queue.RebuildUnchecked) and reports its outcome;
// closing stop ends it early (the server stops), which is no failure.
func (h *historyCheck) run(check func(stop <-chan struct{}) error, stop <-chan struct{}) {
	h.set("journal history: checking")
	err := check(stop)
	if errors.Is(err, journal.ErrVerifyStopped) {
		h.set("journal history: check stopped")
		return
	}
	if err != nil {
		h.set("journal history: damaged: " + err.Error())
		h.failed <- historyError(err)
		return
	}
	h.set("journal history: checked")
	close(h.passed)
}

// line is /healthz's detail line.
func (h *historyCheck) line() string { return *h.status.Load() }

// historyError is the one line `mta serve` exits with.
func historyError(err error) error {
	var ce *journal.CorruptError
	if errors.As(err, &ce) {
		return fmt.Errorf("%v; stopped: the journal's history is damaged (run `mta replay --verify` to list all, or `mta serve --ignore-corrupt`)", err)
	}
	return fmt.Errorf("checking the journal's history: %w; stopped", err)
}
