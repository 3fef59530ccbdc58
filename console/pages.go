package console

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/queue"
)

type stateCount struct {
	Name  string
	Count int
}

func (c *console) overview(w http.ResponseWriter, r *http.Request) {
	q, j := c.d.Queue, c.d.Journal
	data := struct {
		page
		Live, Held                                      int
		States                                          []stateCount
		Series                                          []seriesTotal
		Chart                                           template.HTML
		Since                                           string
		Seq                                             uint64
		Head                                            string
		CommitP50, CommitP99, OldestAge, AgeP50, AgeP99 string
	}{page: c.page("Overview", "overview"), Live: q.Len()}
	for _, s := range []projections.State{projections.StateReceived, projections.StateQueued, projections.StateActive, projections.StateDeferred} {
		data.States = append(data.States, stateCount{string(s), q.Count(s)})
	}
	if c.d.Actors != nil {
		if held, err := c.d.Actors.Held(); err == nil {
			data.Held = len(held)
		}
	}
	now := time.Now()
	var ages []time.Duration
	q.Range(func(e *projections.Envelope) { ages = append(ages, now.Sub(e.Arrived)) })
	sort.Slice(ages, func(a, b int) bool { return ages[a] < ages[b] })
	data.OldestAge, data.AgeP50, data.AgeP99 = "—", "—", "—"
	if len(ages) > 0 {
		data.OldestAge = roundDur(ages[len(ages)-1])
		data.AgeP50, data.AgeP99 = roundDur(pct(ages, 50)), roundDur(pct(ages, 99))
	}
	data.CommitP50, data.CommitP99 = "—", "—"
	if a := c.d.Activity; a != nil {
		series, since := a.Minutes(now)
		data.Series, data.Chart, data.Since = totals(series), chart(series), since.UTC().Format("15:04 UTC")
		if p50, p99, ok := a.CommitPercentiles(); ok {
			data.CommitP50, data.CommitP99 = p50.Round(10*time.Microsecond).String(), p99.Round(10*time.Microsecond).String()
		}
	}
	data.Seq, data.Head = j.Head()
	c.render(w, http.StatusOK, "overview", data)
}

func pct(d []time.Duration, p int) time.Duration { return d[(len(d)-1)*p/100] }

func roundDur(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	case d >= time.Second:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}

// destinationRow is one destination domain on /destinations.
type destinationRow struct {
	Domain                           string
	Live, Deferred, Held, ErrorCount int
	LastError                        string
	lastErrorAt                      time.Time
	Suspended                        bool
	Until                            string
	// From the scheduler: connections in use against the limit, and the
	// rate budget ("" when the scheduler is not asked or says nothing).
	Connections, Rate string
}

// domainOf is the destination of a live envelope: its first pending
// recipient's domain (a child envelope has one destination).
func domainOf(e *projections.Envelope) string {
	rcpts := e.Pending
	if len(rcpts) == 0 {
		rcpts = e.Recipients
	}
	if len(rcpts) == 0 {
		return ""
	}
	at := strings.LastIndexByte(rcpts[0], '@')
	return strings.ToLower(rcpts[0][at+1:])
}

func (c *console) destinationRows() []*destinationRow {
	rows := map[string]*destinationRow{}
	row := func(d string) *destinationRow {
		if rows[d] == nil {
			rows[d] = &destinationRow{Domain: d}
		}
		return rows[d]
	}
	var held map[string]string
	if c.d.Actors != nil {
		held, _ = c.d.Actors.Held()
	}
	c.d.Queue.Range(func(e *projections.Envelope) {
		if !strings.Contains(e.ID, ".") && e.State == projections.StateSplit {
			return
		}
		d := domainOf(e)
		if d == "" {
			return
		}
		r := row(d)
		r.Live++
		if e.State == projections.StateDeferred {
			r.Deferred++
		}
		if _, ok := held[e.ID]; ok {
			r.Held++
		}
		if e.LastError != "" {
			switch {
			case e.LastError == r.LastError:
				r.ErrorCount++
			case !e.NextAttempt.Before(r.lastErrorAt):
				r.LastError, r.lastErrorAt, r.ErrorCount = e.LastError, e.NextAttempt, 1
			}
		}
	})
	if c.d.Actors != nil {
		if states, err := c.d.Actors.Destinations(); err == nil {
			for d, st := range states {
				r := row(d)
				r.Connections = fmt.Sprintf("%d / %d", st.InFlight, st.Limit)
				if st.Rate > 0 {
					r.Rate = fmt.Sprintf("%g/s, %.1f left", st.Rate, max(st.Tokens, 0))
				}
			}
		}
	}
	for d, until := range c.d.Queue.Suspensions() {
		r := row(d)
		r.Suspended = true
		if !until.IsZero() {
			r.Until = until.UTC().Format(time.RFC3339)
		}
	}
	out := make([]*destinationRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, r)
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Live != out[b].Live {
			return out[a].Live > out[b].Live
		}
		return out[a].Domain < out[b].Domain
	})
	return out
}

