package actors

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
)

// startSink runs Postfix's smtp-sink (the real next hop) on a free port.
func startSink(t *testing.T, extra ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s, err := mxtest.StartSink(addr, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return addr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type harness struct {
	j   *journal.Journal
	q   *projections.Queue
	sys *System
}

// startQueue opens a journal in a temporary directory, subscribes a queue
// projection to it and starts the actors with o (its Journal and Queue
// filled in) relaying to smarthost.
func startQueue(t *testing.T, smarthost string, o Options) *harness {
	t.Helper()
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	q := projections.NewQueue()
	j.Subscribe(q.Apply)
	if o.Relay == nil {
		o.Relay, err = mxrelay.New(mxrelay.Options{Mode: "static", Smarthost: smarthost, Hostname: "actors.test",
			ConnectTimeout: time.Second, CommandTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
	}
	o.Journal, o.Queue = j, q
	if o.Hostname == "" {
		o.Hostname = "actors.test"
	}
	sys, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Stop(); j.Close() })
	return &harness{j: j, q: q, sys: sys}
}

func start(t *testing.T, smarthost string, maxAge time.Duration) *harness {
	t.Helper()
	return startQueue(t, smarthost, Options{Policies: policy.Options{AddReceived: true, Split: "domain"},
		Retry: []time.Duration{50 * time.Millisecond}, MaxAge: maxAge})
}

func (h *harness) submit(t *testing.T, id string, rcpts ...string) {
	t.Helper()
	_, err := h.j.Append(journal.Write{
		Bodies: []journal.Body{{Key: id, Data: []byte("From: s@src.test\r\nSubject: t\r\n\r\nbody\r\n")}},
		Events: []events.Event{{Envelope: id, Payload: events.Received{Sender: "s@src.test", Recipients: rcpts, BodyKey: id}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	h.sys.Enqueue(id)
}

func (h *harness) history(t *testing.T, id string) string {
	t.Helper()
	evs, err := h.j.EnvelopeEvents(id, true)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, e.Envelope+":"+string(e.Type()))
	}
	return strings.Join(out, " ")
}

func TestDeliverSplitByDomain(t *testing.T) {
	h := start(t, startSink(t), time.Hour)
	h.submit(t, "E1", "a@one.test", "b@two.test", "c@one.test")
	waitFor(t, "delivery", func() bool { return h.q.Snapshot().Counts[projections.StateDelivered] == 2 })
	hist := h.history(t, "E1")
	for _, want := range []string{"E1:Received E1:PoliciesApplied E1:Split", "E1.1:AttemptStarted", "E1.1:Delivered", "E1.2:Delivered"} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q: %s", want, hist)
		}
	}
}

func TestPermanentFailureBouncesWithDSNButNeverBouncesABounce(t *testing.T) {
	// The sink refuses every RCPT with 5xx: the original bounces, and so
	// does its DSN to s@src.test, which must not produce another DSN.
	h := start(t, startSink(t, "-f", "RCPT"), time.Hour)
	h.submit(t, "E2", "a@one.test")
	waitFor(t, "bounce of the message and of its DSN", func() bool { return h.q.Snapshot().Counts[projections.StateBounced] == 2 })
	evs, err := h.j.EnvelopeEvents("E2.1", false)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := evs[len(evs)-1].Payload.(events.Bounced)
	if !ok || b.DSN == "" || !strings.Contains(b.Reason, "5") {
		t.Fatalf("last event of E2.1: %+v", evs[len(evs)-1])
	}
	dsn, err := h.j.EnvelopeEvents(b.DSN, true)
	if err != nil || len(dsn) == 0 {
		t.Fatalf("DSN envelope %s: %v", b.DSN, err)
	}
	rcv := dsn[0].Payload.(events.Received)
	if rcv.Sender != "" || rcv.Parent != "E2.1" || len(rcv.Recipients) != 1 || rcv.Recipients[0] != "s@src.test" {
		t.Fatalf("DSN Received: %+v", rcv)
	}
	body, err := h.j.Body(rcv.BodyKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"multipart/report; report-type=delivery-status", "Final-Recipient: rfc822; a@one.test", "Action: failed", "Status: 5.", "Subject: t"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("DSN lacks %q:\n%s", want, body)
		}
	}
	last := dsn[len(dsn)-1]
	if lb, ok := last.Payload.(events.Bounced); !ok || lb.DSN != "" {
		t.Fatalf("the DSN's own failure: %+v", last)
	}
	if n := h.q.Snapshot().Counts[projections.StateBounced]; n != 2 {
		t.Fatalf("%d bounced envelopes, want 2 (no bounce of a bounce)", n)
	}
}

func TestTemporaryFailureRetriesThenExpires(t *testing.T) {
	// Nothing listens on the smarthost: every attempt is refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	h := start(t, addr, 300*time.Millisecond)
	h.submit(t, "E3", "a@one.test")
	waitFor(t, "expiry", func() bool { return h.q.Snapshot().Counts[projections.StateExpired] == 1 })
	hist := h.history(t, "E3")
	if strings.Count(hist, "E3.1:Deferred") < 2 || !strings.Contains(hist, "E3.1:Expired E3.1:Bounced") {
		t.Errorf("history: %s", hist)
	}
	// Each deferral is scheduled per [queue] retry (50ms here) ±10% jitter,
	// and the next attempt does not start before it.
	// The retry time is computed between the attempt's start and the
	// Deferred event's commit, so it is at most 55ms after the commit and
	// at least 45ms after the start (a slow fsync does not move it).
	evs, _ := h.j.EnvelopeEvents("E3.1", false)
	var due, started time.Time
	for _, e := range evs {
		switch p := e.Payload.(type) {
		case events.Deferred:
			if wait := p.NextAttempt.Sub(e.Time); wait > 55*time.Millisecond {
				t.Errorf("deferred for %s after the deferral, want at most 50ms +10%%", wait)
			}
			if !started.IsZero() && p.NextAttempt.Sub(started) < 45*time.Millisecond {
				t.Errorf("deferred for %s after the attempt's start, want at least 50ms -10%%", p.NextAttempt.Sub(started))
			}
			due = p.NextAttempt
		case events.AttemptStarted:
			started = e.Time
			if !due.IsZero() && e.Time.Before(due) {
				t.Errorf("attempt %d started %s before it was due", p.Attempt, due.Sub(e.Time))
			}
		}
	}
}

// Envelopes journaled before Start (a restart) are picked up by the
// supervisor's recovery: received ones get their policies, deferred ones are
// retried when due.
func TestRecoveryAfterRestart(t *testing.T) {
	sinkAddr := startSink(t)
	dir := t.TempDir()
	j, err := journal.Open(journal.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, err = j.Append(journal.Write{
		Bodies: []journal.Body{{Key: "R1", Data: []byte("Subject: r\r\n\r\nx\r\n")}},
		Events: []events.Event{
			{Envelope: "R1", Payload: events.Received{Sender: "s@src.test", Recipients: []string{"a@one.test"}, BodyKey: "R1"}},
			{Envelope: "R2", Payload: events.Received{Sender: "s@src.test", Recipients: []string{"b@two.test"}, BodyKey: "R1"}},
			{Envelope: "R2", Payload: events.PoliciesApplied{Recipients: []string{"b@two.test"}}},
			{Envelope: "R2", Payload: events.Split{Mode: "domain", Children: []events.Child{{ID: "R2.1", Recipients: []string{"b@two.test"}}}}},
			{Envelope: "R2.1", Payload: events.AttemptStarted{Attempt: 1}},
			{Envelope: "R2.1", Payload: events.Deferred{Recipients: []string{"b@two.test"}, NextAttempt: time.Now().Add(100 * time.Millisecond), Reason: "451"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	q := projections.NewQueue()
	if err := j.Scan(1, func(e events.Event) error { q.Apply([]events.Event{e}); return nil }); err != nil {
		t.Fatal(err)
	}
	j.Subscribe(q.Apply)
	relay, _ := mxrelay.New(mxrelay.Options{Mode: "static", Smarthost: sinkAddr})
	sys, err := Start(Options{Journal: j, Queue: q, Relay: relay, Policies: policy.Options{Split: "domain"}, Retry: []time.Duration{time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sys.Stop(); j.Close() }()
	waitFor(t, "both delivered", func() bool { return q.Snapshot().Counts[projections.StateDelivered] == 2 })
	evs, _ := j.EnvelopeEvents("R2.1", false)
	if last := evs[len(evs)-1]; last.Type() != events.TypeDelivered {
		t.Errorf("R2.1 ends with %s", last.Type())
	}
	if a, ok := evs[len(evs)-3].Payload.(events.AttemptStarted); !ok || a.Attempt != 2 {
		t.Errorf("second attempt not numbered 2: %+v", evs[len(evs)-3])
	}
}

func startScripted(t *testing.T, s mxtest.Script, maxConns int) (*harness, *mxtest.Peer) {
	t.Helper()
	p, err := mxtest.Start(s, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	h := startQueue(t, p.Addr, Options{Policies: policy.Options{Split: "domain"}, Retry: []time.Duration{time.Hour},
		MaxAge: 24 * time.Hour, MaxConnectionsPerDomain: maxConns, IdleTimeout: time.Second})
	return h, p
}

// The journaled event sequence for a partial failure: one recipient
// delivered, one deferred, one bounced, in one attempt.
func TestPerRecipientOutcomesAreJournaled(t *testing.T) {
	h, _ := startScripted(t, mxtest.Script{Rcpt: map[string]string{
		"later@one.test": "451 4.7.1 greylisted", "gone@one.test": "550 5.1.1 no such user"}}, 2)
	h.submit(t, "P1", "ok@one.test", "later@one.test", "gone@one.test")
	waitFor(t, "the outcome", func() bool {
		e, ok := h.q.Get("P1.1")
		return ok && e.State == projections.StateDeferred
	})
	evs, _ := h.j.EnvelopeEvents("P1.1", false)
	var seq []string
	for _, e := range evs {
		switch p := e.Payload.(type) {
		case events.Delivered:
			seq = append(seq, "Delivered"+fmt.Sprint(p.Recipients))
		case events.Deferred:
			seq = append(seq, "Deferred"+fmt.Sprint(p.Recipients))
		case events.Bounced:
			seq = append(seq, "Bounced"+fmt.Sprint(p.Recipients))
			if p.DSN == "" {
				t.Error("no DSN for the bounced recipient")
			}
		default:
			seq = append(seq, string(e.Type()))
		}
	}
	want := "AttemptStarted Attempted Delivered[ok@one.test] Bounced[gone@one.test] Deferred[later@one.test]"
	if got := strings.Join(seq, " "); got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	att := evs[1].Payload.(events.Attempted)
	if len(att.Results) != 3 || att.Host == "" {
		t.Fatalf("Attempted: %+v", att)
	}
}

// Deliveries to one domain never use more than max_connections_per_domain
// connections at once, and idle connections are reused.
func TestMaxConnectionsPerDomain(t *testing.T) {
	h, p := startScripted(t, mxtest.Script{DataDelay: 100 * time.Millisecond}, 2)
	for i := 0; i < 8; i++ {
		h.submit(t, fmt.Sprintf("M%d", i), fmt.Sprintf("r%d@same.test", i))
	}
	waitFor(t, "8 deliveries", func() bool { return h.q.Snapshot().Counts[projections.StateDelivered] == 8 })
	if p.MaxConcurrent() > 2 {
		t.Errorf("%d concurrent connections, limit 2", p.MaxConcurrent())
	}
	if p.Connections() > 4 {
		t.Errorf("%d connections for 8 messages: idle connections not reused", p.Connections())
	}
	if len(p.Messages()) != 8 {
		t.Errorf("peer got %d messages", len(p.Messages()))
	}
}

// failingSigner is a DKIM key whose signing always fails (an HSM that went
// away): the envelope must be deferred with the reason, not lost or sent
// unsigned.
type failingSigner struct{ crypto.Signer }

func (f failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("signing device unavailable")
}

func TestPolicyErrorDefersWithReason(t *testing.T) {
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	h := startQueue(t, "127.0.0.1:1", Options{Retry: []time.Duration{time.Hour},
		Policies: policy.Options{Split: "domain", DKIM: []policy.DKIMKey{{Domain: "src.test", Selector: "s", Signer: failingSigner{sk}}}}})
	q := h.q
	h.submit(t, "PE", "a@one.test")
	waitFor(t, "deferral", func() bool { e, ok := q.Get("PE"); return ok && e.State == projections.StateDeferred })
	e, _ := q.Get("PE")
	if !strings.Contains(e.LastError, "policy: ") || !strings.Contains(e.LastError, "signing device unavailable") {
		t.Fatalf("last error %q", e.LastError)
	}
	if hist := h.history(t, "PE"); hist != "PE:Received PE:Deferred" {
		t.Fatalf("history: %s", hist)
	}
}

// With DropBodies the shared body goes once the last child is final.
func TestBodiesDroppedWhenTheLastChildIsDone(t *testing.T) {
	h := startQueue(t, startSink(t), Options{Policies: policy.Options{Split: "domain"}, Retry: []time.Duration{time.Hour}, DropBodies: true})
	j, q := h.j, h.q
	h.submit(t, "D1", "a@one.test", "b@two.test", "c@three.test")
	waitFor(t, "three deliveries", func() bool { return q.Snapshot().Counts[projections.StateDelivered] == 3 })
	waitFor(t, "the body to be dropped", func() bool { _, err := j.Body("D1"); return errors.Is(err, journal.ErrNoBody) })
	// The events are all still there for the audit.
	if hist := h.history(t, "D1"); strings.Count(hist, "Delivered") != 3 {
		t.Fatalf("history: %s", hist)
	}
}

// A delivery actor with nothing to do stops (its pool emptied first); the
// next message to its domain gets a new one.
func TestIdleDestinationActorsStop(t *testing.T) {
	h := startQueue(t, startSink(t), Options{Policies: policy.Options{Split: "domain"}, Retry: []time.Duration{time.Hour},
		IdleTimeout: 100 * time.Millisecond})
	q, sys := h.q, h.sys
	h.submit(t, "I1", "a@one.test", "b@two.test")
	waitFor(t, "two deliveries", func() bool { return q.Snapshot().Counts[projections.StateDelivered] == 2 })
	if n, err := sys.destinations(); err != nil || n != 2 {
		t.Fatalf("%d delivery actors after delivering to two domains (%v)", n, err)
	}
	waitFor(t, "idle delivery actors to stop", func() bool { n, _ := sys.destinations(); return n == 0 })
	h.submit(t, "I2", "c@one.test")
	waitFor(t, "delivery through a new actor", func() bool { return q.Snapshot().Counts[projections.StateDelivered] == 3 })
}
