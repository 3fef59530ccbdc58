package actors

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
)

// panickingRelay stands in for a relay bug: no real peer can make the
// relay's own code panic.
type panickingRelay struct{}

func (panickingRelay) Deliver(context.Context, mxrelay.Message, *mxrelay.Pool) mxrelay.Result {
	panic("relay bug")
}

// A delivery whose relay panics still reports to its envelope actor, which
// defers the envelope (an unclassified failure is temporary): nothing is
// lost, nothing bounced.
func TestRelayPanicDefersTheEnvelope(t *testing.T) {
	h := startQueue(t, "", Options{Relay: panickingRelay{}, Policies: policy.Options{Split: "domain"},
		Retry: []time.Duration{time.Hour}, MaxAge: 24 * time.Hour})
	h.submit(t, "P1", "bob@one.test")
	waitFor(t, "the deferral", func() bool {
		e, ok := h.q.Get("P1.1")
		return ok && e.State == projections.StateDeferred
	})
	e, _ := h.q.Get("P1.1")
	if !strings.Contains(e.LastError, "internal error in the relay") {
		t.Fatalf("last error %q", e.LastError)
	}
}