func (c *console) destinations(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "destinations", struct {
		page
		Rows  []*destinationRow
		Flash string
	}{c.page("Destinations", "destinations"), c.destinationRows(), r.URL.Query().Get("done")})
}

func (c *console) destinationAction(w http.ResponseWriter, r *http.Request) {
	domain, action := strings.ToLower(r.PathValue("domain")), r.PathValue("action")
	j, q := c.d.Journal, c.d.Queue
	var done string
	switch action {
	case "suspend":
		if err := queue.Suspend(j, domain, time.Time{}); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		done = domain + " suspended"
	case "resume":
		ids, err := queue.Resume(j, q, domain)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		c.retry(ids)
		done = fmt.Sprintf("%s resumed; %d envelope(s) retried now", domain, len(ids))
	case "retry":
		n := 0
		for _, e := range q.Select(func(e *projections.Envelope) bool { return domainOf(e) == domain && strings.Contains(e.ID, ".") }) {
			ids, _, _, err := queue.Operator(j, q, e.ID, func() events.Payload { return events.RetryRequested{By: "console"} })
			if err != nil {
				continue // reached a final state meanwhile
			}
			c.retry(ids)
			n += len(ids)
		}
		done = fmt.Sprintf("%d envelope(s) to %s retried now", n, domain)
	default:
		http.NotFound(w, r)
		return
	}
	c.d.Log.Info("console action", zap.String("action", action), zap.String("domain", domain), zap.String("result", done))
	http.Redirect(w, r, "/destinations?done="+urlQuery(done), http.StatusSeeOther)
}

func (c *console) retry(ids []string) {
	if c.d.Actors == nil {
		return
	}
	for _, id := range ids {
		c.d.Actors.RetryNow(id)
	}
}

const (
	maxResults = 500
	// maxScanned bounds the records a time-window search reads.
	maxScanned = 200000
)

// received is one message found in a time window.
type received struct {
	Seq                   uint64
	Time, ID, Sender, Via string
	Recipients            []string
}

var errEnough = errors.New("enough")

// window finds the messages received in [from, to) whose ID, sender or a
// recipient contains needle: the window's first record by binary search
// (journal.SeqAt), then its records in order, at most maxScanned of them.
func (c *console) window(from, to time.Time, needle string) (out []received, truncated bool, err error) {
	j := c.d.Journal
	start, err := j.SeqAt(from)
	if err != nil {
		return nil, false, err
	}
	end, err := j.SeqAt(to)
	if err != nil {
		return nil, false, err
	}
	if start >= end {
		return nil, false, nil
	}
	scanned := 0
	err = j.Scan(start, func(e events.Event) error {
		if e.Seq >= end {
			return errEnough
		}
		if scanned++; scanned > maxScanned || len(out) >= maxResults {
			truncated = true
			return errEnough
		}
		r, ok := receivedRow(e)
		if !ok || !matches(needle, e.Envelope, r.Sender, r.Recipients) {
			return nil
		}
		out = append(out, r)
		return nil
	})
	if errors.Is(err, errEnough) {
		err = nil
	}
	return out, truncated, err
}

func matches(needle, id, sender string, rcpts []string) bool {
	if needle == "" || strings.Contains(strings.ToLower(id), needle) || strings.Contains(strings.ToLower(sender), needle) {
		return true
	}
	for _, rc := range rcpts {
		if strings.Contains(strings.ToLower(rc), needle) {
			return true
		}
	}
	return false
}

// isAddress reports whether q is a whole address (searched exactly, in the
// address index) rather than part of one.
func isAddress(q string) bool {
	at := strings.IndexByte(q, '@')
	return at > 0 && at < len(q)-1 && !strings.ContainsAny(q, " \t<>")
}

// parseWindow reads the optional window (zero times: unbounded).
func parseWindow(fromS, toS string) (from, to time.Time, msg string) {
	var err error
	if fromS != "" {
		if from, err = time.Parse(timeLayout, fromS); err != nil {
			return from, to, "from: not a time (" + timeLayout + ")"
		}
	}
	if toS != "" {
		if to, err = time.Parse(timeLayout, toS); err != nil {
			return from, to, "to: not a time (" + timeLayout + ")"
		}
	}
	return from, to, ""
}

