// Package admin serves ledgermail's admin HTTP API, an adapter over the
// journal, the queue projection and the queue package's operator actions:
//
//	GET  /healthz                       "ok" while the process runs, then Deps.Health's lines
//	GET  /readyz                        200 once serving, 503 while starting or stopping
//	GET  /metrics                       Prometheus text format
//	GET  /queue[?consistent=1]          projections.Snapshot as JSON (List, or Snapshot)
//	GET  /envelopes/{id}                {"envelope": state, "events": [replay objects]}
//	GET  /journal?envelope=&since=      JournalLine per line (NDJSON)
//	GET  /debug/pprof/...               Go's profiler, with Deps.Pprof ([admin] pprof)
//	GET  /journal/head                  {"seq": n, "sha256": hex}: the chain's head
//	GET  /journal/anchor?seq=&sha256=   200 when the journal extends that head, else 409
//	GET  /cluster                       the cluster's members (scaleout.Status), 404 without [cluster]
//	POST /drain?timeout=10m             stop accepting, hand the queue to the other nodes (scaleout.DrainReport)
//	GET  /bodies/{key}/sha256           {"sha256": hex} of a stored body (404: none)
//	POST /queue/retry?id=ID|all         journal RetryRequested and retry now
//	POST /queue/delete?id=ID            journal Deleted
//	POST /queue/suspend?domain=D[&until=RFC3339]   journal Suspended
//	POST /queue/resume?domain=D         journal Resumed, retry its envelopes now
//	/, /login, /destinations, /search, /messages/...  the operator console (package console)
//
// Every request needs Deps.Token as a bearer token, except /metrics,
// /healthz and /readyz when Deps.MetricsPublic. State-changing requests are
// POST only; a browser page cannot send the bearer token cross-origin, so
// it cannot trigger them.
package admin

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/actors"
	"github.com/ledgermail/ledgermail/console"
	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/queue"
)

// JournalLine is one line of GET /journal: the sequence number and the
// event exactly as stored (events.Marshal), so clients decode it with
// events.Unmarshal and print it as they would offline.
type JournalLine struct {
	Seq   uint64          `json:"seq"`
	Event json.RawMessage `json:"event"`
}

// State is what /readyz reports: Ready is set once the server serves.
type State struct{ Ready atomic.Bool }

// Deps are what the API serves from.
type Deps struct {
	Journal *journal.Journal
	Queue   *projections.Queue
	Actors  *actors.System
	Metrics *projections.Metrics
	State   *State
	Token   string // required as a bearer token ("" leaves the API open: tests only)
	// MetricsPublic leaves /metrics, /healthz and /readyz open.
	MetricsPublic bool
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// Health, if set, adds detail lines to /healthz (the journal history's
	// check, webhook lag).
	Health func() []string
	// KeepBodies is queue.keep_bodies; false drops a deleted envelope's body.
	KeepBodies bool
	// Retention runs the [journal] retention sweep on demand (POST
	// /journal/prune); nil when retention is off.
	Retention *queue.Retention
	Log       *zap.Logger
	// Console, when set, serves the operator console's pages (package
	// console decides which paths, and checks the token itself: a page
	// also takes the session cookie that its login sets).
	Console http.Handler
	// Cluster, when set, answers GET /cluster (the cluster's members as
	// this node sees them); Readiness adds lines to /readyz.
	Cluster   func() any
	Readiness func() []string
	// Drain, when set, serves POST /drain: stop accepting and hand the
	// queue to the other nodes, within ctx.
	Drain func(ctx context.Context) (any, error)
}

