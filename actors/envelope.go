package actors

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
)

// envelope is the actor of one envelope for one step of its life. It loads
// the envelope from the journal, does the step, journals the outcome,
// reports to the supervisor and stops.
type envelope struct {
	o   Options
	id  string
	sup *actor.PID
	log *zap.Logger
	env *projections.Envelope
	// body is open while an attempt runs (the relay streams it).
	body *journal.BodyReader
}

// attemptDone carries a relay result back into the actor.
type attemptDone struct {
	attempt int
	res     mxrelay.Result
	took    time.Duration
	// suspended: no attempt was made (the destination is suspended); the
	// recipients wait until resumeAt (zero: the next retry interval).
	suspended bool
	resumeAt  time.Time
}

func newEnvelope(o Options, id string, sup *actor.PID) *envelope {
	return &envelope{o: o, id: id, sup: sup, log: o.Logger.With(zap.String("envelope", id))}
}

func (a *envelope) Receive(c actor.Context) {
	// A bug must neither lose the envelope nor spin: log it with its stack
	// (protoactor would log it without one and restart the actor at once)
	// and have the supervisor try again after the first retry interval.
	defer func() {
		if r := recover(); r != nil {
			a.log.Error("envelope actor panicked; retrying later", zap.Any("panic", r), zap.Stack("stack"))
			c.Send(a.sup, schedule{id: a.id, at: a.o.Now().Add(a.o.Retry[0])})
			a.stop(c)
		}
	}()
	switch m := c.Message().(type) {
	case *actor.Started:
		a.start(c)
	case attemptDone:
		a.finishAttempt(c, m)
		a.stop(c)
	case *actor.Stopped:
		a.closeBody()
		c.Send(a.sup, finished{id: a.id})
	}
}

func (a *envelope) stop(c actor.Context) { c.Stop(c.Self()) }

func (a *envelope) closeBody() {
	if a.body != nil {
		a.body.Close()
		a.body = nil
	}
}

// maxHeader bounds how much of a body is read as its header block.
const maxHeader = 1 << 20

// later reports a failure to journal: the envelope is tried again later.
func (a *envelope) later(c actor.Context, what string, err error) {
	a.log.Error("journal write failed; will retry", zap.String("step", what), zap.Error(err))
	c.Send(a.sup, schedule{id: a.id, at: a.o.Now().Add(a.o.Retry[0])})
	a.stop(c)
}

func (a *envelope) start(c actor.Context) {
	// The queue projection holds the envelope's state, folded by the same
	// Fold from every committed event before the Append that created the
	// envelope returned: no need to read and decode the family's history
	// from the journal again (that cost some 14 % of the CPU under load).
	env, ok := a.o.Queue.Get(a.id)
	if ok && env.Received == nil {
		// Not expected (snapshots keep it); the history has it.
		env, ok = a.fromJournal(c)
	}
	if !ok || !env.State.Live() || env.State == projections.StateTransferring {
		a.stop(c)
		return
	}
	a.env = env
	// A root envelope (no "." in its ID) is only ever split; its children
	// deliver. A root deferred by a policy error comes back here too.
	if !strings.Contains(a.id, ".") {
		a.applyPolicies(c)
		a.stop(c)
		return
	}
	a.startAttempt(c)
}

// fromJournal folds the envelope's state from its family's history.
func (a *envelope) fromJournal(c actor.Context) (*projections.Envelope, bool) {
	root, _, _ := strings.Cut(a.id, ".")
	evs, err := a.o.Journal.EnvelopeEvents(root, true)
	if err != nil {
		a.later(c, "load", err)
		return nil, false
	}
	set := map[string]*projections.Envelope{}
	for _, e := range evs {
		projections.Fold(set, e)
	}
	env := set[a.id]
	return env, env != nil
}

