// Package e2e builds the real mta binary and drives it with real peers:
// swaks, Python's smtplib and Postfix's smtp-sink. `make test` installs
// them; a missing tool fails the test rather than skipping it.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

var mtaBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ledgermail-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mtaBin = filepath.Join(dir, "mta")
	build := exec.Command("go", "build", "-race", "-o", mtaBin, "../cmd/mta")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build mta:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// need fails the test when a tool the suite depends on is missing.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run `make test` (it installs the test dependencies) or .ci/deps", tool)
		}
	}
}

func init() {
	// smtp-sink lives in /usr/sbin, often not on a user's PATH.
	os.Setenv("PATH", os.Getenv("PATH")+":/usr/sbin:/sbin")
}

// freePort returns a free loopback port below the kernel's ephemeral range
// (32768 and up here): a server restarted on it cannot find it taken by the
// source port of some client connection in the meantime.
func freePort(t *testing.T) string {
	t.Helper()
	for i := 0; i < 1000; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		return addr
	}
	t.Fatal("no free port between 20000 and 32000")
	return ""
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func canConnect(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// sink is a running Postfix smtp-sink storing each transaction as a file.
type sink struct {
	*mxtest.Sink
	addr string
}

func startSink(t *testing.T, addr string) *sink {
	t.Helper()
	need(t, "smtp-sink")
	s, err := mxtest.StartSink(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("smtp-sink output:\n%s", s.Output())
		}
		s.Close()
	})
	return &sink{Sink: s, addr: addr}
}

// messages returns the stored transactions.
func (s *sink) messages(t *testing.T) []string {
	t.Helper()
	m, err := s.Messages()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// server is a running `mta serve`.
type server struct {
	t        *testing.T
	dir      string
	config   string
	sub      string // STARTTLS listener
	subs     string // implicit TLS listener
	admin    string
	http     string // the HTTP submission edge
	cmd      *exec.Cmd
	log      *bytes.Buffer
	logFile  string
	logFiles []string
	waitDone chan error
	bin      string // the mta binary; "" = mtaBin
}

type serverOpts struct {
	smarthost string
	relay     string // the [relay] section's body; default: static to smarthost
	dir       string // base directory; default t.TempDir()
	retry     string // TOML list body, e.g. `"1s"`
	queue     string // more keys of the [queue] section
	trusted   bool   // loopback may submit without TLS or AUTH (trusted_networks)
	extra     string
}

func newServer(t *testing.T, o serverOpts) *server {
	t.Helper()
	dir := o.dir
	if dir == "" {
		dir = t.TempDir()
	}
	s := &server{t: t, dir: dir, sub: freePort(t), subs: freePort(t), admin: freePort(t), http: freePort(t)}
	if o.retry == "" {
		o.retry = `"1s"`
	}
	if o.relay == "" {
		o.relay = fmt.Sprintf("mode = \"static\"\nsmarthost = %q\nconnect_timeout = \"2s\"", o.smarthost)
	}
	cfg := fmt.Sprintf(`hostname = "mta.test"
data_dir = %q
[submission]
listen = [%q]
trusted_networks = [%s]
[submissions]
listen = [%q]
[relay]
%s
[queue]
retry = [%s]
%s
[http]
listen = %q
[admin]
listen = %q
%s
`, filepath.Join(dir, "data"), s.sub, trustedList(o.trusted), s.subs, o.relay, o.retry, o.queue, s.http, s.admin, o.extra)
	s.config = filepath.Join(dir, "mta.toml")
	if err := os.WriteFile(s.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.kill()
		// The binary is built with -race: a race anywhere in a run fails it.
		for _, f := range s.logFiles {
			if b, _ := os.ReadFile(f); strings.Contains(string(b), "WARNING: DATA RACE") {
				t.Errorf("data race reported by mta serve (%s):\n%s", f, b)
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(s.logFile)
			t.Logf("server log:\n%s", b)
		}
	})
	return s
}

func trustedList(on bool) string {
	if on {
		return `"127.0.0.0/8"`
	}
	return ""
}

// dialSMTP connects to addr and reads the banner.
func dialSMTP(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	smtpReply(c, r)
	return c, r
}

// mta runs a CLI subcommand with the server's config.
func (s *server) mta(stdin string, args ...string) (string, string, int) {
	s.t.Helper()
	return s.mtaIn(stdin, append(args, "-c", s.config)...)
}

// mtaRaw runs the binary with exactly these arguments.
func (s *server) mtaRaw(args ...string) (string, string, int) {
	s.t.Helper()
	return s.mtaIn("", args...)
}

func (s *server) mtaIn(stdin string, args ...string) (string, string, int) {
	s.t.Helper()
	// A command that should return but serves instead must not hang the run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mtaBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("run mta %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (s *server) addUser(name, password string, addrs ...string) {
	s.t.Helper()
	// The minimum bcrypt cost keeps AUTH cheap under the race detector.
	args := []string{"users", "add", name, "--password-stdin", "--bcrypt-cost", "4"}
	for _, a := range addrs {
		args = append(args, "--address", a)
	}
	if out, errs, code := s.mta(password+"\n", args...); code != 0 {
		s.t.Fatalf("users add: exit %d: %s %s", code, out, errs)
	}
}

func (s *server) start() {
	s.t.Helper()
	s.startArgs()
}

// startArgs starts `mta serve` with extra flags and waits until it serves.
func (s *server) startArgs(extra ...string) {
	s.t.Helper()
	s.startNoWait(extra...)
	waitFor(s.t, "mta serve to listen", 30*time.Second, func() bool {
		select {
		case err := <-s.waitDone:
			s.cmd = nil // its exit is consumed: cleanup must not wait for it again
			b, _ := os.ReadFile(s.logFile)
			s.t.Fatalf("mta serve exited early (%v):\n%s", err, b)
		default:
		}
		resp, err := http.Get("http://" + s.admin + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		// 401: serving, with [admin] metrics_public = false.
		return (resp.StatusCode == 200 || resp.StatusCode == 401) && canConnect(s.sub)
	})
}

// startNoWait starts `mta serve` with extra flags without waiting for it
// to listen.
func (s *server) startNoWait(extra ...string) {
	s.t.Helper()
	s.logFile = filepath.Join(s.dir, fmt.Sprintf("serve-%d.log", time.Now().UnixNano()))
	s.logFiles = append(s.logFiles, s.logFile)
	f, err := os.Create(s.logFile)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	bin := mtaBin
	if s.bin != "" {
		bin = s.bin
	}
	s.cmd = exec.Command(bin, append([]string{"serve", "-c", s.config}, extra...)...)
	s.cmd.Stdout, s.cmd.Stderr = f, f
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.waitDone = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(s.cmd, s.waitDone)
}

// logText returns what the running (or last) server has logged so far.
func (s *server) logText() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// kill sends SIGKILL (a crash) and waits for the process to be gone.
func (s *server) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.waitDone
	s.cmd = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.waitDone:
		s.cmd = nil // its exit is consumed: the cleanup must not wait for it again
		if err != nil {
			b, _ := os.ReadFile(s.logFile)
			s.t.Fatalf("mta serve exited with %v after SIGTERM:\n%s", err, b)
		}
	case <-time.After(40 * time.Second):
		s.kill()
		b, _ := os.ReadFile(s.logFile)
		s.t.Fatalf("mta serve did not stop within 40s of SIGTERM:\n%s", b)
	}
}

