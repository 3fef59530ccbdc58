package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func scrape(t *testing.T, s *server, token string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+s.admin+"/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// /metrics, /readyz and the bearer token, scraped and parsed with the
// Prometheus text parser.
func TestMetricsReadinessAndToken(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "token = \"s3cret-token\"\n"})
	// The token belongs to [admin], the last section newServer writes.
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/queue": 401, "/metrics": 200} {
		resp, err := http.Get("http://" + s.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong",
		"--from", "alice@example.test", "--to", "bob@dest.test")
	s.submit(t, "alice@example.test", "bob@dest.test")
	// The CLI reads the token from the config.
	waitDelivered(t, sk, s, "delivery", 1)
	fams := scrape(t, s, "s3cret-token")
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"ledgermail_messages_accepted_total", nil, 1},
		{"ledgermail_messages_delivered_total", nil, 1},
		{"ledgermail_messages_rejected_total", map[string]string{"reason": "auth_failed"}, 1},
		{"ledgermail_journal_append_seconds", nil, 4},
		{"ledgermail_relay_seconds", map[string]string{"domain": "dest.test"}, 1},
	} {
		v, ok := metricValue(fams, c.name, c.labels)
		if !ok || v < c.min {
			t.Errorf("%s%v = %v (present %v), want >= %v", c.name, c.labels, v, ok, c.min)
		}
	}
	if v, ok := metricValue(fams, "ledgermail_queue_envelopes", map[string]string{"state": "deferred"}); !ok || v != 0 {
		t.Errorf("queue gauge deferred = %v, %v", v, ok)
	}
	for _, name := range []string{"ledgermail_messages_deferred_total", "ledgermail_messages_bounced_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
}

// Started as root with --user, the server binds, hands its data directory
// over, drops to the user and still serves.
func TestPrivilegeDrop(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("privilege drop needs root; this run is not root (CI runs as root)")
	}
	base, err := os.MkdirTemp("", "ledgermail-priv-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	t.Cleanup(func() { os.RemoveAll(base) })
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, dir: base})
	os.Chmod(s.config, 0o644)
	s.addUser("alice", "secret", "alice@example.test")
	s.startArgs("--user", "nobody", "--group", "nogroup")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := procField(string(status), "Uid:"), procField(string(status), "Gid:")
	if uid != "65534\t65534\t65534\t65534" || gid != "65534\t65534\t65534\t65534" {
		t.Fatalf("running as uid %q gid %q, want nobody/nogroup everywhere", uid, gid)
	}
	if groups := procField(string(status), "Groups:"); groups != "65534" {
		t.Errorf("supplementary groups %q, want only 65534", groups)
	}
	s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(base, "data", "journal"), &st); err != nil || st.Uid != 65534 {
		t.Errorf("journal directory owner %d (%v), want 65534", st.Uid, err)
	}
}

func procField(status, key string) string {
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, key) {
			return strings.TrimSpace(strings.TrimPrefix(l, key))
		}
	}
	return ""
}

