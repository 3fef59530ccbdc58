package e2e

import (
	"encoding/json"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

type pruneResult struct {
	Records uint64 `json:"records"`
	Segment string `json:"archive_segment"`
	First   uint64 `json:"first_hot_seq"`
}

// prune runs `mta journal prune --json` until the hot journal starts after
// the record that was the head when it was called (the retention period
// must pass first; the server's periodic sweep may do it meanwhile).
func prune(t *testing.T, s *server) pruneResult {
	t.Helper()
	out, errs, code := s.mta("", "journal", "head")
	head, _, ok := strings.Cut(strings.TrimSpace(out), ":")
	headSeq, err := strconv.ParseUint(head, 10, 64)
	if code != 0 || !ok || err != nil {
		t.Fatalf("journal head: exit %d: %s%s", code, out, errs)
	}
	var res pruneResult
	waitFor(t, "the retention sweep to archive through "+head, time.Minute, func() bool {
		out, errs, code := s.mta("", "journal", "prune", "--json")
		if code != 0 {
			t.Fatalf("journal prune: exit %d: %s", code, errs)
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("journal prune --json: %v: %s", err, out)
		}
		return res.First > headSeq
	})
	return res
}

var queueIDRE = regexp.MustCompile(`\(ledgermail\) with \w+ id (\w+)`)

// With retention "1s", three rounds of 3,000 messages leave the data
// directory, but for the archive, no bigger after round 3 than 1.5 times
// its size after round 1 (each measured once the round is delivered and
// swept), and the archive grows by each round's history alone; an
// envelope of round 1 is still replayable, whole, from the archive;
// verification reads through the archive; and it all survives a restart.
func TestRetentionArchivesHistory(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true, extra: "[journal]\nretention = \"1s\"\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	data := filepath.Join(s.dir, "data")
	var sizes, archives []int64
	var first string
	for round := 1; round <= 3; round++ {
		bulk(t, s, "dest.test", 3000)
		waitFor(t, "the round delivered", 3*time.Minute, func() bool {
			return len(sk.messages(t)) == 3000*round && len(s.queue().Envelopes) == 0
		})
		if round == 1 {
			m := queueIDRE.FindStringSubmatch(sk.messages(t)[0])
			if m == nil {
				t.Fatalf("no queue ID in a relayed message")
			}
			first = m[1]
		}
		before := dirSize(t, data)
		prune(t, s)
		if segs, _ := filepath.Glob(filepath.Join(data, "archive", "*.arc.gz")); len(segs) < round {
			t.Fatalf("round %d: %d archive segments", round, len(segs))
		}
		sizes = append(sizes, dirSize(t, data))
		archives = append(archives, dirSize(t, filepath.Join(data, "archive")))
		t.Logf("round %d: data directory %d bytes before its sweep, %d after (archive %d, log and body segments %d, index %d)", round, before, sizes[round-1],
			dirSize(t, filepath.Join(data, "archive")), dirSize(t, filepath.Join(data, "journal", "bodies")),
			dirSize(t, filepath.Join(data, "journal"))-dirSize(t, filepath.Join(data, "journal", "bodies")))
	}
	t.Logf("data directory after each round: %v bytes (of which archive %v)", sizes, archives)
	// The hot journal stays bounded; the archive keeps what left it,
	// compressed, and grows by that alone (about the same per round).
	if hot0, hot2 := sizes[0]-archives[0], sizes[2]-archives[2]; float64(hot2) > 1.5*float64(hot0) {
		t.Fatalf("the data directory without the archive grew from %d to %d bytes over three rounds", hot0, hot2)
	}
	if float64(archives[2]) > 3.3*float64(archives[0]) {
		t.Fatalf("the archive grew from %d to %d bytes over three rounds of the same load", archives[0], archives[2])
	}
	check := func(when string) {
		t.Helper()
		got := strings.Join(types(s.replay("--envelope", first)), " ")
		if !strings.HasPrefix(got, "Received") || !strings.Contains(got, "Delivered") {
			t.Fatalf("%s: replay of %s from the archive: %s", when, first, got)
		}
		if out, errs, code := s.mta("", "replay", "--verify"); code != 0 || !strings.Contains(out, "0 corrupt") {
			t.Fatalf("%s: replay --verify: exit %d\n%s%s", when, code, out, errs)
		}
	}
	check("online")
	s.stop()
	check("offline")
	s.start()
	s.submit(t, "alice@example.test", "after@dest.test")
	waitFor(t, "a message after the restart", 30*time.Second, func() bool { return len(sk.messages(t)) == 9001 })
}
