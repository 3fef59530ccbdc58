package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// `mta journal repair`: the damaged journal is kept, every readable record
// stays at its sequence number, and each live envelope that lost a record
// or its body is bounced to its sender with a DSN (a Lost event), instead
// of being retried for ever.
func TestJournalRepair(t *testing.T) {
	s, jdir := deferredQueue(t, 3)
	s.stop()
	lines := s.replay()
	var bodyGone, recordGone string
	var corruptSeq uint64
	for _, l := range lines {
		if l["type"] != "Deferred" {
			continue
		}
		env := fmt.Sprint(l["envelope"])
		parent, _, _ := strings.Cut(env, ".")
		switch {
		case recordGone == "":
			recordGone, corruptSeq = env, uint64(l["seq"].(float64))
		case bodyGone == "" && !strings.HasPrefix(recordGone, parent):
			bodyGone = parent
		}
	}
	if recordGone == "" || bodyGone == "" {
		t.Fatalf("no deferred envelopes to damage:\n%v", types(lines))
	}
	corruptRecord(t, jdir, corruptSeq)
	db, err := pebble.Open(jdir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Delete([]byte("r/"+bodyGone), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()

	if _, _, code := s.mta("", "replay", "--verify"); code != 1 {
		t.Fatalf("replay --verify before repair: exit %d", code)
	}
	out, errs, code := s.mta("", "journal", "repair")
	noTrace(t, "journal repair", out+errs)
	if code != 0 {
		t.Fatalf("journal repair: exit %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{fmt.Sprintf("record %d unreadable", corruptSeq), "envelope " + recordGone + " lost", "envelope " + bodyGone + ".1 lost", "DSN", "journal.damaged-"} {
		if !strings.Contains(out, want) {
			t.Fatalf("repair output lacks %q:\n%s", want, out)
		}
	}
	saved, _ := filepath.Glob(filepath.Join(s.dir, "data", "journal.damaged-*"))
	if len(saved) != 1 {
		t.Fatalf("damaged copy: %v", saved)
	}
	if out, _, code := s.mta("", "replay", "--verify"); code != 0 {
		t.Fatalf("replay --verify after repair: exit %d\n%s", code, out)
	}
	// The record stays at its sequence number, as RecordLost.
	after := s.replay()
	if len(after) < len(lines) {
		t.Fatalf("%d events after repair, %d before", len(after), len(lines))
	}
	if got := after[corruptSeq-1]; got["type"] != "RecordLost" || fmt.Sprint(got["envelope"]) != recordGone {
		t.Fatalf("event %d after repair: %v", corruptSeq, got)
	}
	q := s.queue()
	dsns := 0
	for _, e := range q.Envelopes {
		if e.ID == recordGone || e.ID == bodyGone+".1" {
			t.Errorf("lost envelope %s is still queued (%s)", e.ID, e.State)
		}
		if e.Sender == "" && len(e.Recipients) == 1 && e.Recipients[0] == "alice@example.test" {
			dsns++
		}
	}
	if dsns != 2 || q.Counts["lost"] != 2 {
		t.Fatalf("after repair: %d DSNs queued to the sender, counts %v", dsns, q.Counts)
	}
	// A sound journal is left alone.
	if out, _, code := s.mta("", "journal", "repair"); code != 0 || !strings.Contains(out, "sound") {
		t.Fatalf("second repair: exit %d\n%s", code, out)
	}
	s.start()
	s.stop()
}
