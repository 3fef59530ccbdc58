package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/queue"
)

// source is where the read commands get events: the journal itself when no
// server runs, or the running server's admin API (Pebble locks the journal
// directory, so a second process cannot open it).
type source interface {
	// Scan calls fn for every event matching f; corrupt records go to bad.
	Scan(f projections.Filter, fn func(events.Event) error, bad func(seq uint64, reason string) error) error
	// Operator journals RetryRequested or Deleted for id ("all": every live
	// envelope) and returns how many envelopes it concerned.
	Operator(action, id string) (int, error)
	// Queue returns the live queue.
	Queue() (projections.Snapshot, error)
	// Suspend journals Suspended for domain (until zero: until resumed).
	Suspend(domain string, until time.Time) error
	// Resume journals Resumed for domain and retries its envelopes; it
	// returns how many.
	Resume(domain string) (int, error)
	// Reference returns a record of the queue kept independently of a
	// fresh fold of the journal (the server's saved snapshot offline, its
	// live projection online), for `replay --verify` to compare with; ok is
	// false when there is none.
	Reference() (ref projections.Snapshot, what string, ok bool, err error)
	// BodySum returns the SHA-256 of the stored body under key; present is
	// false when there is none (dropped after delivery, or lost).
	BodySum(key string) (sum string, present bool, err error)
	// Head returns the journal's head (sequence number, SHA-256 link).
	Head() (uint64, string, error)
	// Anchor checks that the journal still extends an earlier head.
	Anchor(seq uint64, hash string) error
	// Total is the number of events in the journal, or 0 when unknown.
	Total() uint64
	Close() error
	Describe() string
}

// access says what a command may do to the journal.
type access int

const (
	// readOnly commands (`mta queue`, `mta replay`) change nothing in the
	// data directory.
	readOnly access = iota
	// verifyOnly is readOnly that also opens a journal that lost records,
	// to report them.
	verifyOnly
	// readWrite commands journal operator actions.
	readWrite
)

// openSource opens the journal, or falls back to the admin API when a
// running server holds it.
func openSource(cfg Config, mode access) (source, error) {
	dir := cfg.JournalDir()
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		// Nothing was ever queued here: an empty queue, not an error (and
		// no journal is created by merely looking).
		return emptySource{dir: dir}, nil
	}
	j, err := journal.Open(journal.Options{Dir: dir, ArchiveDir: cfg.ArchiveDir(), ReadOnly: mode != readWrite, AllowLost: mode == verifyOnly})
	if err == nil {
		return &offlineSource{j: j, keepBodies: cfg.Queue.KeepBodies}, nil
	}
	if !errors.Is(err, journal.ErrLocked) {
		return nil, err
	}
	if cfg.Admin.Listen == "" {
		return nil, fmt.Errorf("the server holds the journal and admin.listen is empty, so it cannot be asked")
	}
	return adminClient(cfg)
}

// emptySource stands for a data_dir without a journal yet.
type emptySource struct{ dir string }

func (e emptySource) Describe() string { return "no journal yet in " + e.dir }
func (e emptySource) Total() uint64    { return 0 }
func (e emptySource) Close() error     { return nil }
func (e emptySource) Scan(projections.Filter, func(events.Event) error, func(uint64, string) error) error {
	return nil
}
func (e emptySource) Queue() (projections.Snapshot, error) {
	return projections.NewQueue().Snapshot(), nil
}
func (e emptySource) BodySum(string) (string, bool, error) { return "", false, nil }
func (e emptySource) Head() (uint64, string, error)        { return 0, "", nil }
func (e emptySource) Anchor(seq uint64, _ string) error {
	return fmt.Errorf("journal: does not extend the anchor: there is no journal yet (the anchor names record %d)", seq)
}
func (e emptySource) Reference() (projections.Snapshot, string, bool, error) {
	return projections.Snapshot{}, "", false, nil
}
func (e emptySource) Suspend(string, time.Time) error {
	return fmt.Errorf("no journal yet in %s: start the server once", e.dir)
}
func (e emptySource) Resume(domain string) (int, error) {
	return 0, fmt.Errorf("%s is not suspended (no journal yet in %s)", domain, e.dir)
}
func (e emptySource) Operator(_, id string) (int, error) {
	if id == "all" {
		return 0, nil
	}
	return 0, fmt.Errorf("no live envelope %s in the queue (no journal yet in %s)", id, e.dir)
}

