package e2e

import (
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
)

// [policies] received_auth_user = true names the login in Received, as
// Postfix's smtpd_sasl_authenticated_header = yes; the default does not.
func TestReceivedAuthUserOptIn(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, extra: "[policies]\nreceived_auth_user = true\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	if msg := sk.messages(t)[0]; !strings.Contains(msg, "(authenticated sender: alice)") {
		t.Fatalf("received_auth_user = true, but:\n%s", msg)
	}
}

// A users file readable by group or others is refused in one line, exit 2.
func TestUsersFileModeIsChecked(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t)})
	s.addUser("alice", "secret", "alice@example.test")
	users := s.dir + "/data/users"
	if err := os.Chmod(users, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := run(t, "serve", "-c", s.config)
	if code != 2 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, "users") || !strings.Contains(errs, "0644") {
		t.Fatalf("serve with a 0644 users file: exit %d, %q", code, errs)
	}
	if _, errs, code := s.mta("", "users", "list"); code != 2 || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("users list with a 0644 users file: exit %d, %q", code, errs)
	}
	os.Chmod(users, 0o600)
	s.start()
}

// authTimingScript times AUTH PLAIN for a known user with a wrong password
// and for an unknown user, interleaved over one STARTTLS session, and
// prints the two medians in milliseconds.
const authTimingScript = `
import smtplib, ssl, sys, time, base64, statistics
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, timeout=60); s.starttls(context=ctx); s.ehlo("timing.test")
def auth(user):
    tok = base64.b64encode(("\0%s\0wrong-password" % user).encode()).decode()
    t = time.perf_counter()
    code, _ = s.docmd("AUTH", "PLAIN " + tok)
    d = time.perf_counter() - t
    assert code == 535, code
    return d
known, unknown = [], []
for i in range(n):
    known.append(auth("alice")); unknown.append(auth("nobody%d" % i))
print("%.3f %.3f" % (statistics.median(known) * 1000, statistics.median(unknown) * 1000))
`

// A wrong name takes as long as a wrong password: the dummy hash an unknown
// user is checked against has the users file's bcrypt cost.
func TestAuthTimingDoesNotNameUsers(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t), extra: "[limits]\nmax_auth_failures_per_ip = 1000\n"})
	if out, errs, code := s.mta("secret\n", "users", "add", "alice", "--password-stdin", "--bcrypt-cost", "7", "--address", "alice@example.test"); code != 0 {
		t.Fatalf("users add: %s %s", out, errs)
	}
	s.start()
	host, port := splitHostPort(t, s.sub)
	out := strings.Fields(python(t, authTimingScript, host, port, "11"))
	if len(out) != 2 {
		t.Fatalf("timing script printed %q", out)
	}
	known, _ := strconv.ParseFloat(out[0], 64)
	unknown, _ := strconv.ParseFloat(out[1], 64)
	t.Logf("median AUTH: known user %.1f ms, unknown user %.1f ms", known, unknown)
	if known > 2*unknown || unknown > 2*known {
		t.Fatalf("AUTH medians differ by more than 2x: known user %.1f ms, unknown user %.1f ms", known, unknown)
	}
}

// Bad addresses are refused with the right code (501 5.1.7 for senders,
// 501 5.1.3 for recipients), and the bare "postmaster" is accepted and
// routed to policies.postmaster.
func TestAddressesAndPostmaster(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true})
	s.start()
	c, r := dialSMTP(t, s.sub)
	cmd := func(line string) string {
		c.Write([]byte(line + "\r\n"))
		return smtpReply(c, r)
	}
	cmd("EHLO addr.test")
	for _, bad := range []string{"a\x00b@example.test", "al\x01ice@example.test", "bob@[999.1]", "bob@exa/mple.net", "bob@127.0.0.1:25"} {
		if got := cmd("MAIL FROM:<" + bad + ">"); !strings.HasPrefix(got, "501 5.1.7") {
			t.Errorf("MAIL FROM:<%q>: %q", bad, got)
		}
	}
	if got := cmd("MAIL FROM:<someone@example.test>"); !strings.HasPrefix(got, "250") {
		t.Fatalf("good MAIL: %q", got)
	}
	for _, bad := range []string{"a\x00b@dest.test", "bob@[999.1]", "bob@exa/mple.net", "bob@127.0.0.1:25", "bob@[IPv6:1.2.3.4]"} {
		if got := cmd("RCPT TO:<" + bad + ">"); !strings.HasPrefix(got, "501 5.1.3") {
			t.Errorf("RCPT TO:<%q>: %q", bad, got)
		}
	}
	for _, good := range []string{"PostMaster", "bob@[127.0.0.9]", "bob@[IPv6:::1]"} {
		if got := cmd("RCPT TO:<" + good + ">"); !strings.HasPrefix(got, "250") {
			t.Errorf("RCPT TO:<%s>: %q", good, got)
		}
	}
	cmd("RSET")
	cmd("MAIL FROM:<someone@example.test>")
	if got := cmd("RCPT TO:<postmaster>"); !strings.HasPrefix(got, "250") {
		t.Fatalf("RCPT TO:<postmaster>: %q", got)
	}
	cmd("DATA")
	if got := cmd("Subject: to the postmaster\r\n\r\nhello\r\n."); !strings.HasPrefix(got, "250") {
		t.Fatalf("DATA: %q", got)
	}
	waitDelivered(t, sk, s, "the postmaster's message", 1)
	if msg := sk.messages(t)[0]; !strings.Contains(msg, "X-Rcpt-Args: <postmaster@mta.test>") {
		t.Fatalf("postmaster message went to:\n%s", msg)
	}
}

