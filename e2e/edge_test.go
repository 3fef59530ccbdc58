package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// edgeProbe exercises the reply table on one listener (STARTTLS or
// implicit TLS) with smtplib and prints "NAME code text" lines.
const edgeProbe = `
import smtplib, ssl, sys
mode, host, port = sys.argv[1:4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def connect():
    if mode == "starttls":
        s = smtplib.SMTP(host, int(port), timeout=20)
        s.ehlo("probe.test")
        s.starttls(context=ctx)
    else:
        s = smtplib.SMTP_SSL(host, int(port), timeout=20, context=ctx)
    s.ehlo("probe.test")
    return s
def show(name, r):
    print(name, r[0], r[1].decode())
s = connect()
if mode == "starttls":
    show("STARTTLS-AGAIN", s.docmd("STARTTLS"))
show("MAIL-NOAUTH", s.docmd("MAIL", "FROM:<alice@example.test>"))
show("MAIL-NULL-NOAUTH", s.docmd("MAIL", "FROM:<>"))
s.login("alice", "secret")
show("AUTH-AGAIN", s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA=="))
show("MAIL-NOTOWNED", s.docmd("MAIL", "FROM:<mallory@example.test>"))
show("MAIL-SIZE-LIE", s.docmd("MAIL", "FROM:<alice@example.test> SIZE=999999999"))
show("MAIL-BADSYNTAX", s.docmd("MAIL", "FROM:<alice@@example..test>"))
show("MAIL-NULL-AUTH", s.docmd("MAIL", "FROM:<>"))
s.rset()
show("MAIL", s.docmd("MAIL", "FROM:<alice@example.test>"))
show("RCPT1", s.docmd("RCPT", "TO:<a@dest.test>"))
show("RCPT2", s.docmd("RCPT", "TO:<b@dest.test>"))
show("RCPT3", s.docmd("RCPT", "TO:<c@dest.test>"))
show("DATA", s.docmd("DATA"))
s.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 30 + b".\r\n")
show("DATA-END", s.getreply())
show("OUT-OF-ORDER-RCPT", s.docmd("RCPT", "TO:<a@dest.test>"))
s.quit()
s = connect()
for i in range(3):
    # AGFsaWNlAHdyb25n = "\0alice\0wrong"; one mechanism, one failure each
    show("AUTHFAIL%d" % i, s.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n"))
try:
    print("AFTER", s.noop())
except Exception as e:
    print("AFTER closed", type(e).__name__)
`

func TestReplyTableOnBothListeners(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "[limits]\nmax_recipients = 2\nmax_message_bytes = 2000\nmax_auth_failures_per_ip = 3\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	for _, mode := range []string{"starttls", "implicit"} {
		addr := s.sub
		if mode == "implicit" {
			addr = s.subs
		}
		host, port := splitHostPort(t, addr)
		out := python(t, edgeProbe, mode, host, port)
		want := []string{
			"MAIL-NOAUTH 550 5.7.1 <alice@example.test> Not authenticated",
			"MAIL-NULL-NOAUTH 550 5.7.1 <> Not authenticated",
			"AUTH-AGAIN 503 5.5.1 Already authenticated",
			"MAIL-NOTOWNED 553 5.7.1 <mallory@example.test> Sender address not owned by user",
			"MAIL-SIZE-LIE 552 5.3.4",
			"MAIL-BADSYNTAX 501 5.1.7 Bad sender address syntax",
			"MAIL-NULL-AUTH 250",
			"RCPT1 250", "RCPT2 250",
			"RCPT3 452 4.5.3 Too many recipients",
			"DATA 354",
			"DATA-END 552 5.3.4 Message too big",
			"OUT-OF-ORDER-RCPT 502 5.5.1",
			"AUTHFAIL0 535 5.7.8 Authentication credentials invalid",
			"AUTHFAIL1 535 5.7.8 Authentication credentials invalid",
			"AUTHFAIL2 421 4.7.0 Too many authentication failures",
			"AFTER closed",
		}
		if mode == "starttls" {
			want = append(want, "STARTTLS-AGAIN 502 5.5.1")
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: missing %q in:\n%s", mode, w, out)
			}
		}
		if mode == "starttls" {
			// The IP is now blocked: a new connection is refused at once.
			o, _ := swaks(t, "--server", s.sub, "--quit-after", "BANNER")
			if !strings.Contains(o, "421 4.7.0 Too many authentication failures") {
				t.Errorf("blocked IP still served:\n%s", o)
			}
			// Let the implicit listener's round start from a clean slate.
			s.stop()
			s.start()
		}
	}
	if n := len(s.replay()); n != 0 {
		t.Errorf("%d events journaled; no message should have been accepted", n)
	}
}