type offlineSource struct {
	j          *journal.Journal
	keepBodies bool
}

func (o *offlineSource) Describe() string { return "journal (server not running)" }
func (o *offlineSource) Total() uint64    { return o.j.LastSeq() }
func (o *offlineSource) Close() error     { return o.j.Close() }

func (o *offlineSource) Scan(f projections.Filter, fn func(events.Event) error, bad func(uint64, string) error) error {
	filtered := func(e events.Event) error {
		if !f.Match(e) {
			return nil
		}
		return fn(e)
	}
	if bad == nil {
		return o.j.Scan(1, filtered)
	}
	return o.j.ScanTolerant(1, filtered, func(ce *journal.CorruptError) error { return bad(ce.Seq, ce.Reason) })
}

func (o *offlineSource) fold() (*projections.Queue, error) { return queue.Fold(o.j) }

func (o *offlineSource) Queue() (projections.Snapshot, error) {
	q, err := o.fold()
	if err != nil {
		return projections.Snapshot{}, err
	}
	return q.Snapshot(), nil
}

func (o *offlineSource) Head() (uint64, string, error) {
	seq, hash := o.j.Head()
	return seq, hash, nil
}

func (o *offlineSource) Anchor(seq uint64, hash string) error { return o.j.VerifyAnchor(seq, hash) }

func (o *offlineSource) BodySum(key string) (string, bool, error) {
	sum, err := o.j.BodySHA256(key)
	var bce *journal.BodyCorruptError
	if errors.Is(err, journal.ErrNoBody) {
		return "", false, nil
	}
	if errors.As(err, &bce) && bce.Truncated != "" {
		// Reported as a mismatch, like any other damage to the body.
		return "truncated: " + bce.Truncated, true, nil
	}
	if err != nil {
		return "", false, err
	}
	return sum, true, nil
}

func (o *offlineSource) Reference() (projections.Snapshot, string, bool, error) {
	_, data, err := o.j.Snapshot(queue.SnapshotName)
	if errors.Is(err, journal.ErrNoSnapshot) {
		return projections.Snapshot{}, "", false, nil
	}
	if err != nil {
		return projections.Snapshot{}, "", false, err
	}
	q := projections.NewQueue()
	if _, err := q.LoadSnapshot(data); err != nil {
		return projections.Snapshot{}, "", false, err
	}
	s := q.Snapshot()
	return s, fmt.Sprintf("the queue snapshot saved by the server at sequence %d", s.Seq), true, nil
}

func (o *offlineSource) Suspend(domain string, until time.Time) error {
	return queue.Suspend(o.j, domain, until)
}

func (o *offlineSource) Resume(domain string) (int, error) {
	q, err := o.fold()
	if err != nil {
		return 0, err
	}
	ids, err := queue.Resume(o.j, q, domain)
	return len(ids), err
}

func (o *offlineSource) Operator(action, id string) (int, error) {
	q, err := o.fold()
	if err != nil {
		return 0, err
	}
	ids, bodies, evs, err := queue.Operator(o.j, q, id, func() events.Payload {
		if action == "delete" {
			return events.Deleted{By: "mta queue (offline)"}
		}
		return events.RetryRequested{By: "mta queue (offline)"}
	})
	if err != nil {
		return 0, err
	}
	if action == "delete" && !o.keepBodies {
		q.Apply(evs) // this fold is not subscribed to the journal
		if err := queue.DropUnusedBodies(o.j, q, bodies); err != nil {
			return len(ids), fmt.Errorf("envelope deleted, but its body could not be dropped: %w", err)
		}
	}
	return len(ids), nil
}

type adminSource struct {
	base   string
	token  string
	client *http.Client
}

// do sends a request with the bearer token, if any.
func (a *adminSource) do(method, path string) (*http.Response, error) {
	req, err := http.NewRequest(method, a.base+path, nil)
	if err != nil {
		return nil, err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the server's admin API: %w", err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		resp.Body.Close()
		return nil, errors.New("the admin API refused the request: the token (admin.token, else <data_dir>/admin-token) does not match the server's")
	}
	return resp, nil
}