// applyPolicies journals PoliciesApplied and Split in one write, then hands
// the children to the supervisor.
//
// The body is read here without checking its SHA-256: nothing read here
// leaves the server, and every child's attempt checks the whole body
// before relaying it (a damaged one is deferred as corrupt there). So each
// message's body is hashed once, not once per step.
func (a *envelope) applyPolicies(c actor.Context) {
	body, ok := a.readBody(c, false)
	if !ok {
		return
	}
	defer body.Close()
	header, err := body.Header(maxHeader)
	if err != nil {
		a.later(c, "read body", err)
		return
	}
	if hops := policy.CountReceived(header); hops > policy.MaxHops {
		a.bounceAll(c, fmt.Sprintf("554 5.4.6 too many Received: headers (%d): mail forwarding loop", hops), "5.4.6")
		return
	}
	pa, err := policy.Apply(a.o.Policies, policy.Input{
		ID: a.id, Hostname: a.o.Hostname, Received: *a.env.Received, Arrived: a.env.Arrived, Header: header, Body: body.Reader,
	})
	if err != nil {
		// A policy that cannot run defers the envelope with the reason
		// journaled, rather than losing it or passing it unprocessed.
		next := a.o.Now().Add(a.retryAfter(a.env.Attempts + 1))
		if _, jerr := a.o.Journal.Append(journal.Write{Events: []events.Event{{Envelope: a.id, Payload: events.Deferred{
			Recipients: a.env.Recipients, NextAttempt: next, Reason: "policy: " + err.Error()}}}}); jerr != nil {
			a.later(c, "policy deferral", jerr)
			return
		}
		a.log.Warn("policy failed; envelope deferred", zap.Error(err), zap.Time("next_attempt", next))
		c.Send(a.sup, schedule{id: a.id, at: next})
		return
	}
	groups := policy.Split(a.o.Policies.Split, pa.Recipients)
	split := events.Split{Mode: a.o.Policies.Split, Children: make([]events.Child, len(groups))}
	ids := make([]string, len(groups))
	for i, g := range groups {
		ids[i] = fmt.Sprintf("%s.%d", a.id, i+1)
		split.Children[i] = events.Child{ID: ids[i], Recipients: g}
	}
	_, err = a.o.Journal.Append(journal.Write{Events: []events.Event{
		{Envelope: a.id, Payload: pa},
		{Envelope: a.id, Payload: split},
	}})
	if err != nil {
		a.later(c, "policies", err)
		return
	}
	a.log.Info("policies applied", zap.Strings("policies", pa.Policies), zap.Strings("children", ids))
	c.Send(a.sup, children{ids: ids})
}

// bodySum is the SHA-256 the envelope's Received event recorded.
func (a *envelope) bodySum() string {
	if a.env.Received == nil {
		return ""
	}
	return a.env.Received.BodySHA256
}

// readBody opens the stored body, checked against its SHA-256 when check
// is set. A body that fails the check is reported as corruption and the
// envelope deferred (with the reason journaled) rather than relayed; any
// other read error tries again later. ok is false when the step cannot go
// on. The caller closes the body.
func (a *envelope) readBody(c actor.Context, check bool) (*journal.BodyReader, bool) {
	sum := ""
	if check {
		sum = a.bodySum()
	}
	body, err := a.o.Journal.OpenBody(a.env.BodyKey, sum)
	var bce *journal.BodyCorruptError
	switch {
	case err == nil:
		return body, true
	case errors.As(err, &bce):
		next := a.o.Now().Add(a.retryAfter(a.env.Attempts + 1))
		a.log.Error("stored body is corrupt; envelope deferred", zap.String("body", a.env.BodyKey), zap.Error(err))
		if _, jerr := a.o.Journal.Append(journal.Write{Events: []events.Event{{Envelope: a.id, Payload: events.Deferred{
			Recipients: a.env.Pending, NextAttempt: next, Reason: "corrupt: " + err.Error()}}}}); jerr != nil {
			a.later(c, "corrupt body deferral", jerr)
			return nil, false
		}
		c.Send(a.sup, schedule{id: a.id, at: next})
		return nil, false
	default:
		a.later(c, "read body", err)
		return nil, false
	}
}

