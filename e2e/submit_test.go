package e2e

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

var queuedRE = regexp.MustCompile(`250 2\.0\.0 Ok: queued as ([0-9A-F]{20})`)

// smtplibSend submits over STARTTLS (port 587 style) or implicit TLS (465
// style) with AUTH PLAIN and prints the final reply.
const smtplibSend = `
import smtplib, ssl, sys
mode, host, port, user, pw, sender, rcpts, body = sys.argv[1:9]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode == "starttls":
    s = smtplib.SMTP(host, int(port), timeout=20)
    s.ehlo("python.test")
    s.starttls(context=ctx)
else:
    s = smtplib.SMTP_SSL(host, int(port), timeout=20, context=ctx)
s.ehlo("python.test")
s.login(user, pw)
s.mail(sender)
for r in rcpts.split(","):
    s.rcpt(r)
code, msg = s.data(body.encode())
print(code, msg.decode())
s.quit()
`

// smtplibProbe runs the refusals of the reply table and prints each reply.
const smtplibProbe = `
import smtplib, ssl, sys
host, port, user, pw = sys.argv[1:5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, int(port), timeout=20)
code, msg = s.ehlo("python.test")
print("EHLO-PLAIN", "AUTH" in msg.decode(), "STARTTLS" in msg.decode())
print("AUTH-PLAINTEXT", *s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA=="))
s.starttls(context=ctx)
code, msg = s.ehlo("python.test")
print("EHLO-TLS", "AUTH PLAIN LOGIN" in msg.decode())
print("MAIL-NOAUTH", *s.docmd("MAIL", "FROM:<alice@example.test>"))
s.rset()
try:
    s.login(user, "wrong-password")
except smtplib.SMTPAuthenticationError as e:
    print("BADAUTH", e.smtp_code, e.smtp_error.decode())
s.login(user, pw)
print("MAIL-NOTOWNED", *s.docmd("MAIL", "FROM:<mallory@example.test>"))
s.rset()
print("MAIL-OK", *s.docmd("MAIL", "FROM:<alice@example.test>"))
print("RCPT-BAD", *s.docmd("RCPT", "TO:<bob@dest..test>"))
s.quit()
`