type queueJSON struct {
	Counts    map[string]int `json:"counts"`
	Envelopes []struct {
		ID          string   `json:"id"`
		Parent      string   `json:"parent"`
		State       string   `json:"state"`
		Sender      string   `json:"sender"`
		Recipients  []string `json:"recipients"`
		Attempts    int      `json:"attempts"`
		NextAttempt *string  `json:"next_attempt"`
		LastError   string   `json:"last_error"`
	} `json:"envelopes"`
}

func (s *server) queue() queueJSON {
	s.t.Helper()
	out, errs, code := s.mta("", "queue", "--json")
	if code != 0 {
		s.t.Fatalf("mta queue --json: exit %d: %s", code, errs)
	}
	var q queueJSON
	if err := json.Unmarshal([]byte(out), &q); err != nil {
		s.t.Fatalf("mta queue --json: %v\n%s", err, out)
	}
	return q
}

type replayLine map[string]any

func (s *server) replay(args ...string) []replayLine {
	s.t.Helper()
	out, errs, code := s.mta("", append([]string{"replay", "--json"}, args...)...)
	if code != 0 {
		s.t.Fatalf("mta replay: exit %d: %s", code, errs)
	}
	var lines []replayLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m replayLine
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			s.t.Fatalf("replay line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func types(lines []replayLine) []string {
	var out []string
	for _, l := range lines {
		out = append(out, fmt.Sprint(l["type"]))
	}
	return out
}

// swaks runs swaks and returns its combined output and exit code.
func swaks(t *testing.T, args ...string) (string, int) {
	t.Helper()
	need(t, "swaks")
	cmd := exec.Command("swaks", append([]string{"--timeout", "20"}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// python runs a Python 3 script with arguments; it prints what the test checks.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	need(t, "python3")
	cmd := exec.Command("python3", append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return string(out)
}

// waitDelivered waits until the sink holds n transactions and the server's
// queue is empty: each Delivered event is journaled after the sink's 250,
// which smtp-sink sends once the transaction's file is written.
func waitDelivered(t *testing.T, sk *sink, s *server, what string, n int) {
	t.Helper()
	waitFor(t, what, 60*time.Second, func() bool {
		return len(sk.messages(t)) == n && len(s.queue().Envelopes) == 0
	})
}

// rewrite edits the server's config file before start.
func (s *server) rewrite(edit func(string) string) {
	s.t.Helper()
	b, err := os.ReadFile(s.config)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(s.config, []byte(edit(string(b))), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// submit sends one message as alice (password "secret") with swaks over
// STARTTLS and AUTH PLAIN, fails the test unless it is queued, and returns
// the envelope ID.
func (s *server) submit(t *testing.T, from, to string, extra ...string) string {
	t.Helper()
	args := append([]string{"--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
		"--from", from, "--to", to}, extra...)
	out, code := swaks(t, args...)
	m := queuedRE.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("swaks: exit %d\n%s", code, out)
	}
	return m[1]
}

// adminGet sends an admin API request with the server's token (the one
// generated into the data directory unless the config names one).
func (s *server) adminGet(method, path string) *http.Response {
	s.t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.admin+path, nil)
	if b, err := os.ReadFile(filepath.Join(s.dir, "data", "admin-token")); err == nil {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp
}

// metrics returns the server's /metrics text.
func (s *server) metrics() string {
	s.t.Helper()
	resp := s.adminGet("GET", "/metrics")
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// health returns the server's /healthz text ("" when it does not answer).
func (s *server) health() string {
	s.t.Helper()
	resp, err := http.Get("http://" + s.admin + "/healthz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