// --daemon returns once ready, writes the pidfile, refuses a second start
// on the same data dir, logs to --log-file, reopens it on SIGUSR1 and
// stops on SIGTERM.
func TestDaemonPidfileAndLogReopen(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	pidfile := filepath.Join(s.dir, "mta.pid")
	logPath := filepath.Join(s.dir, "mta.log")
	start := time.Now()
	out, errs, code := s.mtaRaw("serve", "-c", s.config, "--daemon", "--pidfile", pidfile, "--log-file", logPath)
	if code != 0 {
		t.Fatalf("serve --daemon: exit %d %s %s", code, out, errs)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("no pidfile once --daemon returned: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	proc, _ := os.FindProcess(pid)
	t.Cleanup(func() { proc.Signal(syscall.SIGKILL) })
	if !canConnect(s.sub) {
		t.Fatal("--daemon returned before the listener accepted connections")
	}
	t.Logf("daemon ready in %s", time.Since(start))
	// A second server on the same data dir: a clear refusal.
	_, errs, code = s.mtaRaw("serve", "-c", s.config, "--daemon", "--pidfile", filepath.Join(s.dir, "other.pid"))
	if code != 1 || !strings.Contains(errs, "in use") {
		t.Errorf("second daemon: exit %d %q", code, errs)
	}
	// Same pidfile: refused before anything starts.
	_, errs, code = s.mtaRaw("serve", "-c", s.config, "--daemon", "--pidfile", pidfile)
	if code != 1 || !strings.Contains(errs, fmt.Sprintf("already running as pid %d", pid)) {
		t.Errorf("same pidfile: exit %d %q", code, errs)
	}
	// logrotate: move the file away, SIGUSR1, a new file appears.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	proc.Signal(syscall.SIGUSR1)
	waitFor(t, "a reopened log file", 10*time.Second, func() bool {
		b, err := os.ReadFile(logPath)
		return err == nil && strings.Contains(string(b), "log file reopened")
	})
	old, _ := os.ReadFile(logPath + ".1")
	if !strings.Contains(string(old), "ledgermail started") {
		t.Errorf("rotated log lacks the start line:\n%s", old)
	}
	proc.Signal(syscall.SIGTERM)
	waitFor(t, "the daemon to exit and remove its pidfile", 30*time.Second, func() bool {
		_, err := os.Stat(pidfile)
		return os.IsNotExist(err) && syscall.Kill(pid, 0) != nil
	})
	b, _ = os.ReadFile(logPath)
	if !strings.Contains(string(b), "stopped") {
		t.Errorf("log after SIGTERM:\n%s", b)
	}
}

// Start-up errors reach the terminal of `serve --daemon`.
func TestDaemonReportsStartupError(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t)})
	busy := exec.Command("python3", "-c", "import socket,time,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); h,p=sys.argv[1].rsplit(':',1); s.bind((h,int(p))); s.listen(); print('up', flush=True); time.sleep(60)", s.sub)
	stdout, _ := busy.StdoutPipe()
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Process.Kill(); busy.Wait() })
	buf := make([]byte, 3)
	stdout.Read(buf)
	_, errs, code := s.mtaRaw("serve", "-c", s.config, "--daemon", "--pidfile", filepath.Join(s.dir, "p"))
	if code != 1 || !strings.Contains(errs, "listen on "+s.sub) {
		t.Errorf("daemon with a busy port: exit %d %q", code, errs)
	}
}

// mta replay draws progress on a terminal, and nothing when piped.
func TestReplayProgressOnTerminalOnly(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	s.stop()
	// Piped: events on stdout, nothing on stderr.
	out, errs, code := s.mta("", "replay")
	if code != 0 || errs != "" || strings.Count(out, "\n") < 5 {
		t.Fatalf("piped replay: exit %d, stderr %q", code, errs)
	}
	// stderr on a pseudo-terminal: a progress line with the total.
	const script = `
import os, pty, subprocess, sys
master, slave = pty.openpty()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=slave)
os.close(slave)
data = b""
try:
    while True:
        chunk = os.read(master, 4096)
        if not chunk:
            break
        data += chunk
except OSError:
    pass
print(p.returncode, repr(data.decode()))
`
	res := python(t, script, mtaBin, "replay", "-c", s.config)
	if !strings.HasPrefix(res, "0 ") || !strings.Contains(res, "replaying: 1/") || !strings.Contains(res, "events (") {
		t.Fatalf("replay on a terminal: %s", res)
	}
}

// [log] format = "json": every line is a JSON object, and the lines about
// a message carry its envelope ID and the client's address.
func TestJSONLogsCarryEnvelopeAndClient(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "[log]\nformat = \"json\"\nlevel = \"info\"\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	id := s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	b, _ := os.ReadFile(s.logFile)
	var accepted, attempt bool
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		switch rec["msg"] {
		case "message accepted":
			accepted = rec["envelope"] == id && strings.HasPrefix(fmt.Sprint(rec["client"]), "127.0.0.1:")
		case "delivery attempt":
			attempt = rec["envelope"] == id+".1" && rec["relay"] == sk.addr
		}
	}
	if !accepted || !attempt {
		t.Fatalf("accepted line ok: %v, attempt line ok: %v\n%s", accepted, attempt, b)
	}
}