// bounceAll bounces every recipient of a root envelope before any delivery
// (a mail loop), with a DSN to the sender.
func (a *envelope) bounceAll(c actor.Context, reason, status string) {
	var rcpts []policy.DSNRecipient
	for _, r := range a.env.Pending {
		rcpts = append(rcpts, policy.DSNRecipient{Recipient: r, Status: status, Diagnostic: reason})
	}
	w := journal.Write{}
	var ids []string
	dsn := a.queueDSN(&w, rcpts, false, a.o.Now(), &ids)
	w.Events = append([]events.Event{{Envelope: a.id, Payload: events.Bounced{Recipients: a.env.Pending, Reason: reason, DSN: dsn}}}, w.Events...)
	if _, err := a.o.Journal.Append(w); err != nil {
		a.later(c, "bounce", err)
		return
	}
	a.log.Info("envelope bounced before delivery", zap.String("reason", reason), zap.Strings("recipients", a.env.Pending), zap.Strings("dsn", ids))
	for _, id := range ids {
		c.Send(a.sup, enqueue{id: id})
	}
}

func (a *envelope) startAttempt(c actor.Context) {
	attempt := a.env.Attempts + 1
	rcpts := append([]string(nil), a.env.Pending...)
	if until, ok := a.o.Queue.Suspension(destinationKey(rcpts), a.o.Now()); ok {
		a.holdSuspended(c, rcpts, until)
		return
	}
	body, ok := a.readBody(c, true)
	if !ok {
		return
	}
	a.body = body // closed when the actor stops
	if _, err := a.o.Journal.Append(journal.Write{Events: []events.Event{
		{Envelope: a.id, Payload: events.AttemptStarted{Attempt: attempt, Recipients: rcpts}},
	}}); err != nil {
		a.later(c, "attempt", err)
		return
	}
	prepend := a.env.Prepend
	msg := mxrelay.Message{
		Envelope: a.id, From: a.env.Sender, Recipients: rcpts,
		Body: func() io.Reader { return io.MultiReader(strings.NewReader(prepend), body.Reader()) },
		Size: int64(len(prepend)) + body.Size(),
	}
	// The destination's delivery actor runs it and answers attemptDone.
	c.Send(a.sup, route{key: destinationKey(rcpts), req: deliverReq{attempt: attempt, msg: msg, replyTo: c.Self()}})
}

// holdSuspended is what an attempt on a suspended destination comes to
// without contacting it: the recipients are deferred until the suspension
// ends (or the next retry interval, for one without an end), or, past
// max_age, expire with a DSN as after any attempt. No Attempted event.
func (a *envelope) holdSuspended(c actor.Context, rcpts []string, until time.Time) {
	msg := "destination suspended by the operator"
	if !until.IsZero() {
		msg += " until " + until.UTC().Format(time.RFC3339)
	}
	res := mxrelay.Result{Rcpts: map[string]mxrelay.Outcome{}}
	for _, r := range rcpts {
		res.Rcpts[r] = mxrelay.TemporaryFailure(msg)
	}
	a.finishAttempt(c, attemptDone{attempt: a.env.Attempts, res: res, suspended: true, resumeAt: until})
	a.stop(c)
}