// byAddress lists the messages from or to addr, newest first, from the
// journal's address index, within [from, to) when those are set.
func (c *console) byAddress(addr string, from, to time.Time) (out []received, truncated bool, err error) {
	j := c.d.Journal
	lo, hi := uint64(0), ^uint64(0)
	if !from.IsZero() {
		if lo, err = j.SeqAt(from); err != nil {
			return nil, false, err
		}
	}
	if !to.IsZero() {
		if hi, err = j.SeqAt(to); err != nil {
			return nil, false, err
		}
	}
	hits, err := j.FindByAddress(addr, maxScanned)
	if err != nil {
		return nil, false, err
	}
	for _, h := range hits {
		if h.Seq < lo || h.Seq >= hi {
			continue
		}
		if len(out) == maxResults {
			return out, true, nil
		}
		e, err := j.Event(h.Seq)
		if err != nil {
			return out, false, err
		}
		if r, ok := receivedRow(e); ok {
			out = append(out, r)
		}
	}
	return out, false, nil
}

func receivedRow(e events.Event) (received, bool) {
	var sender, via string
	var rcpts []string
	switch rc := e.Payload.(type) {
	case events.Received:
		sender, rcpts, via = rc.Sender, rc.Recipients, rc.Listener
		if rc.AuthUser != "" {
			via += " as " + rc.AuthUser
		}
	case events.TransferredIn:
		sender, rcpts, via = rc.Sender, rc.Recipients, "transfer from "+rc.Origin
	default:
		return received{}, false
	}
	return received{Seq: e.Seq, Time: e.Time.UTC().Format("2006-01-02 15:04:05"), ID: e.Envelope,
		Sender: sender, Recipients: rcpts, Via: via}, true
}

// timeLayout is what <input type="datetime-local"> sends (taken as UTC).
const timeLayout = "2006-01-02T15:04"

func (c *console) search(w http.ResponseWriter, r *http.Request) {
	qs := strings.TrimSpace(r.URL.Query().Get("q"))
	fromS, toS := r.URL.Query().Get("from"), r.URL.Query().Get("to")
	if qs != "" && fromS == "" && toS == "" && !strings.ContainsAny(qs, "@ ") {
		if evs, err := c.d.Journal.EnvelopeEvents(qs, false); err == nil && len(evs) > 0 {
			http.Redirect(w, r, "/messages/"+urlPath(qs), http.StatusSeeOther)
			return
		}
	}
	data := struct {
		page
		Q, From, To, Error  string
		Windowed, Truncated bool
		Results             []*projections.Envelope
		History             []received
	}{page: c.page("Search", "search"), Q: qs, From: fromS, To: toS}
	needle := strings.ToLower(qs)
	if isAddress(qs) {
		// An address: the journal's address index, newest first, finished
		// messages too; a window, when given, narrows it.
		data.Windowed = true
		from, to, msg := parseWindow(fromS, toS)
		if data.Error = msg; msg == "" {
			var err error
			data.History, data.Truncated, err = c.byAddress(qs, from, to)
			if err != nil {
				data.Error = "the journal could not be read: " + err.Error()
			}
		}
		c.render(w, http.StatusOK, "search", data)
		return
	}
	if fromS != "" || toS != "" {
		data.Windowed = true
		to, from := time.Now().UTC(), time.Time{}
		var err error
		if toS != "" {
			if to, err = time.Parse(timeLayout, toS); err != nil {
				data.Error = "to: not a time (" + timeLayout + ")"
			}
		}
		if fromS != "" {
			if from, err = time.Parse(timeLayout, fromS); err != nil {
				data.Error = "from: not a time (" + timeLayout + ")"
			}
		} else {
			from = to.Add(-time.Hour)
		}
		if data.Error == "" {
			data.History, data.Truncated, err = c.window(from, to, needle)
			if err != nil {
				data.Error = "the journal could not be read: " + err.Error()
			}
		}
	} else if qs != "" {
		data.Results = c.d.Queue.Select(func(e *projections.Envelope) bool { return matches(needle, e.ID, e.Sender, e.Recipients) })
		if len(data.Results) > maxResults {
			data.Results, data.Truncated = data.Results[:maxResults], true
		}
	}
	c.render(w, http.StatusOK, "search", data)
}

// storyEvent is one row of a message's story.
type storyEvent struct {
	Seq                  uint64
	Time, Envelope, Type string
	Details, Links       []string
}

type problem struct {
	Seq    uint64
	Reason string
}