func TestMaxConnections(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "[limits]\nmax_connections = 2\n"})
	s.start()
	var conns []net.Conn
	for i := 0; i < 2; i++ {
		// The harness's own readiness probe may not have left the server's
		// count yet: a 421 is retried until it has (at most 5 s).
		var c net.Conn
		var banner string
		deadline := time.Now().Add(5 * time.Second)
		for {
			var err error
			if c, err = net.Dial("tcp", s.sub); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 512)
			n, _ := c.Read(buf)
			banner = string(buf[:n])
			if !strings.HasPrefix(banner, "421 ") || time.Now().After(deadline) {
				break
			}
			c.Close()
			time.Sleep(20 * time.Millisecond)
		}
		defer c.Close()
		if !strings.HasPrefix(banner, "220 ") {
			t.Fatalf("connection %d: %q", i, banner)
		}
		conns = append(conns, c)
	}
	o, _ := swaks(t, "--server", s.sub, "--quit-after", "BANNER")
	if !strings.Contains(o, "421 4.7.0 Too many connections") {
		t.Errorf("third connection:\n%s", o)
	}
	conns[0].Close()
	waitFor(t, "a free slot", 10*time.Second, func() bool {
		o, _ := swaks(t, "--server", s.sub, "--quit-after", "EHLO")
		return strings.Contains(o, "250-PIPELINING")
	})
}

// Every bare-CR/LF "end of data" lookalike from the 2023 SMTP smuggling
// disclosures stays inside one message (normalised to CRLF).
func TestSmugglingPayloads(t *testing.T) {
	need(t, "openssl")
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	payloads := map[string]string{
		"LF.LF":     "\n.\n",
		"LF.CRLF":   "\n.\r\n",
		"CR.CR":     "\r.\r",
		"CRLF.LF":   "\r\n.\n",
		"CRLF.CR":   "\r\n.\r",
		"CR.CRLF":   "\r.\r\n",
		"LF.CR":     "\n.\r",
		"CR.LF":     "\r.\n",
		"CRLF.NULL": "\r\n.\x00\r\n",
	}
	var ids []string
	for name, sep := range payloads {
		script := "EHLO openssl.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@dest.test>\r\nDATA\r\n" +
			"Subject: " + name + "\r\n\r\nbefore" + sep + "MAIL FROM:<alice@example.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nsmuggled " + name + "\r\n.\r\nQUIT\r\n"
		cmd := exec.Command("openssl", "s_client", "-quiet", "-ign_eof", "-starttls", "smtp", "-connect", s.sub)
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: openssl: %v\n%s", name, err, out)
		}
		m := queuedRE.FindAllStringSubmatch(string(out), -1)
		if len(m) != 1 {
			t.Errorf("%s: %d messages queued, want 1:\n%s", name, len(m), out)
			continue
		}
		ids = append(ids, m[0][1])
	}
	waitDelivered(t, sk, s, "deliveries", len(ids))
	for _, msg := range sk.messages(t) {
		if strings.Contains(msg, "X-Rcpt-Args: <victim@dest.test>") || !strings.Contains(msg, "smuggled") || !strings.Contains(msg, "before") {
			t.Errorf("smuggled transaction or lost text:\n%s", msg)
		}
	}
	// The journaled bodies have CRLF line ends only.
	out, _, _ := s.mta("", "replay", "--json")
	if strings.Count(out, `"type":"Received"`) != len(ids) {
		t.Errorf("want %d Received events:\n%s", len(ids), out)
	}
}

