package main

import (
	"bufio"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/actors"
	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// journalLine is one line of GET /journal: the sequence number and the
// event exactly as stored (events.Marshal), so clients decode it with
// events.Unmarshal and print it as they would offline.
type journalLine struct {
	Seq   uint64          `json:"seq"`
	Event json.RawMessage `json:"event"`
}

// serverState is what /readyz reports.
type serverState struct{ ready atomic.Bool }

type adminDeps struct {
	j       *journal.Journal
	q       *projections.Queue
	sys     *actors.System
	metrics *projections.Metrics
	state   *serverState
	token   string // when set, required as a bearer token (but by /healthz and /readyz)
	// keepBodies is queue.keep_bodies; false drops a deleted envelope's body.
	keepBodies bool
	log        *zap.Logger
}

// newAdmin serves the admin API:
//
//	GET  /healthz                       "ok" while the process runs
//	GET  /readyz                        200 once serving, 503 while starting or stopping
//	GET  /metrics                       Prometheus text format
//	GET  /queue                         projections.Snapshot as JSON
//	GET  /envelopes/{id}                {"envelope": state, "events": [replay objects]}
//	GET  /journal?envelope=&since=      journalLine per line (NDJSON)
//	POST /queue/retry?id=ID|all         journal RetryRequested and retry now
//	POST /queue/delete?id=ID            journal Deleted
func newAdmin(d adminDeps) http.Handler {
	j, q, sys, log := d.j, d.q, d.sys, d.log
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.state.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /queue", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, q.Snapshot()) })
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
	mux.HandleFunc("GET /journal", func(w http.ResponseWriter, r *http.Request) {
		f, err := parseFilter(r.URL.Query().Get("envelope"), r.URL.Query().Get("since"))
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
			return enc.Encode(journalLine{Seq: e.Seq, Event: raw})
		}, func(ce *journal.CorruptError) error {
			return enc.Encode(map[string]any{"seq": ce.Seq, "corrupt": ce.Reason})
		})
		if err != nil {
			enc.Encode(map[string]string{"error": err.Error()})
		}
	})
	mux.HandleFunc("POST /queue/retry", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		ids, _, _, err := operatorEvent(j, q, id, func() events.Payload { return events.RetryRequested{By: "admin-api"} })
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
		ids, bodies, _, err := operatorEvent(j, q, id, func() events.Payload { return events.Deleted{By: "admin-api"} })
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		if !d.keepBodies {
			// The queue projection follows the journal: it has seen Deleted.
			if err := dropUnusedBodies(j, q, bodies); err != nil {
				log.Warn("could not drop the deleted envelope's body", zap.Error(err))
			}
		}
		log.Info("envelope deleted", zap.String("envelope", id))
		writeJSON(w, map[string]int{"envelopes": len(ids)})
	})
	if d.token == "" {
		return mux
	}
	want := "Bearer " + d.token
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" &&
			subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ledgermail"`)
			http.Error(w, "admin.token required", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// operatorEvent journals an operator event for envelope id (and its live
// children), or for every live envelope when id is "all". It returns how
// envelopes it concerned.
func operatorEvent(j *journal.Journal, q *projections.Queue, id string, p func() events.Payload) ([]string, []string, []events.Event, error) {
	var targets, bodies []string
	// Only the matching envelopes are copied: a large queue is not cloned
	// and sorted for one ID.
	matches := q.Select(func(e *projections.Envelope) bool {
		return id == "all" || e.ID == id || strings.HasPrefix(e.ID, id+".")
	})
	sort.Slice(matches, func(a, b int) bool { return matches[a].ID < matches[b].ID })
	for _, e := range matches {
		targets = append(targets, e.ID)
		bodies = append(bodies, e.BodyKey)
	}
	if len(targets) == 0 {
		if id == "all" {
			return nil, nil, nil, nil
		}
		return nil, nil, nil, fmt.Errorf("no live envelope %s in the queue", id)
	}
	w := journal.Write{}
	for _, t := range targets {
		w.Events = append(w.Events, events.Event{Envelope: t, Payload: p()})
	}
	evs, err := j.Append(w)
	if err != nil {
		return nil, nil, nil, err
	}
	return targets, bodies, evs, nil
}

// dropUnusedBodies deletes the stored bodies among keys that no live
// envelope needs any more (queue.keep_bodies = false).
func dropUnusedBodies(j *journal.Journal, q *projections.Queue, keys []string) error {
	var drop []string
	for _, k := range keys {
		if !q.BodyInUse(k) {
			drop = append(drop, k)
		}
	}
	if len(drop) == 0 {
		return nil
	}
	_, err := j.Append(journal.Write{DropBodies: drop})
	return err
}

func parseFilter(envelope, since string) (projections.Filter, error) {
	f := projections.Filter{Envelope: envelope}
	if since != "" {
		t, err := time.Parse(time.RFC3339, since)
		if err != nil {
			return f, errors.New("--since must be an RFC 3339 time like 2026-01-02T15:04:05Z")
		}
		f.Since = t
	}
	return f, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