func TestSubmitWithSwaksAndSmtplibDeliversToSmtpSink(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()

	// swaks: STARTTLS, AUTH LOGIN, two recipient domains.
	out, code := swaks(t, "--server", s.sub, "--tls", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "secret",
		"--from", "alice@example.test", "--to", "bob@dest.test,carol@other.test",
		"--header", "Subject: from swaks", "--body", "swaks body line\nsecond line")
	m := queuedRE.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("swaks: exit %d\n%s", code, out)
	}
	swaksID := m[1]

	// smtplib: implicit TLS (465 style), AUTH PLAIN, exact body bytes.
	body := "From: alice@example.test\r\nTo: dave@dest.test\r\nSubject: from smtplib\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <fixed@example.test>\r\n\r\nexact body bytes\r\n.leading dot\r\nlast line\r\n"
	host, port := splitHostPort(t, s.subs)
	reply := python(t, smtplibSend, "implicit", host, port, "alice", "secret", "alice@example.test", "dave@dest.test", body)
	if !strings.HasPrefix(reply, "250 2.0.0 Ok: queued as ") {
		t.Fatalf("smtplib reply: %q", reply)
	}
	pyID := strings.TrimSpace(strings.TrimPrefix(reply, "250 2.0.0 Ok: queued as "))

	// smtplib: STARTTLS too.
	host, port = splitHostPort(t, s.sub)
	if r := python(t, smtplibSend, "starttls", host, port, "alice", "secret", "alice@example.test", "erin@third.test", "Subject: x\r\n\r\nhi\r\n"); !strings.HasPrefix(r, "250 2.0.0 Ok: queued as ") {
		t.Fatalf("smtplib STARTTLS reply: %q", r)
	}

	// Two children for swaks' two domains + one + one = four transactions.
	waitDelivered(t, sk, s, "4 transactions at smtp-sink", 4)
	msgs := sk.messages(t)
	var py, bob string
	for _, msg := range msgs {
		if strings.Contains(msg, "X-Rcpt-Args: <dave@dest.test>") {
			py = msg
		}
		if strings.Contains(msg, "X-Rcpt-Args: <bob@dest.test>") {
			bob = msg
		}
	}
	if py == "" || bob == "" {
		t.Fatalf("missing transactions at the sink:\n%s", strings.Join(msgs, "\n----\n"))
	}
	// Our Received header comes right after the sink's own, then the body
	// exactly as submitted (the sink shows dot-unstuffed data).
	if !strings.Contains(py, "by mta.test (ledgermail) with ESMTPSA id "+pyID) {
		t.Errorf("no ledgermail Received header naming %s:\n%s", pyID, py)
	}
	if !regexp.MustCompile(`Received: from python\.test \(\S+ \[127\.0\.0\.1\]\)`).MatchString(py) {
		t.Errorf("Received header lacks \"from EHLO (rDNS [ip])\":\n%s", py)
	}
	// The login name stays private by default (received_auth_user = false).
	if strings.Contains(py, "authenticated sender") || strings.Contains(py, "alice)") || !strings.Contains(py, "for <dave@dest.test>") {
		t.Errorf("Received header names the login, or lacks the recipient:\n%s", py)
	}
	// smtp-sink stores lines with LF and ends the file with an empty line.
	if !strings.HasSuffix(strings.TrimRight(strings.ReplaceAll(py, "\r\n", "\n"), "\n"), strings.TrimRight(strings.ReplaceAll(body, "\r\n", "\n"), "\n")) {
		t.Errorf("body bytes differ; sink has:\n%s", py)
	}
	if strings.Count(py, "Message-ID:") != 1 || strings.Count(py, "Date:") != 1 {
		t.Errorf("Date/Message-ID duplicated although the client set them:\n%s", py)
	}
	if !strings.Contains(bob, "X-Mail-Args: <alice@example.test>") || !strings.Contains(bob, "Subject: from swaks") ||
		!strings.Contains(bob, "Message-Id:") || !strings.Contains(bob, "swaks body line") {
		t.Errorf("swaks transaction:\n%s", bob)
	}

	// The queue drains and the journal tells each envelope's story.
	waitFor(t, "empty queue", 10*time.Second, func() bool { return len(s.queue().Envelopes) == 0 })
	q := s.queue()
	if q.Counts["delivered"] != 4 {
		t.Errorf("counts %v, want 4 delivered", q.Counts)
	}
	got := strings.Join(types(s.replay("--envelope", swaksID)), " ")
	if !strings.HasPrefix(got, "Received PoliciesApplied Split AttemptStarted") || strings.Count(got, "Delivered") != 2 {
		t.Errorf("swaks envelope history: %s", got)
	}
	lines := s.replay("--envelope", pyID)
	// The Received event records how the message came in.
	rcv := lines[0]
	for k, want := range map[string]string{"type": "Received", "helo": "python.test", "auth_user": "alice", "listener": "submissions/" + s.subs} {
		if fmt.Sprint(rcv[k]) != want {
			t.Errorf("Received %s = %v, want %s", k, rcv[k], want)
		}
	}
	if !strings.HasPrefix(fmt.Sprint(rcv["client_addr"]), "127.0.0.1:") || !strings.HasPrefix(fmt.Sprint(rcv["tls"]), "TLS 1.") ||
		fmt.Sprint(rcv["size"]) != fmt.Sprint(len(body)) {
		t.Errorf("Received event: %v", rcv)
	}
	last := lines[len(lines)-1]
	if last["type"] != "Delivered" || last["envelope"] != pyID+".1" || last["seq"] == nil || last["version"] == nil {
		t.Errorf("last event of %s: %v", pyID, last)
	}

	// Stopped, the same commands read the journal directly.
	s.stop()
	if q := s.queue(); q.Counts["delivered"] != 4 || len(q.Envelopes) != 0 {
		t.Errorf("offline queue: %+v", q)
	}
	if got := types(s.replay("--envelope", pyID)); len(got) != len(lines) {
		t.Errorf("offline replay has %d events, online had %d", len(got), len(lines))
	}
	if out, errs, code := s.mta("", "replay", "--verify"); code != 0 || !strings.Contains(out, "0 corrupt") {
		t.Errorf("replay --verify: exit %d\n%s%s", code, out, errs)
	}
}