// finishAttempt journals the attempt's outcome: Attempted, then Delivered,
// Bounced (with a DSN to the sender) and Deferred (or Expired) for the
// recipients each concerns, all in one atomic write.
func (a *envelope) finishAttempt(c actor.Context, m attemptDone) {
	now := a.o.Now()
	sec := m.res.Security
	att := events.Attempted{Attempt: m.attempt, Host: m.res.Host, TLS: m.res.TLS, Seconds: m.took.Seconds(),
		TLSPolicy: sec.Policy, STSMode: sec.Mode, STSID: sec.PolicyID, TLSResult: sec.Result, TLSDetail: sec.Detail}
	if _, live := a.o.Queue.Get(a.id); !live {
		// Deleted (or otherwise finished) while the attempt ran: the attempt
		// is journaled for the audit and changes nothing else.
		for r, o := range m.res.Rcpts {
			att.Results = append(att.Results, events.RcptResult{Recipient: r, Code: o.Code, Enhanced: o.Enhanced, Message: o.Message, Temporary: o.Temporary()})
		}
		sort.Slice(att.Results, func(i, j int) bool { return att.Results[i].Recipient < att.Results[j].Recipient })
		if _, err := a.o.Journal.Append(journal.Write{Events: []events.Event{{Envelope: a.id, Payload: att}}}); err != nil {
			a.log.Error("journal write failed (attempt after a final state)", zap.Error(err))
		}
		a.log.Info("delivery attempt ended after the envelope reached a final state; nothing else changes", zap.Int("attempt", m.attempt))
		return
	}
	var done, failed, temp []string
	var failReason, tempReason string
	var dsnRcpts []policy.DSNRecipient
	rcpts := make([]string, 0, len(m.res.Rcpts))
	for r := range m.res.Rcpts {
		rcpts = append(rcpts, r)
	}
	sort.Strings(rcpts)
	for _, r := range rcpts {
		o := m.res.Rcpts[r]
		att.Results = append(att.Results, events.RcptResult{Recipient: r, Code: o.Code, Enhanced: o.Enhanced, Message: o.Message, Temporary: o.Temporary()})
		switch {
		case o.Success():
			done = append(done, r)
		case o.Temporary():
			temp, tempReason = append(temp, r), o.String()
		default:
			failed, failReason = append(failed, r), o.String()
			dsnRcpts = append(dsnRcpts, policy.DSNRecipient{Recipient: r, Status: policy.StatusFor(o.Code, o.Enhanced, false), Diagnostic: o.String(), RemoteMTA: hostOnly(m.res.Host)})
		}
	}
	w := journal.Write{Events: []events.Event{{Envelope: a.id, Payload: att}}}
	if m.suspended {
		w.Events = nil // nothing was tried
	}
	add := func(p events.Payload) { w.Events = append(w.Events, events.Event{Envelope: a.id, Payload: p}) }
	if len(done) > 0 {
		add(events.Delivered{Recipients: done, Host: m.res.Host})
	}
	var dsnIDs []string
	if len(failed) > 0 {
		add(events.Bounced{Recipients: failed, Reason: failReason, DSN: a.queueDSN(&w, dsnRcpts, false, now, &dsnIDs)})
	}
	var next time.Time
	if len(temp) > 0 {
		if age := now.Sub(a.env.Arrived); a.o.MaxAge > 0 && age >= a.o.MaxAge {
			var exp []policy.DSNRecipient
			for _, r := range temp {
				o := m.res.Rcpts[r]
				exp = append(exp, policy.DSNRecipient{Recipient: r, Status: policy.StatusFor(o.Code, o.Enhanced, true), Diagnostic: o.String(), RemoteMTA: hostOnly(m.res.Host)})
			}
			ageStr := age.Round(time.Second).String()
			add(events.Expired{Recipients: temp, Age: ageStr})
			add(events.Bounced{Recipients: temp, Reason: "expired after " + ageStr + ": " + tempReason, DSN: a.queueDSN(&w, exp, true, now, &dsnIDs)})
		} else {
			next = now.Add(a.retryAfter(m.attempt))
			if m.suspended {
				next = m.resumeAt
				if next.IsZero() {
					next = now.Add(a.retryAfter(m.attempt + 1))
				}
			}
			d := events.Deferred{Recipients: temp, NextAttempt: next, Reason: tempReason}
			if a.o.DelayWarning > 0 && !a.env.Warned && age >= a.o.DelayWarning {
				var late []policy.DSNRecipient
				for _, r := range temp {
					o := m.res.Rcpts[r]
					late = append(late, policy.DSNRecipient{Recipient: r, Status: delayStatus(o), Diagnostic: o.String(), RemoteMTA: hostOnly(m.res.Host)})
				}
				d.DelayDSN = a.queueNotice(&w, policy.DSN{Recipients: late, Delayed: true, RetryUntil: a.env.Arrived.Add(a.o.MaxAge)}, now, &dsnIDs)
			}
			add(d)
		}
	}
	if _, err := a.o.Journal.Append(w); err != nil {
		a.later(c, "outcome", err)
		return
	}
	if m.suspended {
		a.log.Info("destination suspended; nothing tried", zap.Strings("recipients", temp), zap.Time("next_attempt", next), zap.Strings("dsn", dsnIDs))
	} else {
		a.log.Info("delivery attempt", zap.Int("attempt", m.attempt), zap.String("relay", m.res.Host), zap.String("tls", m.res.TLS),
			zap.Duration("delay", m.took), zap.Strings("delivered", done), zap.Strings("bounced", failed), zap.Strings("deferred", temp),
			zap.String("reply", firstNonEmpty(tempReason, failReason)), zap.Strings("dsn", dsnIDs), zap.String("tls_policy", sec.Policy), zap.String("tls_result", sec.Result))
	}
	if !next.IsZero() {
		c.Send(a.sup, schedule{id: a.id, at: next})
	}
	a.dropBodyIfDone()
	for _, id := range dsnIDs {
		c.Send(a.sup, enqueue{id: id})
	}
}

