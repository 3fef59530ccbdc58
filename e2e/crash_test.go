package e2e

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// loadScript submits messages over several sessions (trusted loopback, no
// AUTH) and prints "OK token id" for every 250, "NO token reply" otherwise.
// A refused connection (the server is down) ends that session's share.
const loadScript = `
import smtplib, sys, threading, re
host, port, prefix, n, sessions, bad = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
out, lock = [], threading.Lock()
def say(s):
    with lock:
        out.append(s)
def worker(k):
    s = None
    for i in range(k, n, sessions):
        tok = "%s-%d" % (prefix, i)
        rcpt = ("bad%d@dest.test" if bad and i % bad == 0 else "r%d@dest.test") % i
        try:
            if s is None:
                s = smtplib.SMTP(host, port, timeout=30)
                s.ehlo("load.test")
            s.mail("load@example.test")
            s.rcpt(rcpt)
            code, msg = s.data(("Subject: %s\r\n\r\ntoken %s\r\n" % (tok, tok)).encode())
            m = re.search(r"queued as (\S+)", msg.decode())
            if code == 250 and m:
                say("OK %s %s" % (tok, m.group(1)))
            else:
                say("NO %s %d" % (tok, code))
        except smtplib.SMTPResponseException as e:
            say("NO %s %d" % (tok, e.smtp_code))
            try:
                s.rset()
            except Exception:
                s = None
        except Exception as e:
            say("NO %s %s" % (tok, type(e).__name__))
            s = None
            if isinstance(e, ConnectionRefusedError):
                return
ts = [threading.Thread(target=worker, args=(k,)) for k in range(sessions)]
for t in ts: t.start()
for t in ts: t.join()
print("\n".join(out))
`

type crashTrial struct {
	t      *testing.T
	rng    *rand.Rand
	s      *server
	hop    string // the next hop's address (static smarthost)
	data   string
	tmpfs  bool
	acked  map[string]string // token -> envelope ID that got a 250
	faults []string
	// peerMsgs are the messages the misbehaving next hop accepted.
	peerMsgs []string
}

// crashTrials is how many randomized trials TestCrashCampaign runs:
// LEDGERMAIL_CRASH_TRIALS (make crashtest: 100), else 3.
func crashTrials() int {
	if n, err := strconv.Atoi(os.Getenv("LEDGERMAIL_CRASH_TRIALS")); err == nil && n > 0 {
		return n
	}
	return 3
}

// TestCrashCampaign runs randomized trials against the real binary under
// submission and delivery load, each mixing kill -9 at a random moment
// (during DATA, group commits, deliveries, start-up replay), SIGTERM, a
// full disk (as root) and a next hop that answers 4xx, 5xx, hangs or drops
// the connection; then it checks that every message that got a 250 reached
// the sink or bounced with a DSN, that `replay --verify` passes and that no
// panic trace was logged. Seed: LEDGERMAIL_CRASH_SEED.
func TestCrashCampaign(t *testing.T) {
	need(t, "python3", "smtp-sink")
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("LEDGERMAIL_CRASH_SEED"), 10, 64); err == nil {
		seed = v
	}
	n := crashTrials()
	t.Logf("crash campaign: %d trials, seed %d (LEDGERMAIL_CRASH_SEED=%d to repeat)", n, seed, seed)
	counts := map[string]int{}
	var acked, dups int
	for i := 0; i < n; i++ {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		var tr *crashTrial
		ok := t.Run(fmt.Sprintf("trial-%d", i), func(t *testing.T) {
			tr = &crashTrial{t: t, rng: rng, acked: map[string]string{}}
			d := tr.run()
			dups += d
			t.Logf("faults %v: %d acknowledged, %d duplicates", tr.faults, len(tr.acked), d)
		})
		if tr != nil {
			for _, f := range tr.faults {
				counts[f]++
			}
			acked += len(tr.acked)
		}
		if !ok {
			t.Fatalf("trial %d failed (seed %d)", i, seed)
		}
	}
	t.Logf("crash campaign: %d trials, %d messages acknowledged, all accounted for; %d duplicates at the sink; faults: %v", n, acked, dups, counts)
	fmt.Printf("crashtest: %d trials passed, %d messages acknowledged, %d duplicates, faults %v\n", n, acked, dups, counts)
}