// A message with no blank line after its headers keeps its body: the first
// line that is not a header starts it, and the separator is inserted.
func TestMissingHeaderSeparator(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true})
	s.start()
	host, port := splitHostPort(t, s.sub)
	python(t, `
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))
s.sendmail("a@example.test", ["b@dest.test"], b"Subject: no separator\r\nThis is the body text\r\nsecond line\r\n")
s.quit()
`, host, port)
	waitDelivered(t, sk, s, "delivery", 1)
	msg := strings.ReplaceAll(sk.messages(t)[0], "\r\n", "\n")
	head, body, ok := strings.Cut(msg, "\n\n")
	if !ok || !strings.Contains(head, "Subject: no separator") || strings.Contains(head, "This is the body text") ||
		!strings.HasPrefix(body, "This is the body text\nsecond line") {
		t.Fatalf("relayed message:\n%s", msg)
	}
}

// An authenticated user may not put an address it does not own in From:
// or Sender: (550 5.7.1 at the end of DATA); a trusted-network submission
// is not checked.
func TestHeaderFromMustBeOwned(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	send := func(headers ...string) (string, int) {
		args := []string{"--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
			"--from", "alice@example.test", "--to", "bob@dest.test"}
		for _, h := range headers {
			args = append(args, "--header", h)
		}
		return swaks(t, args...)
	}
	for _, hdr := range []string{"From: ceo@example.test", "From: Alice <alice@example.test>, Boss <ceo@example.test>", "Sender: ceo@example.test"} {
		out, _ := send(hdr)
		if queuedRE.MatchString(out) || !strings.Contains(out, "550 5.7.1") {
			t.Errorf("%q: want 550 5.7.1 at the end of DATA:\n%s", hdr, out)
		}
	}
	if out, _ := send("From: Alice <alice@example.test>"); !queuedRE.MatchString(out) {
		t.Fatalf("an owned From: was refused:\n%s", out)
	}
	waitDelivered(t, sk, s, "the owned one", 1)
}

// The admin API is safe by default: a token is generated into the data
// directory (0600) and required; the CLI reads it; state changes are POST
// only; /metrics, /healthz, /readyz stay open unless metrics_public = false.
func TestAdminSafeByDefault(t *testing.T) {
	s := newServer(t, serverOpts{smarthost: freePort(t)})
	s.start()
	st, err := os.Stat(s.dir + "/data/admin-token")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token: %v %v", st, err)
	}
	status := func(method, path string, withToken bool) int {
		var resp *http.Response
		if withToken {
			resp = s.adminGet(method, path)
		} else {
			req, _ := http.NewRequest(method, "http://"+s.admin+path, nil)
			if resp, err = http.DefaultClient.Do(req); err != nil {
				t.Fatal(err)
			}
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		method, path string
		token        bool
		want         int
	}{
		{"GET", "/queue", false, 401}, {"GET", "/journal", false, 401}, {"POST", "/queue/retry?id=all", false, 401},
		{"GET", "/queue", true, 200}, {"GET", "/queue/retry?id=all", true, 405}, {"POST", "/queue/retry?id=all", true, 200},
		{"GET", "/metrics", false, 200}, {"GET", "/healthz", false, 200}, {"GET", "/readyz", false, 200},
	} {
		if got := status(c.method, c.path, c.token); got != c.want {
			t.Errorf("%s %s (token %v): %d, want %d", c.method, c.path, c.token, got, c.want)
		}
	}
	if out, errs, code := s.mta("", "queue"); code != 0 {
		t.Fatalf("mta queue against the running server: exit %d %s %s", code, out, errs)
	}
	s.stop()
	s.rewrite(func(cfg string) string {
		return strings.Replace(cfg, "[admin]\n", "[admin]\nmetrics_public = false\n", 1)
	})
	s.start()
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		if got := status("GET", p, false); got != 401 {
			t.Errorf("metrics_public = false: GET %s without token: %d", p, got)
		}
	}
	if got := status("GET", "/metrics", true); got != 200 {
		t.Errorf("GET /metrics with the token: %d", got)
	}
}