// 200 concurrent sessions all get 250, and all 200 messages are journaled.
func TestConcurrentSessions(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	const script = `
import smtplib, ssl, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ok, errs = [], []
def one(i):
    try:
        s = smtplib.SMTP(host, port, timeout=120)
        s.starttls(context=ctx)
        s.login("alice", "secret")
        code, msg = s.sendmail("alice@example.test", ["r%d@dest.test" % i], "Subject: %d\r\n\r\nbody %d\r\n" % (i, i)) or (250, b"")
        ok.append(i)
        s.quit()
    except Exception as e:
        errs.append(repr(e))
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print("OK", len(ok), "ERR", len(errs), errs[:3])
`
	host, port := splitHostPort(t, s.sub)
	out := python(t, script, host, port, "200")
	if !strings.Contains(out, "OK 200 ERR 0") {
		t.Fatalf("concurrent sessions: %s", out)
	}
	lines := s.replay()
	received := 0
	for _, l := range lines {
		if l["type"] == "Received" {
			received++
		}
	}
	if received != 200 {
		t.Fatalf("%d Received events, want 200", received)
	}
	waitDelivered(t, sk, s, "200 deliveries", 200)
}

// SIGHUP reloads the users file (and certificates) without a restart, and
// without dropping a session that is open.
func TestSIGHUPReloadsUsersAndCerts(t *testing.T) {
	need(t, "openssl")
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	fingerprint := func() string {
		cmd := exec.Command("bash", "-c", fmt.Sprintf("openssl s_client -connect %s </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256", s.subs))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("fingerprint: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	before := fingerprint()
	// An open session survives the reload.
	open, err := net.Dial("tcp", s.sub)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	buf := make([]byte, 512)
	open.Read(buf)

	s.addUser("bob", "hunter2", "bob@example.test")
	o, code := swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "hunter2",
		"--from", "bob@example.test", "--to", "x@dest.test")
	if code == 0 {
		t.Fatalf("bob authenticated before the reload:\n%s", o)
	}
	// A new certificate: remove the generated pair, have one made, reload.
	tlsDir := filepath.Join(s.dir, "data", "tls")
	newDir := t.TempDir()
	gen := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
		"-subj", "/CN=reloaded.test", "-keyout", filepath.Join(newDir, "key.pem"), "-out", filepath.Join(newDir, "cert.pem"))
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	for _, f := range []string{"cert.pem", "key.pem"} {
		b, _ := os.ReadFile(filepath.Join(newDir, f))
		if err := os.WriteFile(filepath.Join(tlsDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "bob to be accepted after SIGHUP", 10*time.Second, func() bool {
		o, code := swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "hunter2",
			"--from", "bob@example.test", "--to", "x@dest.test")
		return code == 0 && queuedRE.MatchString(o)
	})
	if after := fingerprint(); after == before {
		t.Errorf("certificate not reloaded: %s", after)
	}
	if _, err := open.Write([]byte("NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := open.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "250") {
		t.Errorf("open session after reload: %q %v", buf[:n], err)
	}
}

// SIGTERM: a session in the middle of DATA finishes and gets its 250; an
// idle session gets 421; the accepted message is delivered after restart.
func TestGracefulShutdown(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t)})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	idle, err := net.Dial("tcp", s.sub)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	buf := make([]byte, 4096)
	idle.Read(buf)

	const script = `
import smtplib, ssl, sys, time
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, timeout=30)
s.starttls(context=ctx)
s.login("alice", "secret")
s.mail("alice@example.test")
s.rcpt("bob@dest.test")
s.putcmd("data")
print("DATA", s.getreply()[0], flush=True)
s.send(b"Subject: slow\r\n\r\nfirst half\r\n")
sys.stdin.readline()   # the test sends SIGTERM meanwhile
s.send(b"second half\r\n.\r\n")
code, msg = s.getreply()
print("END", code, msg.decode(), flush=True)
`
	host, port := splitHostPort(t, s.sub)
	py := exec.Command("python3", "-c", script, host, port)
	stdin, _ := py.StdinPipe()
	var out strings.Builder
	var mu sync.Mutex
	py.Stdout = writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(b) })
	py.Stderr = py.Stdout
	if err := py.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the client to be in DATA", 20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(out.String(), "DATA 354") })
	s.cmd.Process.Signal(syscall.SIGTERM)
	// The idle session is told 421.
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _ := idle.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "421 ") {
		t.Errorf("idle session got %q, want 421", buf[:n])
	}
	stdin.Write([]byte("go\n"))
	py.Wait()
	mu.Lock()
	res := out.String()
	mu.Unlock()
	if !queuedRE.MatchString(res) {
		t.Fatalf("session in DATA did not get its 250:\n%s", res)
	}
	select {
	case <-s.waitDone:
		s.cmd = nil
	case <-time.After(40 * time.Second):
		t.Fatal("server did not exit after SIGTERM")
	}
	if q := s.queue(); len(q.Envelopes) != 1 {
		t.Fatalf("accepted message not in the queue after shutdown: %+v", q)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// Listeners take several addresses, IPv6 loopback included.
func TestIPv6Listener(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("this machine has no IPv6 loopback: %v", err)
	}
	v6 := ln.Addr().String()
	ln.Close()
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	// Add the IPv6 address beside the IPv4 one.
	cfg, _ := os.ReadFile(s.config)
	cfg = []byte(strings.Replace(string(cfg), fmt.Sprintf("listen = [%q]", s.sub), fmt.Sprintf("listen = [%q, %q]", s.sub, v6), 1))
	os.WriteFile(s.config, cfg, 0o644)
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	// swaks needs an extra Perl module for IPv6; smtplib does not.
	host, port := splitHostPort(t, v6)
	host = strings.Trim(host, "[]")
	if r := python(t, smtplibSend, "starttls", host, port, "alice", "secret", "alice@example.test", "bob@dest.test", "Subject: v6\r\n\r\nhi\r\n"); !strings.HasPrefix(r, "250 2.0.0 Ok: queued as ") {
		t.Fatalf("submission over IPv6: %q", r)
	}
	waitDelivered(t, sk, s, "delivery", 1)
}

