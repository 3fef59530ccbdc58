package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
	"github.com/ledgermail/ledgermail/scaleout/etcdtest"
)

var (
	clusterBinOnce sync.Once
	clusterBin     string
	clusterBinErr  error
)

// mtaWithoutRace builds the mta binary without -race for the cluster's
// tests: protoactor-go's cluster package has data races of its own (see
// scaleout/node_test.go), which a -race binary would report as ours.
func mtaWithoutRace(t *testing.T) string {
	t.Helper()
	clusterBinOnce.Do(func() {
		clusterBin = filepath.Join(filepath.Dir(mtaBin), "mta-norace")
		out, err := exec.Command("go", "build", "-o", clusterBin, "../cmd/mta").CombinedOutput()
		if err != nil {
			clusterBinErr = fmt.Errorf("build mta without -race: %v\n%s", err, out)
		}
	})
	if clusterBinErr != nil {
		t.Fatal(clusterBinErr)
	}
	return clusterBin
}

type clusterStatusJSON struct {
	Self    string `json:"self"`
	EtcdUp  bool   `json:"etcd_up"`
	Members []struct {
		Name          string `json:"name"`
		Address       string `json:"address"`
		Alive         bool   `json:"alive"`
		LiveEnvelopes int    `json:"live_envelopes"`
	} `json:"members"`
}

func (s *server) clusterStatus() (clusterStatusJSON, error) {
	var st clusterStatusJSON
	resp := s.adminGet("GET", "/cluster")
	if resp == nil {
		return st, fmt.Errorf("no answer")
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return st, json.Unmarshal(b, &st)
}

// clusterNode starts one node of a cluster: MX relay through dnsAddr to
// port, slow.test limited to 2 connections, [cluster] on etcd.
func clusterNode(t *testing.T, name, etcd, dnsAddr, port string) *server {
	return clusterNodeWith(t, name, etcd, dnsAddr, port, `"1s"`, `
[[relay.destinations]]
domain = "slow.test"
max_connections = 2`)
}

// clusterNodeWith starts a node with the given retry schedule and
// [[relay.destinations]] ("" for none: every destination on the defaults).
func clusterNodeWith(t *testing.T, name, etcd, dnsAddr, port, retry, dests string) *server {
	s := newServer(t, serverOpts{trusted: true, retry: retry, relay: `mode = "mx"
dns_servers = ["` + dnsAddr + `"]
mx_port = ` + port + `
command_timeout = "60s"
data_timeout = "60s"` + dests, extra: fmt.Sprintf(`[cluster]
name = %q
etcd = [%q]
advertise = %q
lease_ttl = "2s"`, name, etcd, freePort(t))})
	s.bin = mtaWithoutRace(t)
	s.start()
	return s
}

// Three nodes on one etcd share slow.test's max_connections = 2: with
// messages submitted to every node at once, the destination never sees
// more than 2 connections. One node is killed with -9 under that load and
// started again: every acknowledged message still arrives, and the limit
// held throughout. `mta cluster status` lists the three nodes.
func TestClusterSharesDestinationLimit(t *testing.T) {
	need(t, "etcd", "python3")
	e := etcdtest.Start(t)
	port := freePort(t)[len("127.0.0.1:"):]
	slow, err := mxtest.Start(mxtest.Script{DataDelay: 200 * time.Millisecond}, "127.0.0.2:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(slow.Close)
	dnsAddr := startDNS(t, map[string][]string{
		"slow.test.":    {"slow.test. 60 IN MX 10 mx.slow.test."},
		"mx.slow.test.": {"mx.slow.test. 60 IN A 127.0.0.2"},
	})
	names := []string{"a", "b", "c"}
	nodes := map[string]*server{}
	for _, n := range names {
		nodes[n] = clusterNode(t, n, e.Endpoint, dnsAddr, port)
	}
	waitFor(t, "every node to see three live members", 30*time.Second, func() bool {
		for _, s := range nodes {
			st, err := s.clusterStatus()
			if err != nil || len(st.Members) != 3 {
				return false
			}
			for _, m := range st.Members {
				if !m.Alive {
					return false
				}
			}
		}
		return true
	})
	t0 := time.Now()
	out, _, code := nodes["a"].mta("", "cluster", "status")
	if code != 0 || !strings.Contains(out, "b ") || !strings.Contains(out, "etcd reachable") {
		t.Fatalf("mta cluster status (exit %d):\n%s", code, out)
	}

	// 40 messages on each node, submitted at once.
	const per = 40
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func(n string) {
			defer wg.Done()
			bulkTagged(t, nodes[n], "slow.test", per, n)
		}(n)
	}
	wg.Wait()
	t.Logf("submitted after %s", time.Since(t0))
	// Under load, b dies and comes back.
	waitFor(t, "deliveries to be under way", 30*time.Second, func() bool { return len(slow.Messages()) >= 15 })
	nodes["b"].kill()
	nodes["b"].start()
	t.Logf("b restarted after %s, %d delivered", time.Since(t0), len(slow.Messages()))

	want := map[string]bool{}
	for _, n := range names {
		for i := 0; i < per; i++ {
			want[fmt.Sprintf("Subject: bulk %s%d", n, i)] = true
		}
	}
	missing := func() []string {
		got := map[string]bool{}
		for _, m := range slow.Messages() {
			for _, l := range strings.Split(m, "\r\n") {
				if strings.HasPrefix(l, "Subject: bulk ") {
					got[l] = true
				}
			}
		}
		var out []string
		for w := range want {
			if !got[w] {
				out = append(out, w)
			}
		}
		return out
	}
	waitFor(t, "every acknowledged message at the destination", 120*time.Second, func() bool { return len(missing()) == 0 })
	t.Logf("all delivered after %s", time.Since(t0))
	if peak := slow.MaxConcurrent(); peak > 2 {
		t.Fatalf("slow.test saw %d connections at once; the cluster's limit is 2", peak)
	} else if peak < 2 {
		t.Fatalf("slow.test saw at most %d connection at once: the limit of 2 was never used, so it was not tested", peak)
	}
	waitFor(t, "every node's queue to be empty", 30*time.Second, func() bool {
		st, err := nodes["c"].clusterStatus()
		if err != nil || len(st.Members) != 3 {
			return false
		}
		for _, m := range st.Members {
			if !m.Alive || m.LiveEnvelopes != 0 {
				return false
			}
		}
		return true
	})
	t.Logf("%d transactions for %d messages (a kill -9 may repeat one in flight); %d connections in all",
		len(slow.Messages()), len(want), slow.Connections())
	if os.Getenv("LEDGERMAIL_KEEP") != "" {
		t.Log(nodes["a"].logText())
	}
}

// waitMembers waits until every node sees n live members.
func waitMembers(t *testing.T, nodes []*server, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("every node to see %d live members", n), 30*time.Second, func() bool {
		for _, s := range nodes {
			st, err := s.clusterStatus()
			if err != nil || len(st.Members) != n {
				return false
			}
			for _, m := range st.Members {
				if !m.Alive {
					return false
				}
			}
		}
		return true
	})
}