func (a *adminSource) Describe() string { return "server at " + a.base }
func (a *adminSource) Total() uint64    { return 0 }
func (a *adminSource) Close() error     { return nil }

func (a *adminSource) Scan(f projections.Filter, fn func(events.Event) error, bad func(uint64, string) error) error {
	v := url.Values{}
	if f.Envelope != "" {
		v.Set("envelope", f.Envelope)
	}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.Format(time.RFC3339))
	}
	resp, err := a.do("GET", "/journal?"+v.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("admin API: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var line struct {
			Seq     uint64          `json:"seq"`
			Event   json.RawMessage `json:"event"`
			Corrupt string          `json:"corrupt"`
			Error   string          `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("admin API: bad line: %w", err)
		}
		switch {
		case line.Error != "":
			return fmt.Errorf("server: %s", line.Error)
		case line.Corrupt != "":
			ce := &journal.CorruptError{Seq: line.Seq, Reason: line.Corrupt}
			if bad == nil {
				return ce
			}
			if err := bad(line.Seq, line.Corrupt); err != nil {
				return err
			}
			continue
		}
		e, err := events.Unmarshal(line.Event)
		if err != nil {
			return fmt.Errorf("admin API: event %d: %w", line.Seq, err)
		}
		e.Seq = line.Seq
		if err := fn(e); err != nil {
			return err
		}
	}
	return sc.Err()
}

func (a *adminSource) Queue() (projections.Snapshot, error) { return a.queue("/queue") }

func (a *adminSource) queue(path string) (projections.Snapshot, error) {
	var s projections.Snapshot
	resp, err := a.do("GET", path)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("admin API: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("admin API: %w", err)
	}
	return s, nil
}

func (a *adminSource) Head() (uint64, string, error) {
	resp, err := a.do("GET", "/journal/head")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var h struct {
		Seq    uint64
		SHA256 string
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return 0, "", fmt.Errorf("admin API: %w", err)
	}
	return h.Seq, h.SHA256, nil
}

func (a *adminSource) Anchor(seq uint64, hash string) error {
	resp, err := a.do("GET", fmt.Sprintf("/journal/anchor?seq=%d&sha256=%s", seq, url.QueryEscape(hash)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return errors.New(strings.TrimSpace(string(b)))
	}
	return nil
}

func (a *adminSource) BodySum(key string) (string, bool, error) {
	resp, err := a.do("GET", "/bodies/"+url.PathEscape(key)+"/sha256")
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return "", false, nil
	}
	if resp.StatusCode != http.StatusOK {
		return "", false, fmt.Errorf("admin API: %s", resp.Status)
	}
	var out struct{ SHA256 string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", false, fmt.Errorf("admin API: %w", err)
	}
	return out.SHA256, true, nil
}

func (a *adminSource) Reference() (projections.Snapshot, string, bool, error) {
	s, err := a.queue("/queue?consistent=1")
	if err != nil {
		return s, "", false, err
	}
	return s, fmt.Sprintf("the running server's queue at sequence %d", s.Seq), true, nil
}

func (a *adminSource) Suspend(domain string, until time.Time) error {
	q := "domain=" + url.QueryEscape(domain)
	if !until.IsZero() {
		q += "&until=" + url.QueryEscape(until.UTC().Format(time.RFC3339))
	}
	_, err := a.post("/queue/suspend?" + q)
	return err
}

func (a *adminSource) Resume(domain string) (int, error) {
	return a.post("/queue/resume?domain=" + url.QueryEscape(domain))
}

func (a *adminSource) Operator(action, id string) (int, error) {
	return a.post("/queue/" + action + "?id=" + url.QueryEscape(id))
}

// post sends an operator request and returns the "envelopes" count of its
// answer.
func (a *adminSource) post(path string) (int, error) {
	resp, err := a.do("POST", path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, errors.New(strings.TrimSpace(string(b)))
	}
	var out struct{ Envelopes int }
	json.Unmarshal(b, &out) // a suspend answers no count
	return out.Envelopes, nil
}