func (c *console) message(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	j := c.d.Journal
	evs, err := j.EnvelopeEvents(id, true)
	if err != nil {
		http.Error(w, "the journal could not be read: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if len(evs) == 0 {
		http.Error(w, "no envelope "+id, http.StatusNotFound)
		return
	}
	set := map[string]*projections.Envelope{}
	data := struct {
		page
		ID, Subject, Sender, State string
		Recipients                 []string
		Events                     []storyEvent
		ChainOK, HasBody           bool
		Problems                   []problem
		Size                       int64
	}{page: c.page("Message "+id, "message"), ID: id}
	seqs := make([]uint64, 0, len(evs))
	for _, e := range evs {
		projections.Fold(set, e)
		seqs = append(seqs, e.Seq)
		data.Events = append(data.Events, storyEvent{Seq: e.Seq, Time: e.Time.UTC().Format("2006-01-02 15:04:05.000"),
			Envelope: e.Envelope, Type: string(e.Type()), Details: details(e), Links: dsnLinks(e)})
	}
	if env := set[id]; env != nil {
		data.Sender, data.Recipients, data.State = env.Sender, env.Recipients, string(env.State)
		if b, err := j.OpenBody(env.BodyKey, bodySum(evs, id)); err == nil {
			if h, err := b.Header(64 << 10); err == nil {
				if m, err := mail.ReadMessage(strings.NewReader(string(h) + "\r\n")); err == nil {
					data.Subject = decodeHeader(m.Header.Get("Subject"))
				}
			}
			data.HasBody, data.Size = true, b.Size()
			b.Close()
		}
	}
	problems, err := j.VerifyRecords(seqs)
	if err != nil {
		http.Error(w, "the journal could not be read: "+err.Error(), http.StatusInternalServerError)
		return
	}
	data.ChainOK = len(problems) == 0
	for s, reason := range problems {
		data.Problems = append(data.Problems, problem{s, reason})
	}
	sort.Slice(data.Problems, func(a, b int) bool { return data.Problems[a].Seq < data.Problems[b].Seq })
	c.render(w, http.StatusOK, "message", data)
}

// bodySum is the SHA-256 the envelope's Received event recorded.
func bodySum(evs []events.Event, id string) string {
	for _, e := range evs {
		if rc, ok := e.Payload.(events.Received); ok && e.Envelope == id {
			return rc.BodySHA256
		}
	}
	return ""
}

func decodeHeader(s string) string {
	if d, err := (&mime.WordDecoder{}).DecodeHeader(s); err == nil {
		return d
	}
	return s
}

// details lists an event's fields as "name: value" lines, as mta replay
// prints them.
func details(e events.Event) []string {
	fields, err := events.Fields(e)
	if err != nil {
		return []string{"(undecodable: " + err.Error() + ")"}
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+": "+flat(fields[k]))
	}
	return out
}

func flat(v any) string {
	switch x := v.(type) {
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = flat(p)
		}
		return strings.Join(parts, ", ")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + flat(x[k])
		}
		return "{" + strings.Join(parts, " ") + "}"
	case string:
		return strings.TrimRight(x, "\r\n")
	}
	return fmt.Sprint(v)
}

// dsnLinks are the envelopes an event queued to the sender (DSNs).
func dsnLinks(e events.Event) []string {
	switch p := e.Payload.(type) {
	case events.Bounced:
		if p.DSN != "" {
			return []string{p.DSN}
		}
	case events.Deferred:
		if p.DelayDSN != "" {
			return []string{p.DelayDSN}
		}
	case events.Lost:
		if p.DSN != "" {
			return []string{p.DSN}
		}
	}
	return nil
}

func (c *console) raw(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	j := c.d.Journal
	evs, err := j.EnvelopeEvents(id, false)
	if err != nil || len(evs) == 0 {
		http.Error(w, "no envelope "+id, http.StatusNotFound)
		return
	}
	set := map[string]*projections.Envelope{}
	for _, e := range evs {
		projections.Fold(set, e)
	}
	env := set[id]
	if env == nil {
		http.Error(w, "no envelope "+id, http.StatusNotFound)
		return
	}
	b, err := j.OpenBody(env.BodyKey, bodySum(evs, id))
	if errors.Is(err, journal.ErrNoBody) {
		http.Error(w, "the body of "+id+" is not kept", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, "the body could not be read: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer b.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Disposition", `attachment; filename="`+strings.Map(safeName, id)+`.eml"`)
	io.WriteString(w, env.Prepend)
	io.Copy(w, b.Reader())
}

func safeName(r rune) rune {
	if r == '.' || r == '-' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
		return r
	}
	return '_'
}
