package console

import (
	"fmt"
	"html/template"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// Activity is a read model for the overview: accepted, delivered,
// deferred and bounced per minute over the last hour, and the journal's
// commit latencies over the last hour, from the journal's subscription
// (Apply) and commit callback (Commit). It starts empty when the server
// starts. Its memory is fixed: 60 minutes of counters and at most
// maxCommits latencies.
type Activity struct {
	mu      sync.Mutex
	start   time.Time
	minutes [60]minuteCounts
	commits []commitSample
	next    int
}

type minuteCounts struct {
	minute                                 int64 // Unix minute these counts are for
	accepted, delivered, deferred, bounced int
}

type commitSample struct {
	at time.Time
	d  time.Duration
}

const maxCommits = 4096

// NewActivity starts an empty read model.
func NewActivity() *Activity { return &Activity{start: time.Now()} }

// Apply counts committed events in the minute they were journaled.
func (a *Activity) Apply(evs []events.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range evs {
		m := a.minute(e.Time)
		switch p := e.Payload.(type) {
		case events.Received:
			if p.Parent == "" { // not the DSNs ledgermail makes itself
				m.accepted++
			}
		case events.Delivered:
			m.delivered += len(p.Recipients)
		case events.Deferred:
			m.deferred += len(p.Recipients)
		case events.Bounced:
			m.bounced += len(p.Recipients)
		}
	}
}

func (a *Activity) minute(t time.Time) *minuteCounts {
	u := t.Unix() / 60
	m := &a.minutes[u%60]
	if m.minute != u {
		*m = minuteCounts{minute: u}
	}
	return m
}

// Commit records one group commit's latency (journal.SetOnCommit).
func (a *Activity) Commit(d time.Duration, _ int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := commitSample{at: time.Now(), d: d}
	if len(a.commits) < maxCommits {
		a.commits = append(a.commits, s)
		return
	}
	a.commits[a.next] = s
	a.next = (a.next + 1) % maxCommits
}

// CommitPercentiles returns p50 and p99 of the last hour's commits (of
// the last maxCommits of them).
func (a *Activity) CommitPercentiles() (p50, p99 time.Duration, ok bool) {
	a.mu.Lock()
	cut := time.Now().Add(-time.Hour)
	var ds []time.Duration
	for _, s := range a.commits {
		if s.at.After(cut) {
			ds = append(ds, s.d)
		}
	}
	a.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0, false
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return pct(ds, 50), pct(ds, 99), true
}

// series is one line of the chart: a count per minute, oldest first.
type series struct {
	Name, Color string
	Counts      [60]int
}

type seriesTotal struct {
	Name, Color string
	Total       int
}

// Minutes returns the last 60 minutes up to now, and since when counting
// began (the start of the hour shown, or the server's start if later).
func (a *Activity) Minutes(now time.Time) ([]series, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []series{{Name: "accepted", Color: "#1f5fbf"}, {Name: "delivered", Color: "#1e7b34"},
		{Name: "deferred", Color: "#c77700"}, {Name: "bounced", Color: "#b3261e"}}
	last := now.Unix() / 60
	for i := 0; i < 60; i++ {
		u := last - 59 + int64(i)
		m := a.minutes[u%60]
		if m.minute != u {
			continue
		}
		out[0].Counts[i], out[1].Counts[i], out[2].Counts[i], out[3].Counts[i] = m.accepted, m.delivered, m.deferred, m.bounced
	}
	since := time.Unix((last-59)*60, 0)
	if a.start.After(since) {
		since = a.start
	}
	return out, since
}

func totals(ss []series) []seriesTotal {
	out := make([]seriesTotal, len(ss))
	for i, s := range ss {
		out[i] = seriesTotal{Name: s.Name, Color: s.Color}
		for _, n := range s.Counts {
			out[i].Total += n
		}
	}
	return out
}

// chart draws the series as an SVG line chart (numbers and fixed colours
// only: nothing from mail reaches it).
func chart(ss []series) template.HTML {
	const w, h, left, bottom, top = 720, 200, 44, 22, 8
	peak := 1
	for _, s := range ss {
		for _, n := range s.Counts {
			peak = max(peak, n)
		}
	}
	x := func(i int) float64 { return left + float64(i)*float64(w-left-8)/59 }
	y := func(n int) float64 { return top + float64(h-top-bottom)*(1-float64(n)/float64(peak)) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="messages per minute, last hour">`, w, h)
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#d8dce4"/>`, left, y(0), w-8, y(0))
	fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" fill="#5b6475">%d/min</text>`, left-4, y(peak)+4, peak)
	fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" fill="#5b6475">0</text>`, left-4, y(0)+4)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="11" fill="#5b6475">−60 min</text>`, x(0), h-4)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="11" text-anchor="end" fill="#5b6475">now</text>`, x(59), h-4)
	for _, s := range ss {
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="`, s.Color)
		for i, n := range s.Counts {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(i), y(n))
		}
		b.WriteString(`"><title>` + s.Name + `</title></polyline>`)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built here from numbers and constants
}

func urlQuery(s string) string { return url.QueryEscape(s) }
func urlPath(s string) string  { return url.PathEscape(s) }