// smtpReply reads one whole (possibly multi-line) SMTP reply.
func smtpReply(c net.Conn, r *bufio.Reader) string {
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	var all strings.Builder
	for {
		line, err := r.ReadString('\n')
		all.WriteString(line)
		if err != nil || len(line) < 4 || line[3] == ' ' {
			return all.String()
		}
	}
}

// limits.command_timeout and limits.data_timeout end stalled sessions.
func TestCommandAndDataTimeouts(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true, extra: "[limits]\ncommand_timeout = \"1s\"\ndata_timeout = \"2s\"\n"})
	s.start()
	// Silent after the banner: 421 once command_timeout passes.
	c, err := net.Dial("tcp", s.sub)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cr := bufio.NewReader(c)
	smtpReply(c, cr)
	start := time.Now()
	if got := smtpReply(c, cr); !strings.HasPrefix(got, "421 ") {
		t.Fatalf("idle session got %q", got)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("command timeout took %s", d)
	}
	// Stalled inside DATA, even while trickling a line every half second:
	// data_timeout bounds the whole transfer. (Loopback is trusted here, so
	// the session needs no TLS or AUTH.)
	d, err := net.Dial("tcp", s.sub)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dr := bufio.NewReader(d)
	smtpReply(d, dr)
	for _, cmd := range []string{"EHLO x.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"} {
		d.Write([]byte(cmd + "\r\n"))
		if got := smtpReply(d, dr); got == "" || got[0] == '5' || got[0] == '4' {
			t.Fatalf("%s: %q", cmd, got)
		}
	}
	d.Write([]byte("Subject: stalled\r\n\r\nhalf a body\r\n"))
	replies := make(chan string, 1)
	go func() { replies <- smtpReply(d, dr) }()
	var got string
	timeout := time.After(10 * time.Second)
loop:
	for {
		select {
		case got = <-replies:
			break loop
		case <-time.After(500 * time.Millisecond):
			d.Write([]byte("more\r\n"))
		case <-timeout:
			break loop
		}
	}
	if !strings.HasPrefix(got, "451 4.3.0") && !strings.HasPrefix(got, "421 ") {
		t.Fatalf("stalled DATA got %q", got)
	}
	if n := len(s.replay()); n != 0 {
		t.Errorf("%d events journaled for a timed-out message", n)
	}
}