// subjects counts the "Subject: bulk ..." lines of the stored messages.
func subjects(msgs []string) map[string]int {
	got := map[string]int{}
	for _, m := range msgs {
		for _, l := range strings.Split(m, "\r\n") {
			if strings.HasPrefix(l, "Subject: bulk ") {
				got[l]++
			}
		}
	}
	return got
}

// destinationUp starts later.test's MX on port, waits until all n
// messages have arrived and the nodes' queues are empty, and checks that
// each arrived once.
func destinationUp(t *testing.T, port string, n int, nodes ...*server) *mxtest.Peer {
	t.Helper()
	sink, err := mxtest.Start(mxtest.Script{}, "127.0.0.2:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	waitFor(t, "every message at the destination", 90*time.Second, func() bool { return len(subjects(sink.Messages())) == n })
	waitFor(t, "the nodes' queues to be empty", 30*time.Second, func() bool {
		for _, s := range nodes {
			if len(s.queue().Envelopes) != 0 {
				return false
			}
		}
		return true
	})
	for subj, k := range subjects(sink.Messages()) {
		if k != 1 {
			t.Errorf("%s arrived %d times", subj, k)
		}
	}
	return sink
}

// mta drain on a node whose destination is down hands every deferred
// envelope to the other two: afterwards its queue is empty, and once the
// destination is up each message arrives exactly once, from the other
// nodes. Replay shows the handoff on both sides.
func TestDrainHandsTheQueueToPeers(t *testing.T) {
	need(t, "etcd", "python3")
	e := etcdtest.Start(t)
	port := freePort(t)[len("127.0.0.1:"):]
	dnsAddr := startDNS(t, map[string][]string{
		"later.test.":    {"later.test. 60 IN MX 10 mx.later.test."},
		"mx.later.test.": {"mx.later.test. 60 IN A 127.0.0.2"},
	})
	a := clusterNodeWith(t, "a", e.Endpoint, dnsAddr, port, `"2s"`, "")
	b := clusterNodeWith(t, "b", e.Endpoint, dnsAddr, port, `"2s"`, "")
	c := clusterNodeWith(t, "c", e.Endpoint, dnsAddr, port, `"2s"`, "")
	waitMembers(t, []*server{a, b, c}, 3)

	const n = 30
	bulkTagged(t, a, "later.test", n, "d")
	waitFor(t, "a's envelopes to be deferred (the destination is down)", 30*time.Second, func() bool {
		return a.queue().Counts["deferred"] == n
	})
	out, errs, code := a.mta("", "drain", "--timeout", "2m")
	if code != 0 || !strings.Contains(out, "drained") {
		t.Fatalf("mta drain: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "to b") || !strings.Contains(out, "to c") {
		t.Fatalf("the queue did not go to both peers:\n%s", out)
	}
	if q := a.queue(); len(q.Envelopes) != 0 {
		t.Fatalf("a's queue after the drain: %+v", q.Counts)
	}
	if canConnect(a.sub) {
		t.Fatal("a drained node still accepts SMTP connections")
	}
	// Nor from its maildrop: what cron drops now waits for the node's next
	// run (three of the ingester's 1 s rounds pass without taking it).
	if code, out := sendmailPipe(t, mtaBin, "Subject: after the drain\n\nbody\n", "sendmail", "-c", a.config, "late@dest.test"); code != 0 {
		t.Fatalf("sendmail on the drained node: exit %d %s", code, out)
	}
	time.Sleep(3 * time.Second)
	if files, _ := filepath.Glob(filepath.Join(a.dir, "data", "maildrop", "*.msg")); len(files) != 1 {
		t.Fatalf("a drained node's maildrop holds %v, want the late message waiting", files)
	}
	if q := a.queue(); len(q.Envelopes) != 0 {
		t.Fatalf("a drained node queued from its maildrop: %+v", q.Counts)
	}

	sink := destinationUp(t, port, n, b, c)
	if len(sink.Messages()) != n {
		t.Fatalf("%d transactions for %d messages", len(sink.Messages()), n)
	}

	// The handoff, on both sides, for one envelope.
	var id string
	for _, l := range a.replay() {
		if l["type"] == "TransferredOut" {
			id, _ = l["envelope"].(string)
			break
		}
	}
	if id == "" {
		t.Fatalf("no TransferredOut in a's journal")
	}
	if got := strings.Join(types(a.replay("--envelope", id)), " "); !strings.Contains(got, "TransferStarted TransferredOut") ||
		strings.Contains(got, "Delivered") {
		t.Fatalf("a's story of %s: %s", id, got)
	}
	peerStory := strings.Join(types(b.replay("--envelope", id)), " ") + " | " + strings.Join(types(c.replay("--envelope", id)), " ")
	if !strings.Contains(peerStory, "TransferredIn") || !strings.Contains(peerStory, "Delivered") {
		t.Fatalf("the peers' story of %s: %s", id, peerStory)
	}
}

// A kill -9 of the draining node in the middle of its transfers loses
// nothing and delivers nothing twice: after the restart, each transfer
// left open is resolved by asking its peer (TransferredOut if the peer has
// the envelope, TransferAborted and a delivery from here if not).
func TestDrainSurvivesKillOfTheOrigin(t *testing.T) {
	need(t, "etcd", "python3")
	e := etcdtest.Start(t)
	port := freePort(t)[len("127.0.0.1:"):]
	dnsAddr := startDNS(t, map[string][]string{
		"later.test.":    {"later.test. 60 IN MX 10 mx.later.test."},
		"mx.later.test.": {"mx.later.test. 60 IN A 127.0.0.2"},
	})
	a := clusterNodeWith(t, "a", e.Endpoint, dnsAddr, port, `"2s"`, "")
	b := clusterNodeWith(t, "b", e.Endpoint, dnsAddr, port, `"2s"`, "")
	waitMembers(t, []*server{a, b}, 2)

	const n = 150
	bulkTagged(t, a, "later.test", n, "k")
	waitFor(t, "a's envelopes to be deferred (the destination is down)", 60*time.Second, func() bool {
		return a.queue().Counts["deferred"] == n
	})
	drained := make(chan string, 1)
	go func() {
		out, errs, _ := a.mta("", "drain", "--timeout", "2m")
		drained <- out + errs
	}()
	waitFor(t, "the drain to be under way", 60*time.Second, func() bool {
		return strings.Count(a.logText(), "envelope transferred out") >= 10
	})
	a.kill()
	<-drained // the server went away under it
	if strings.Count(a.logText(), "envelope transferred out") >= n {
		t.Fatal("the drain finished before the kill: nothing was tested")
	}
	a.start()
	waitMembers(t, []*server{a, b}, 2)

	sink := destinationUp(t, port, n, a, b)
	// Every transfer the kill interrupted was resolved one way or the other.
	last := map[string]string{}
	for _, l := range a.replay() {
		switch typ := fmt.Sprint(l["type"]); typ {
		case "TransferStarted", "TransferredOut", "TransferAborted":
			last[fmt.Sprint(l["envelope"])] = typ
		}
	}
	count := map[string]int{}
	for id, typ := range last {
		if typ == "TransferStarted" {
			t.Errorf("envelope %s: TransferStarted without an outcome", id)
		}
		count[typ]++
	}
	if count["TransferredOut"] == 0 {
		t.Fatal("no envelope was transferred before the kill")
	}
	t.Logf("%d transactions for %d messages; transfers: %v", len(sink.Messages()), n, count)
}