// New returns the admin API handler.
func New(d Deps) http.Handler {
	j, q, sys, log := d.Journal, d.Queue, d.Actors, d.Log
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
		if d.Health != nil {
			for _, l := range d.Health() {
				fmt.Fprintln(w, l)
			}
		}
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.State.Ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
		if d.Readiness != nil {
			for _, l := range d.Readiness() {
				fmt.Fprintln(w, l)
			}
		}
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		if d.Drain == nil {
			http.Error(w, "this node is not in a cluster ([cluster] etcd is empty): nothing to drain to", http.StatusNotFound)
			return
		}
		timeout := 10 * time.Minute
		if v := r.URL.Query().Get("timeout"); v != "" {
			t, err := time.ParseDuration(v)
			if err != nil || t <= 0 {
				http.Error(w, "timeout: not a duration like 10m", http.StatusBadRequest)
				return
			}
			timeout = t
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		rep, err := d.Drain(ctx)
		out := map[string]any{"report": rep}
		if err != nil {
			out["error"] = err.Error()
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, _ *http.Request) {
		if d.Cluster == nil {
			http.Error(w, "this node is not in a cluster ([cluster] etcd is empty)", http.StatusNotFound)
			return
		}
		writeJSON(w, d.Cluster())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, r *http.Request) {
		// ?consistent=1: one point in time (replay --verify compares it at
		// its sequence number); otherwise a listing that never holds the
		// write path's lock for long.
		if r.URL.Query().Get("consistent") != "" {
			writeJSON(w, q.Snapshot())
			return
		}
		snap := q.List()
		if held, err := sys.Held(); err == nil && len(held) > 0 {
			snap.Held = held
		}
		writeJSON(w, snap)
	})
	mux.HandleFunc("GET /envelopes/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		evs, err := j.EnvelopeEvents(id, true)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if len(evs) == 0 {
			http.Error(w, "no envelope "+id, http.StatusNotFound)
			return
		}
		set := map[string]*projections.Envelope{}
		var lines []json.RawMessage
		for _, e := range evs {
			projections.Fold(set, e)
			b, err := projections.JSONLine(e)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			lines = append(lines, b)
		}
		writeJSON(w, map[string]any{"envelope": set[id], "events": lines})
	})
	if d.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /journal/head", func(w http.ResponseWriter, _ *http.Request) {
		seq, hash := j.Head()
		writeJSON(w, map[string]any{"seq": seq, "sha256": hash})
	})
	mux.HandleFunc("GET /journal/anchor", func(w http.ResponseWriter, r *http.Request) {
		seq, err := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
		if err != nil {
			http.Error(w, "seq must be a sequence number", http.StatusBadRequest)
			return
		}
		if err := j.VerifyAnchor(seq, r.URL.Query().Get("sha256")); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /bodies/{key}/sha256", func(w http.ResponseWriter, r *http.Request) {
		sum, err := j.BodySHA256(r.PathValue("key"))
		var bce *journal.BodyCorruptError
		if errors.Is(err, journal.ErrNoBody) {
			http.Error(w, "no such body", http.StatusNotFound)
			return
		}
		if errors.As(err, &bce) && bce.Truncated != "" {
			writeJSON(w, map[string]string{"sha256": "truncated: " + bce.Truncated})
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, map[string]string{"sha256": sum})
	})
	mux.HandleFunc("GET /journal", func(w http.ResponseWriter, r *http.Request) {
		f, err := projections.ParseFilter(r.URL.Query().Get("envelope"), r.URL.Query().Get("since"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		bw := bufio.NewWriter(w)
		defer bw.Flush()
		enc := json.NewEncoder(bw)
		err = j.ScanTolerant(1, func(e events.Event) error {
			if !f.Match(e) {
				return nil
			}
			raw, err := events.Marshal(e)
			if err != nil {
				return err
			}
			return enc.Encode(JournalLine{Seq: e.Seq, Event: raw})
		}, func(ce *journal.CorruptError) error {
			return enc.Encode(map[string]any{"seq": ce.Seq, "corrupt": ce.Reason})
		})
		if err != nil {
			enc.Encode(map[string]string{"error": err.Error()})
		}
	})
	mux.HandleFunc("POST /journal/prune", func(w http.ResponseWriter, r *http.Request) {
		if d.Retention == nil {
			http.Error(w, "retention is off ([journal] retention = \"0\")", http.StatusConflict)
			return
		}
		res, err := d.Retention.Sweep()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, PruneResult(res))
	})
	mux.HandleFunc("POST /queue/suspend", func(w http.ResponseWriter, r *http.Request) {
		domain := r.URL.Query().Get("domain")
		var until time.Time
		if u := r.URL.Query().Get("until"); u != "" {
			t, err := time.Parse(time.RFC3339, u)
			if err != nil {
				http.Error(w, "until: "+err.Error(), http.StatusBadRequest)
				return
			}
			until = t
		}
		if err := queue.Suspend(j, domain, until); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		log.Info("destination suspended", zap.String("domain", domain), zap.Time("until", until))
		writeJSON(w, map[string]string{"suspended": domain})
	})
	mux.HandleFunc("POST /queue/resume", func(w http.ResponseWriter, r *http.Request) {
		domain := r.URL.Query().Get("domain")
		ids, err := queue.Resume(j, q, domain)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		for _, id := range ids {
			sys.RetryNow(id)
		}
		log.Info("destination resumed", zap.String("domain", domain), zap.Int("envelopes", len(ids)))
		writeJSON(w, map[string]int{"envelopes": len(ids)})
	})
	mux.HandleFunc("POST /queue/retry", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		ids, _, _, err := queue.Operator(j, q, id, func() events.Payload { return events.RetryRequested{By: "admin-api"} })
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		for _, t := range ids {
			sys.RetryNow(t)
		}
		log.Info("retry requested", zap.String("envelope", id), zap.Int("envelopes", len(ids)))
		writeJSON(w, map[string]int{"envelopes": len(ids)})
	})
	mux.HandleFunc("POST /queue/delete", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if id == "all" {
			http.Error(w, "delete takes one envelope ID", http.StatusBadRequest)
			return
		}
		ids, bodies, _, err := queue.Operator(j, q, id, func() events.Payload { return events.Deleted{By: "admin-api"} })
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		if !d.KeepBodies {
			// The queue projection follows the journal: it has seen Deleted.
			if err := queue.DropUnusedBodies(j, q, bodies); err != nil {
				log.Warn("could not drop the deleted envelope's body", zap.Error(err))
			}
		}
		log.Info("envelope deleted", zap.String("envelope", id))
		writeJSON(w, map[string]int{"envelopes": len(ids)})
	})
	if d.Token == "" {
		return mux
	}
	want := "Bearer " + d.Token
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.Console != nil && console.Paths(r.URL.Path) {
			d.Console.ServeHTTP(w, r)
			return
		}
		public := r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics"
		if !(public && d.MetricsPublic) &&
			subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ledgermail"`)
			http.Error(w, "admin.token required", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// PruneJSON is the answer of POST /journal/prune (and `mta journal prune
// --json`).
type PruneJSON struct {
	From      uint64 `json:"from"`
	To        uint64 `json:"to"`
	Records   uint64 `json:"records"`
	Bodies    int    `json:"bodies"`
	Segment   string `json:"archive_segment,omitempty"`
	FreedBody int64  `json:"freed_body_bytes"`
	FirstSeq  uint64 `json:"first_hot_seq"`
}

// PruneResult is the JSON form of what a sweep did.
func PruneResult(r journal.ArchiveResult) PruneJSON {
	p := PruneJSON{From: r.From, To: r.To, Bodies: r.Bodies, Segment: r.Segment, FreedBody: r.Freed, FirstSeq: max(r.From, r.To+1)}
	if r.To >= r.From {
		p.Records = r.To - r.From + 1
	}
	return p
}
