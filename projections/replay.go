package projections

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// Filter selects events for the audit listing.
type Filter struct {
	// Envelope, when set, keeps that envelope and the envelopes split from
	// it (IDs "Envelope.N").
	Envelope string
	// Since, when set, keeps events at or after it.
	Since time.Time
}

// Match reports whether e passes the filter.
func (f Filter) Match(e events.Event) bool {
	if f.Envelope != "" && e.Envelope != f.Envelope && !strings.HasPrefix(e.Envelope, f.Envelope+".") {
		return false
	}
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	return true
}

// JSONLine renders one event as the object `mta replay --json` prints:
// {"seq","time","envelope","type","version", ...payload fields}.
func JSONLine(e events.Event) ([]byte, error) {
	m, err := events.Fields(e)
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", e.Seq, err)
	}
	m["seq"] = e.Seq
	m["time"] = e.Time.UTC().Format(time.RFC3339Nano)
	m["envelope"] = e.Envelope
	m["type"] = string(e.Type())
	m["version"] = e.Version
	return json.Marshal(m)
}

// WriteText prints one event as a human-readable audit line:
// seq, time, envelope, type, then the payload's fields as key=value.
func WriteText(w io.Writer, e events.Event) error {
	m, err := events.Fields(e)
	if err != nil {
		return fmt.Errorf("event %d: %w", e.Seq, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%8d %s %-24s %-16s", e.Seq, e.Time.UTC().Format(time.RFC3339), e.Envelope, e.Type())
	for _, k := range keys {
		v, _ := json.Marshal(m[k])
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	b.WriteByte('\n')
	_, err = io.WriteString(w, b.String())
	return err
}

// ParseFilter builds a Filter from the --envelope and --since values
// (RFC 3339).
func ParseFilter(envelope, since string) (Filter, error) {
	f := Filter{Envelope: envelope}
	if since != "" {
		t, err := time.Parse(time.RFC3339, since)
		if err != nil {
			return f, errors.New("--since must be an RFC 3339 time like 2026-01-02T15:04:05Z")
		}
		f.Since = t
	}
	return f, nil
}
