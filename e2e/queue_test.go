package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// mta queue retry / delete, against the running server (admin API) and
// offline (journal), each journaling an operator event.
func TestQueueRetryAndDelete(t *testing.T) {
	sinkAddr := freePort(t)
	s := newServer(t, serverOpts{smarthost: sinkAddr, retry: `"1h"`})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	keep := s.submit(t, "alice@example.test", "keep@dest.test")
	drop := s.submit(t, "alice@example.test", "drop@dest.test")
	offline := s.submit(t, "alice@example.test", "offline@dest.test")
	waitFor(t, "three deferred envelopes", 20*time.Second, func() bool { return s.queue().Counts["deferred"] == 3 })

	// mailq-style listing names each envelope, its sender, recipient and error.
	out, _, code := s.mta("", "queue")
	if code != 0 || !strings.Contains(out, keep+".1") || !strings.Contains(out, "keep@dest.test") || !strings.Contains(out, "refused") {
		t.Fatalf("mta queue: exit %d\n%s", code, out)
	}

	// queue show: the state and whole history, children included; the same
	// through the admin API's /envelopes/{id}.
	out, _, code = s.mta("", "queue", "show", keep)
	if code != 0 || !strings.Contains(out, "child "+keep+".1: deferred") || !strings.Contains(out, "Received") || !strings.Contains(out, "Deferred") {
		t.Fatalf("queue show: exit %d\n%s", code, out)
	}
	resp := s.adminGet("GET", "/envelopes/"+keep)
	var env struct {
		Envelope struct{ ID, State string }
		Events   []map[string]any
	}
	json.NewDecoder(resp.Body).Decode(&env)
	resp.Body.Close()
	if env.Envelope.ID != keep || env.Envelope.State != "split" || len(env.Events) < 5 {
		t.Fatalf("/envelopes/%s: %+v", keep, env)
	}

	// Online delete: journaled, gone from the queue, no bounce.
	if out, errs, code := s.mta("", "queue", "delete", drop); code != 0 || !strings.Contains(out, "1 envelope") {
		t.Fatalf("queue delete: exit %d %s %s", code, out, errs)
	}
	// Online retry with the smarthost back: delivered now, not in an hour.
	sk := startSink(t, sinkAddr)
	if out, errs, code := s.mta("", "queue", "retry", keep); code != 0 {
		t.Fatalf("queue retry: exit %d %s %s", code, out, errs)
	}
	waitFor(t, "the retried envelope", 20*time.Second, func() bool { return len(sk.messages(t)) == 1 && s.queue().Counts["delivered"] == 1 })

	// Offline retry: the server is stopped; the event waits in the journal.
	s.stop()
	if out, errs, code := s.mta("", "queue", "retry", "--all"); code != 0 || !strings.Contains(out, "1 envelope") {
		t.Fatalf("offline retry --all: exit %d %s %s", code, out, errs)
	}
	if out, _, code := s.mta("", "queue", "show", offline, "--json"); code != 0 || !strings.Contains(out, `"RetryRequested"`) {
		t.Fatalf("offline queue show --json: exit %d\n%s", code, out)
	}
	s.start()
	waitDelivered(t, sk, s, "the offline-retried envelope", 2)
	q := s.queue()
	if q.Counts["deleted"] != 1 || q.Counts["delivered"] != 2 || q.Counts["bounced"] != 0 {
		t.Fatalf("counts %v", q.Counts)
	}
	hist := strings.Join(types(s.replay("--envelope", drop)), " ")
	if !strings.HasSuffix(hist, "Deleted") || strings.Contains(hist, "Bounced") {
		t.Errorf("deleted envelope: %s", hist)
	}
	hist = strings.Join(types(s.replay("--envelope", offline)), " ")
	if !strings.Contains(hist, "RetryRequested") || !strings.HasSuffix(hist, "Delivered") {
		t.Errorf("offline retry: %s", hist)
	}
	for _, m := range sk.messages(t) {
		if strings.Contains(m, "drop@dest.test") {
			t.Errorf("deleted envelope was delivered")
		}
	}
	// replay --since: nothing after now, everything since the start.
	if out, _, code := s.mta("", "replay", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); code != 0 || out != "" {
		t.Errorf("replay --since the future: exit %d %q", code, out)
	}
	if n := len(s.replay("--since", "2000-01-01T00:00:00Z")); n != len(s.replay()) || n == 0 {
		t.Errorf("replay --since the past: %d events", n)
	}
	if _, errs, code := s.mta("", "replay", "--since", "yesterday"); code != 2 || !strings.Contains(errs, "RFC 3339") {
		t.Errorf("replay --since yesterday: exit %d %q", code, errs)
	}
	// Errors: unknown ID, bad usage.
	if _, errs, code := s.mta("", "queue", "retry", "NOSUCHID"); code != 1 || !strings.Contains(errs, "no live envelope") {
		t.Errorf("retry of an unknown ID: exit %d %q", code, errs)
	}
	if _, _, code := s.mta("", "queue", "retry"); code != 2 {
		t.Errorf("retry without ID or --all: exit %d, want 2", code)
	}
}

// With queue.keep_bodies = false a deleted envelope's body goes too, online
// and offline.
func TestDeleteDropsBodyWhenNotKept(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t), retry: `"1h"`})
	s.rewrite(func(c string) string { return strings.Replace(c, "[queue]", "[queue]\nkeep_bodies = false", 1) })
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	var ids []string
	for _, to := range []string{"a@dest.test", "b@dest.test"} {
		ids = append(ids, s.submit(t, "alice@example.test", to))
	}
	waitFor(t, "two deferred envelopes", 20*time.Second, func() bool { return s.queue().Counts["deferred"] == 2 })
	if _, errs, code := s.mta("", "queue", "delete", ids[0]); code != 0 {
		t.Fatalf("online delete: %s", errs)
	}
	s.stop()
	has := func(key string) bool {
		db, err := pebble.Open(filepath.Join(s.dir, "data", "journal"), &pebble.Options{Logger: quietLogger{}})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		_, closer, err := db.Get([]byte("r/" + key))
		if err == nil {
			closer.Close()
		}
		return err == nil
	}
	if has(ids[0]) || !has(ids[1]) {
		t.Fatalf("after the online delete: body %s kept=%v, body %s kept=%v", ids[0], has(ids[0]), ids[1], has(ids[1]))
	}
	if _, errs, code := s.mta("", "queue", "delete", ids[1]); code != 0 {
		t.Fatalf("offline delete: %s", errs)
	}
	if has(ids[1]) {
		t.Fatal("body kept after the offline delete")
	}
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