func (c *crashTrial) run() int {
	t := c.t
	dir := t.TempDir()
	if os.Geteuid() == 0 && c.rng.IntN(3) == 0 {
		tmpfsDataDir(t, dir, "64m")
		c.tmpfs = true
	}
	c.data = filepath.Join(dir, "data")
	c.hop = freePort(t)
	c.s = newServer(t, serverOpts{dir: dir, trusted: true, relay: fmt.Sprintf("mode = \"static\"\nsmarthost = %q\nconnect_timeout = \"2s\"\ncommand_timeout = \"2s\"\ndata_timeout = \"2s\"", c.hop),
		extra: "[journal]\nmin_free = \"8MiB\"\n[limits]\nmax_connections = 200\n"})
	// The next hop misbehaves until the faults are over.
	modes := []string{"sink", "4xx", "5xx", "hang", "drop"}
	mode := modes[c.rng.IntN(len(modes))]
	c.faults = append(c.faults, "hop-"+mode)
	var sk *sink
	var peer *mxtest.Peer
	bad := 0
	switch mode {
	case "sink":
		sk = startSink(t, c.hop)
	case "4xx":
		peer = c.peer(mxtest.Script{DataEnd: "451 4.3.0 try again later"})
	case "5xx":
		bad = 3
		rc := map[string]string{}
		for i := 0; i < 200; i += bad {
			rc[fmt.Sprintf("bad%d@dest.test", i)] = "550 5.1.1 no such user"
		}
		peer = c.peer(mxtest.Script{Rcpt: rc})
	case "hang":
		peer = c.peer(mxtest.Script{DataDelay: 3 * time.Second})
	case "drop":
		peer = c.peer(mxtest.Script{DropMidData: true})
	}
	c.s.start()
	for round := 0; round < 2; round++ {
		c.fault(round, bad)
	}
	// Healthy again: a real sink on the same address; everything must
	// drain.
	if peer != nil {
		peer.Close()
		if mode != "hang" {
			// A scripted peer accepts what its script does not refuse.
			// (The hanging one records each message after the relay has
			// given up on its reply: not deliveries.)
			c.peerMsgs = peer.Messages()
		}
		sk = startSink(t, c.hop)
	}
	if c.s.cmd == nil {
		c.s.start()
	}
	c.waitQuiet()
	c.s.stop()
	return c.check(sk)
}

func (c *crashTrial) peer(s mxtest.Script) *mxtest.Peer {
	p, err := mxtest.Start(s, c.hop)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(p.Close)
	return p
}

// fault runs one load with one fault in it.
func (c *crashTrial) fault(round, bad int) {
	t := c.t
	if c.s.cmd == nil {
		c.s.start()
	}
	kinds := []string{"kill9-load", "sigterm-load", "kill9-startup"}
	if c.tmpfs {
		kinds = append(kinds, "disk-full")
	}
	kind := kinds[c.rng.IntN(len(kinds))]
	c.faults = append(c.faults, kind)
	host, port, _ := strings.Cut(c.s.sub, ":")
	load := exec.Command("python3", "-c", loadScript, host, port, fmt.Sprintf("t%d", round), "60", "4", strconv.Itoa(bad))
	outPipe, _ := load.StdoutPipe()
	load.Stderr = os.Stderr
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	delay := time.Duration(150+c.rng.IntN(1500)) * time.Millisecond
	var filler string
	switch kind {
	case "kill9-load":
		time.Sleep(delay) // a random moment, not a synchronisation
		c.s.kill()
	case "sigterm-load":
		time.Sleep(delay)
		c.s.stop()
	case "disk-full":
		time.Sleep(delay)
		filler = filepath.Join(c.data, "filler")
		fill(t, filler, int64(c.rng.IntN(6<<20)))
	case "kill9-startup":
		time.Sleep(delay)
		c.s.kill()
	}
	sc := bufio.NewScanner(outPipe)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "OK" {
			c.acked[f[1]] = f[2]
		}
	}
	load.Wait()
	if filler != "" {
		os.Remove(filler)
		if c.s.cmd != nil {
			select {
			case <-c.s.waitDone: // the journal failed on the full disk: fail-stop
				c.s.cmd = nil
			default:
			}
		}
	}
	if kind == "kill9-startup" {
		// Restart and kill again while it replays the journal.
		c.s.startNoWait()
		time.Sleep(time.Duration(c.rng.IntN(400)) * time.Millisecond)
		c.s.kill()
	}
}

