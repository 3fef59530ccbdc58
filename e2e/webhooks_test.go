package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hookServer is a webhook receiver in Python's standard library: it fails
// the first FAILS requests and any request while FAILFILE exists (500),
// checks each signature and logs every request as a JSON line.
const hookServer = `
import hashlib, hmac, http.server, json, os, sys, time
port, secret, fails, failfile, logpath = int(sys.argv[1]), sys.argv[2].encode(), [int(sys.argv[3])], sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sig = self.headers.get("X-Ledgermail-Signature", "")
        parts = dict(p.split("=", 1) for p in sig.split(",") if "=" in p)
        want = hmac.new(secret, (parts.get("t", "") + ".").encode() + body, hashlib.sha256).hexdigest()
        ok = fails[0] <= 0 and not os.path.exists(failfile)
        if fails[0] > 0:
            fails[0] -= 1
        with open(logpath, "a") as f:
            f.write(json.dumps({"at": time.time(), "status": 200 if ok else 500, "sig_ok": hmac.compare_digest(want, parts.get("sha256", "")),
                                "event": json.loads(body)}) + "\n")
        self.send_response(200 if ok else 500)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
`

type hookHit struct {
	At     float64        `json:"at"`
	Status int            `json:"status"`
	SigOK  bool           `json:"sig_ok"`
	Event  map[string]any `json:"event"`
}

func hookHits(t *testing.T, path string) []hookHit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []hookHit
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var h hookHit
		if json.Unmarshal(sc.Bytes(), &h) == nil {
			out = append(out, h)
		}
	}
	return out
}

// delivered returns the successful hits for Delivered events of envelope
// id's family.
func deliveredHits(hits []hookHit, id string) (ok, tries []hookHit) {
	for _, h := range hits {
		env := fmt.Sprint(h.Event["envelope"])
		if h.Event["type"] == "Delivered" && strings.HasPrefix(env, id) {
			tries = append(tries, h)
			if h.Status == 200 {
				ok = append(ok, h)
			}
		}
	}
	return ok, tries
}

// Delivery webhooks: signed, retried with backoff (the first retry within
// 5 s), and at least once across a kill -9 (the cursor is durable).
func TestDeliveryWebhooks(t *testing.T) {
	need(t, "python3")
	dir := t.TempDir()
	hookAddr := freePort(t)
	_, port, _ := strings.Cut(hookAddr, ":")
	failFile, logPath := filepath.Join(dir, "fail"), filepath.Join(dir, "hits.jsonl")
	hs := exec.Command("python3", "-c", hookServer, port, "s3cret", "2", failFile, logPath)
	if err := hs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hs.Process.Kill(); hs.Wait() })
	waitFor(t, "the webhook receiver", 10*time.Second, func() bool { return canConnect(hookAddr) })

	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.rewrite(func(cfg string) string {
		return strings.Replace(cfg, "[submission]", fmt.Sprintf("[[webhooks]]\nurl = \"http://%s/hook\"\nsecret = \"s3cret\"\n\n[submission]", hookAddr), 1)
	})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	a := s.submit(t, "alice@example.test", "bob@dest.test")
	waitFor(t, "the Delivered webhook, after two failures", 30*time.Second, func() bool {
		ok, _ := deliveredHits(hookHits(t, logPath), a)
		return len(ok) == 1
	})
	ok, tries := deliveredHits(hookHits(t, logPath), a)
	if len(tries) != 3 || !ok[0].SigOK || ok[0].Event["seq"] == nil {
		t.Fatalf("tries %+v", tries)
	}
	if d := tries[1].At - tries[0].At; d > 5 {
		t.Errorf("first retry after %.1f s", d)
	}

	// The endpoint is down when B is delivered, and the server is killed:
	// after the restart B's event still arrives.
	os.WriteFile(failFile, nil, 0o644)
	b := s.submit(t, "alice@example.test", "carol@dest.test")
	waitDelivered(t, sk, s, "B at the sink", 2)
	waitFor(t, "a failed try for B", 30*time.Second, func() bool {
		_, tries := deliveredHits(hookHits(t, logPath), b)
		return len(tries) >= 1
	})
	s.kill()
	os.Remove(failFile)
	s.start()
	waitFor(t, "B's webhook after the kill -9", 30*time.Second, func() bool {
		ok, _ := deliveredHits(hookHits(t, logPath), b)
		return len(ok) >= 1
	})
	if ok, _ := deliveredHits(hookHits(t, logPath), a); len(ok) > 2 {
		t.Errorf("A's event repeated %d times", len(ok))
	}
	resp := s.adminGet("GET", "/healthz")
	defer resp.Body.Close()
	body := make([]byte, 512)
	n, _ := resp.Body.Read(body)
	if !strings.Contains(string(body[:n]), "webhook http://"+hookAddr+"/hook lag") {
		t.Errorf("/healthz: %q", body[:n])
	}
}