func TestReplyTable(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	host, port := splitHostPort(t, s.sub)
	out := python(t, smtplibProbe, host, port, "alice", "secret")
	for _, want := range []string{
		"EHLO-PLAIN False True",
		"AUTH-PLAINTEXT 538 b'5.7.11 Encryption required for requested authentication mechanism'",
		"EHLO-TLS True",
		"MAIL-NOAUTH 550 b'5.7.1 <alice@example.test> Not authenticated'",
		"BADAUTH 535 5.7.8 Authentication credentials invalid",
		"MAIL-NOTOWNED 553 b'5.7.1 <mallory@example.test> Sender address not owned by user'",
		"MAIL-OK 250",
		"RCPT-BAD 501 b'5.1.3 Bad recipient address syntax'",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// swaks sees the same refusal for bad credentials.
	o, code := swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "nope",
		"--from", "alice@example.test", "--to", "bob@dest.test")
	if code == 0 || !strings.Contains(o, "535 5.7.8 Authentication credentials invalid") {
		t.Errorf("swaks with bad password: exit %d\n%s", code, o)
	}
}

func splitHostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	return addr[:i], addr[i+1:]
}

// openssl s_client on both listeners: STARTTLS on the submission port, TLS
// from the first byte on the submissions port; AUTH only inside TLS.
func TestOpenSSLClientOnBothListeners(t *testing.T) {
	need(t, "openssl")
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.start()
	session := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("openssl", append([]string{"s_client", "-quiet", "-ign_eof"}, args...)...)
		cmd.Stdin = strings.NewReader("EHLO openssl.test\r\nQUIT\r\n")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for name, out := range map[string]string{
		"starttls": session("-connect", s.sub, "-starttls", "smtp"),
		"implicit": session("-connect", s.subs),
	} {
		if !strings.Contains(out, "250-AUTH PLAIN LOGIN") {
			t.Errorf("%s: AUTH not offered inside TLS:\n%s", name, out)
		}
		if strings.Contains(out, "STARTTLS") {
			t.Errorf("%s: STARTTLS offered inside TLS:\n%s", name, out)
		}
		for _, ext := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "SIZE 26214400"} {
			if !strings.Contains(out, ext) {
				t.Errorf("%s: %s not advertised:\n%s", name, ext, out)
			}
		}
		if !strings.Contains(out, "221 2.0.0") {
			t.Errorf("%s: no goodbye:\n%s", name, out)
		}
	}
}

// A body with bare-LF "end of data" lookalikes (the 2023 SMTP smuggling
// payload) is one message, normalised to CRLF, never two. openssl s_client
// sends the bytes as they are (smtplib and swaks would fix the line ends).
func TestBareLFSmugglingIsOneMessage(t *testing.T) {
	need(t, "openssl")
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	script := "EHLO openssl.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@dest.test>\r\nDATA\r\n" +
		"Subject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<alice@example.test>\nRCPT TO:<victim@dest.test>\nDATA\nsmuggled\r\n.\r\nQUIT\r\n"
	cmd := exec.Command("openssl", "s_client", "-quiet", "-ign_eof", "-starttls", "smtp", "-connect", s.sub)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	if n := len(queuedRE.FindAllString(string(out), -1)); n != 1 {
		t.Fatalf("%d messages queued, want 1:\n%s", n, out)
	}
	waitFor(t, "delivery", 20*time.Second, func() bool { return len(s.queue().Envelopes) == 0 && len(sk.messages(t)) == 1 })
	msg := sk.messages(t)[0]
	if strings.Contains(msg, "X-Rcpt-Args: <victim@dest.test>") || !strings.Contains(msg, "RCPT TO:<victim@dest.test>") || !strings.Contains(msg, "smuggled") {
		t.Fatalf("smuggled content was not kept inside the one message:\n%s", msg)
	}
	if q := s.queue(); q.Counts["delivered"] != 1 {
		t.Errorf("counts %v", q.Counts)
	}
}