// waitQuiet waits until the queue is empty.
func (c *crashTrial) waitQuiet() {
	waitFor(c.t, "the queue to drain", 90*time.Second, func() bool {
		select {
		case err := <-c.s.waitDone:
			b, _ := os.ReadFile(c.s.logFile)
			c.t.Fatalf("mta serve exited (%v):\n%s", err, b)
		default:
		}
		return len(c.s.queue().Envelopes) == 0
	})
}

// check verifies the invariants and returns the duplicates at the sink.
func (c *crashTrial) check(sk *sink) int {
	t := c.t
	out, _, code := c.s.mta("", "replay", "--verify")
	if code != 0 {
		t.Fatalf("replay --verify: exit %d\n%s", code, out)
	}
	for _, f := range c.s.logFiles {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), "goroutine ") || strings.Contains(string(b), "panic:") {
			t.Fatalf("panic trace in %s:\n%s", f, b)
		}
	}
	final := map[string]string{} // envelope -> last final event type
	dsn := map[string]bool{}
	for _, l := range c.s.replay() {
		env, typ := fmt.Sprint(l["envelope"]), fmt.Sprint(l["type"])
		switch typ {
		case "Delivered", "Bounced", "Expired", "Deleted", "Lost", "Split":
			final[env] = typ
		}
		if typ == "Bounced" && fmt.Sprint(l["dsn"]) != "" && l["dsn"] != nil {
			dsn[env] = true
		}
	}
	atSink := map[string]int{}
	for _, m := range append(sk.messages(t), c.peerMsgs...) {
		for _, line := range strings.Split(m, "\n") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(line), "token "); ok {
				atSink[tok]++
			}
		}
	}
	// A duplicate is allowed only where a kill -9 fell between the next
	// hop's 250 and the journal write: at most one per delivery in flight
	// (max_connections_per_domain, 20) per kill. A SIGTERM drains the
	// deliveries in flight, so it may cause none.
	kills := 0
	for _, f := range c.faults {
		if strings.HasPrefix(f, "kill9") {
			kills++
		}
	}
	defer func() {
		if d := countDups(c.acked, atSink); d > 20*kills {
			t.Fatalf("%d duplicates at the sink after %d kills (faults %v)", d, kills, c.faults)
		}
	}()
	dups := 0
	for tok, id := range c.acked {
		n := atSink[tok]
		if n > 1 {
			dups += n - 1
		}
		if n > 0 {
			continue
		}
		// Not at the sink: it must have bounced with a DSN.
		bounced := false
		for env, typ := range final {
			if (env == id || strings.HasPrefix(env, id+".")) && typ == "Bounced" && dsn[env] {
				bounced = true
			}
		}
		if !bounced {
			hist, _, _ := c.s.mta("", "replay", "--envelope", id)
			t.Fatalf("message %s (envelope %s) got a 250 but neither reached the sink nor bounced with a DSN; faults %v\n%s", tok, id, c.faults, hist)
		}
	}
	return dups
}

func countDups(acked map[string]string, atSink map[string]int) int {
	d := 0
	for tok := range acked {
		if n := atSink[tok]; n > 1 {
			d += n - 1
		}
	}
	return d
}
