package queue

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
)

// AccountForLost journals, in the repaired journal, a Lost event (and a
// DSN to the sender) for every live envelope that lost a record or its
// body, and returns one line for each.
func AccountForLost(dir, hostname string, rep journal.SalvageReport) ([]string, error) {
	j, err := journal.Open(journal.Options{Dir: dir})
	if err != nil {
		return nil, err
	}
	defer j.Close()
	q, err := Fold(j)
	if err != nil {
		return nil, err
	}
	why := func(e *projections.Envelope) string {
		for id := e.ID; ; {
			if r, ok := rep.Affected[id]; ok {
				return r
			}
			i := strings.LastIndexByte(id, '.')
			if i < 0 {
				break
			}
			id = id[:i]
		}
		return rep.MissingBodies[e.BodyKey]
	}
	victims := q.Select(func(e *projections.Envelope) bool { return why(e) != "" })
	sort.Slice(victims, func(a, b int) bool { return victims[a].ID < victims[b].ID })
	var lines []string
	// Envelopes whose Received record itself is unreadable are not in the
	// fold: their sender is unknown, so no DSN can go; the Lost event still
	// records them.
	for id, r := range rep.Affected {
		if id == "-" || strings.Contains(id, ".") || q.Select(func(e *projections.Envelope) bool { return e.ID == id || strings.HasPrefix(e.ID, id+".") }) != nil {
			continue
		}
		if evs, err := j.EnvelopeEvents(id, false); err == nil && hasReceived(evs) {
			continue // it reached a final state: nothing to account for
		}
		if _, err := j.Append(journal.Write{Events: []events.Event{{Envelope: id, Payload: events.Lost{Reason: "lost to storage damage: " + r}}}}); err != nil {
			return lines, err
		}
		lines = append(lines, fmt.Sprintf("envelope %s lost (%s); its sender is unknown, so no DSN could be sent", id, r))
	}
	now := time.Now().UTC()
	for _, e := range victims {
		cause := why(e)
		reason := "lost to storage damage: " + cause
		wr := journal.Write{}
		var dsnID string
		if e.Sender != "" && len(e.Pending) > 0 {
			dsnID = events.NewID()
			var rcpts []policy.DSNRecipient
			for _, r := range e.Pending {
				rcpts = append(rcpts, policy.DSNRecipient{Recipient: r, Status: "5.3.0",
					Diagnostic: fmt.Sprintf("554 5.3.0 the message was lost to storage damage at %s (%s)", hostname, cause)})
			}
			msg := policy.BuildDSN(policy.DSN{ID: dsnID, Hostname: hostname, Envelope: e.ID, Sender: e.Sender,
				Arrived: e.Arrived, Now: now, Recipients: rcpts})
			wr.Bodies = append(wr.Bodies, journal.Body{Key: dsnID, Data: msg})
			wr.Events = append(wr.Events, events.Event{Envelope: dsnID, Payload: events.Received{
				Recipients: []string{e.Sender}, BodyKey: dsnID, Size: int64(len(msg)), BodySHA256: journal.BodySum(msg), Listener: events.ListenerLocal, Parent: e.ID}})
		}
		wr.Events = append([]events.Event{{Envelope: e.ID, Payload: events.Lost{Recipients: e.Pending, Reason: reason, DSN: dsnID}}}, wr.Events...)
		if _, err := j.Append(wr); err != nil {
			return lines, err
		}
		line := fmt.Sprintf("envelope %s lost (%s)", e.ID, cause)
		if dsnID != "" {
			line += fmt.Sprintf("; DSN %s to <%s>", dsnID, e.Sender)
		}
		lines = append(lines, line)
	}
	return lines, nil
}

func hasReceived(evs []events.Event) bool {
	for _, e := range evs {
		if e.Type() == events.TypeReceived {
			return true
		}
	}
	return false
}