// dropBodyIfDone deletes the stored body when the envelope is final and no
// live sibling still needs it (only with Options.DropBodies). Failing to
// drop costs disk, not mail: it is logged.
func (a *envelope) dropBodyIfDone() {
	if !a.o.DropBodies {
		return
	}
	if _, live := a.o.Queue.Get(a.id); live || a.o.Queue.BodyInUse(a.env.BodyKey) {
		return
	}
	if _, err := a.o.Journal.Append(journal.Write{DropBodies: []string{a.env.BodyKey}}); err != nil {
		a.log.Warn("could not drop the stored body", zap.String("body", a.env.BodyKey), zap.Error(err))
		return
	}
	a.log.Debug("stored body dropped", zap.String("body", a.env.BodyKey))
}

// queueDSN adds to w a new envelope from <> to the sender carrying a DSN for
// rcpts, and returns its ID. A bounce is never bounced: for the null sender
// it adds nothing and returns "".
func (a *envelope) queueDSN(w *journal.Write, rcpts []policy.DSNRecipient, expired bool, now time.Time, ids *[]string) string {
	return a.queueNotice(w, policy.DSN{Recipients: rcpts, Expired: expired}, now, ids)
}

// queueNotice adds to w a DSN envelope (a failure or a delay warning, as
// d says) to the sender and returns its ID; nothing for <>.
func (a *envelope) queueNotice(w *journal.Write, d policy.DSN, now time.Time, ids *[]string) string {
	if a.env.Sender == "" || len(d.Recipients) == 0 {
		return ""
	}
	var header []byte
	if body, err := a.o.Journal.OpenBody(a.env.BodyKey, a.bodySum()); err == nil {
		if h, err := body.Header(maxHeader); err == nil {
			header = append([]byte(a.env.Prepend), policy.HeaderBlock(h)...)
		}
		body.Close()
	}
	id := events.NewID()
	d.ID, d.Hostname, d.Envelope, d.Sender, d.Arrived, d.Now, d.Header = id, a.o.Hostname, a.id, a.env.Sender, a.env.Arrived, now, header
	msg := policy.BuildDSN(d)
	w.Bodies = append(w.Bodies, journal.Body{Key: id, Data: msg})
	w.Events = append(w.Events, events.Event{Envelope: id, Payload: events.Received{
		Sender: "", Recipients: []string{a.env.Sender}, BodyKey: id, Size: int64(len(msg)), BodySHA256: journal.BodySum(msg), Listener: events.ListenerLocal, Parent: a.id,
	}})
	*ids = append(*ids, id)
	return id
}

// delayStatus is the RFC 3463 status of a recipient still being retried.
func delayStatus(o mxrelay.Outcome) string {
	if o.Enhanced != "" && strings.HasPrefix(o.Enhanced, "4.") {
		return o.Enhanced
	}
	return "4.0.0"
}

func hostOnly(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i > 0 {
		return strings.Trim(hostport[:i], "[]")
	}
	return hostport
}

// retryAfter is the wait after the given attempt, from the retry schedule
// (the last interval repeats), with up to ±10% jitter so that envelopes
// deferred together do not all come back in the same instant.
func (a *envelope) retryAfter(attempt int) time.Duration {
	i := attempt - 1
	if i >= len(a.o.Retry) {
		i = len(a.o.Retry) - 1
	}
	if i < 0 {
		i = 0
	}
	d := a.o.Retry[i]
	if j := int64(d / 10); j > 0 {
		d += time.Duration(rand.Int64N(2*j+1) - j)
	}
	return d
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
