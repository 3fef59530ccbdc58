package queue

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// Operator journals an operator event for envelope id (and its live
// children), or for every live envelope when id is "all". It returns how
// envelopes it concerned.
func Operator(j *journal.Journal, q *projections.Queue, id string, p func() events.Payload) ([]string, []string, []events.Event, error) {
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

// DropUnusedBodies deletes the stored bodies among keys that no live
// envelope needs any more (queue.keep_bodies = false).
func DropUnusedBodies(j *journal.Journal, q *projections.Queue, keys []string) error {
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

// Suspend journals that deliveries to domain stop until until (zero: until
// Resume). Nothing is delivered to it meanwhile; its envelopes are
// deferred until the end, and still expire.
func Suspend(j *journal.Journal, domain string, until time.Time) error {
	domain = strings.ToLower(strings.TrimSpace(domain))
	if domain == "" || strings.ContainsAny(domain, "@ /") {
		return fmt.Errorf("%q is not a domain", domain)
	}
	_, err := j.Append(journal.Write{Events: []events.Event{{Envelope: events.DomainEnvelope(domain), Payload: events.Suspended{Domain: domain, Until: until.UTC()}}}})
	return err
}

// Resume journals the end of domain's suspension and, in the same write,
// RetryRequested for every live envelope with recipients there (they wait
// for the suspension's end); it returns those envelopes, for the caller to
// retry now.
func Resume(j *journal.Journal, q *projections.Queue, domain string) ([]string, error) {
	domain = strings.ToLower(strings.TrimSpace(domain))
	if _, ok := q.Suspensions()[domain]; !ok {
		return nil, fmt.Errorf("%s is not suspended", domain)
	}
	matches := q.Select(func(e *projections.Envelope) bool {
		for _, r := range e.Pending {
			if i := strings.LastIndexByte(r, '@'); i >= 0 && strings.EqualFold(r[i+1:], domain) {
				return true
			}
		}
		return false
	})
	w := journal.Write{Events: []events.Event{{Envelope: events.DomainEnvelope(domain), Payload: events.Resumed{Domain: domain}}}}
	var ids []string
	for _, e := range matches {
		ids = append(ids, e.ID)
		w.Events = append(w.Events, events.Event{Envelope: e.ID, Payload: events.RetryRequested{By: "resume " + domain}})
	}
	sort.Strings(ids)
	if _, err := j.Append(w); err != nil {
		return nil, err
	}
	return ids, nil
}
