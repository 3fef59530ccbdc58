package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chromium runs headless Chromium on url with args (--dump-dom,
// --screenshot=...) and returns its standard output.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	profile := t.TempDir()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + profile}
	// No --virtual-time-budget: the overview's live-refresh stream never
	// ends, and Chromium would wait for it; the DOM is dumped at load.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if !strings.Contains(strings.Join(args, " "), "--window-size=") {
		base = append(base, "--window-size=1280,800")
	}
	cmd := exec.CommandContext(ctx, "chromium", append(base, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// tokenProxy serves the admin listener through a reverse proxy that adds
// the admin token to every request, as the console's session cookie would
// after a login (the login itself is tested on the handler).
func tokenProxy(t *testing.T, s *server) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "data", "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("http://" + s.admin)
	p := httputil.NewSingleHostReverseProxy(target)
	inner := p.Director
	p.Director = func(r *http.Request) {
		inner(r)
		r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// The console, loaded by a real browser against a server with real
// traffic: each page's rendered DOM shows what the admin API reports.
// With LEDGERMAIL_SCREENS set (make screens), a screenshot of each page is
// written there.
func TestConsoleInChromium(t *testing.T) {
	need(t, "chromium", "swaks")
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "[[relay.destinations]]\ndomain = \"dest.test\"\nrate = \"600/m\"\nmax_connections = 3"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, s.submit(t, "alice@example.test", fmt.Sprintf("bob%d@dest.test", i),
			"--header", fmt.Sprintf("Subject: console <b>test</b> %d", i)))
	}
	waitDelivered(t, sk, s, "three messages relayed", 3)
	if resp := s.adminGet("POST", "/queue/suspend?domain=paused.test"); resp.StatusCode != 200 {
		t.Fatalf("suspend: %d", resp.StatusCode)
	}
	base := tokenProxy(t, s)

	// Overview: the live count and the chain head the API reports.
	var head struct {
		Seq uint64 `json:"seq"`
	}
	resp := s.adminGet("GET", "/journal/head")
	json.NewDecoder(resp.Body).Decode(&head)
	resp.Body.Close()
	live := len(s.queue().Envelopes)
	dom := chromium(t, "--dump-dom", base+"/")
	for _, want := range []string{fmt.Sprintf(`id="count-live">%d<`, live), fmt.Sprintf(`id="journal-seq">%d<`, head.Seq), "<svg", "accepted <b>3</b>", `src="/static/live.js"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("overview lacks %q:\n%s", want, dom)
		}
	}
	// Destinations: the suspended domain with its resume button.
	dom = chromium(t, "--dump-dom", base+"/destinations")
	if !strings.Contains(dom, `data-domain="paused.test"`) || !strings.Contains(dom, `action="/destinations/paused.test/resume"`) {
		t.Errorf("destinations lacks paused.test and its resume form:\n%s", dom)
	}
	// dest.test's shaping, as the scheduler reports it: no connection in
	// use of its 3, a budget of 10 messages a second.
	if !strings.Contains(dom, `data-domain="dest.test"`) || !strings.Contains(dom, "0 / 3") || !strings.Contains(dom, "10/s, ") {
		t.Errorf("destinations lacks dest.test's connections and rate budget:\n%s", dom)
	}
	// A message's story: every step, the chain verified, the Subject escaped.
	dom = chromium(t, "--dump-dom", base+"/messages/"+ids[1])
	for _, want := range []string{ids[1], "console &lt;b&gt;test&lt;/b&gt; 1", `<span class="ok">verified</span>`,
		"Received", "PoliciesApplied", "Split", "AttemptStarted", "Attempted", "Delivered", "bob1@dest.test", "auth_user: alice"} {
		if !strings.Contains(dom, want) {
			t.Errorf("message page lacks %q:\n%s", want, dom)
		}
	}
	// Search by recipient finds nothing live (all delivered); by ID it
	// lands on the story.
	dom = chromium(t, "--dump-dom", base+"/search?q="+ids[2])
	if !strings.Contains(dom, "Message <span class=\"mono\">"+ids[2]) {
		t.Errorf("search by ID did not open the story:\n%s", dom)
	}
	// A console tab left open (its live stream) does not hold up a
	// SIGTERM: the server stops well before shutdown_grace (30 s).
	req, _ := http.NewRequest("GET", base+"/events", nil)
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if line, err := bufio.NewReader(stream.Body).ReadString('\n'); err != nil || !strings.HasPrefix(line, "event: counts") {
		t.Fatalf("live stream: %q %v", line, err)
	}
	start := time.Now()
	s.stop()
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("SIGTERM with a live stream open took %s", took)
	}
	s.start()
	if dir := os.Getenv("LEDGERMAIL_SCREENS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, path := range map[string]string{"overview": "/", "destinations": "/destinations", "search": "/search?q=dest.test", "message": "/messages/" + ids[0],
			"message-phone": "/messages/" + ids[0], "overview-phone": "/"} {
			abs, _ := filepath.Abs(filepath.Join(dir, name+".png"))
			size := "--window-size=1280,800"
			if strings.HasSuffix(name, "-phone") {
				size = "--window-size=390,844"
			}
			chromium(t, "--screenshot="+abs, size, base+path)
			if st, err := os.Stat(abs); err != nil || st.Size() == 0 {
				t.Errorf("screenshot %s: %v", abs, err)
			}
		}
	}
}
