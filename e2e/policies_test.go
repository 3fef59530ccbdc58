package e2e

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
)

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

func startSpamd(t *testing.T) string {
	t.Helper()
	need(t, "spamd")
	addr := freePort(t)
	cmd := exec.Command("spamd", "--listen="+addr, "-u", "nobody", "--max-children=2", "--syslog=stderr", "--pidfile="+filepath.Join(t.TempDir(), "spamd.pid"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "spamd", 60*time.Second, func() bool { return canConnect(addr) })
	return addr
}

// Through the real server to smtp-sink: Received, Date, Message-ID and a
// DKIM-Signature that verifies against the key published by an in-process
// DNS server; forward rules; the split into transactions; spamd tagging.
func TestPoliciesEndToEnd(t *testing.T) {
	sk := startSink(t, freePort(t))
	spamd := startSpamd(t)
	s := newServer(t, serverOpts{smarthost: sk.addr})
	keyFile := filepath.Join(s.dir, "dkim.pem")
	out, errs, code := s.mta("", "dkim", "keygen", "example.test", "sel1", "--out", keyFile)
	if code != 0 {
		t.Fatalf("dkim keygen: %s %s", out, errs)
	}
	m := regexp.MustCompile(`(?m)^sel1\._domainkey\.example\.test\. IN TXT (.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no TXT record in:\n%s", out)
	}
	dnsAddr := startDNS(t, map[string][]string{"sel1._domainkey.example.test.": {"sel1._domainkey.example.test. 60 IN TXT " + m[1]}})
	s.rewrite(func(c string) string {
		return strings.Replace(c, "[admin]", `[policies]
split = "domain"
spamassassin = "`+spamd+`"
[[policies.forward]]
pattern = '^sales@old\.test$'
replace = "sales@one.test"
[[policies.dkim]]
domain = "example.test"
selector = "sel1"
key_file = "`+keyFile+`"
[admin]`, 1)
	})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	body := "From: Alice <alice@example.test>\r\nTo: sales@old.test, b@two.test\r\nSubject: policies\r\n\r\nHello, with a body.\r\n"
	host, port := splitHostPort(t, s.sub)
	r := python(t, smtplibSend, "starttls", host, port, "alice", "secret", "alice@example.test", "sales@old.test,b@two.test,c@one.test", body)
	if !strings.HasPrefix(r, "250 ") {
		t.Fatalf("submit: %s", r)
	}
	// sales@old.test is forwarded to one.test: two domains, two transactions.
	waitDelivered(t, sk, s, "two transactions", 2)
	var one string
	for _, msg := range sk.messages(t) {
		if strings.Contains(msg, "X-Rcpt-Args: <sales@one.test>") {
			one = msg
		}
	}
	if one == "" || !strings.Contains(one, "X-Rcpt-Args: <c@one.test>") {
		t.Fatalf("no one.test transaction with both recipients:\n%s", strings.Join(sk.messages(t), "\n---\n"))
	}
	for _, h := range []string{"\nDKIM-Signature: ", "\nReceived: from python.test", "\nDate: ", "\nMessage-ID: <", "\nX-Spam-Status: No", "\nX-Spam-Score: "} {
		if !strings.Contains(one, h) {
			t.Errorf("relayed message lacks %q:\n%s", strings.TrimSpace(h), one)
		}
	}
	// Verify the signature as a receiving MTA would, keys from DNS.
	lookup := func(name string) ([]string, error) {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		in, err := dns.Exchange(q, dnsAddr)
		if err != nil {
			return nil, err
		}
		var txts []string
		for _, rr := range in.Answer {
			if t, ok := rr.(*dns.TXT); ok {
				txts = append(txts, strings.Join(t.Txt, ""))
			}
		}
		return txts, nil
	}
	raw := strings.ReplaceAll(strings.ReplaceAll(one, "\r\n", "\n"), "\n", "\r\n")
	vs, err := dkim.VerifyWithOptions(bytes.NewReader([]byte(raw)), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.test" {
		t.Fatalf("DKIM verification: %v %+v\n%s", err, vs, one)
	}
	// PoliciesApplied records what was done, so replay reproduces it.
	var applied string
	for _, l := range s.replay() {
		if l["type"] == "PoliciesApplied" {
			applied = strings.Join(toStrings(l["policies"]), ",")
		}
	}
	if applied != "received,date,message-id,spamassassin,forward,dkim:example.test" {
		t.Errorf("policies applied: %q", applied)
	}
}

// spamassassin_action = "reject": GTUBE is refused at DATA and never
// journaled; other mail passes.
func TestSpamRejectedAtData(t *testing.T) {
	sk := startSink(t, freePort(t))
	spamd := startSpamd(t)
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.rewrite(func(c string) string {
		return strings.Replace(c, "[admin]", "[policies]\nspamassassin = \""+spamd+"\"\nspamassassin_action = \"reject\"\n[admin]", 1)
	})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	out, code := swaks(t, "--server", s.sub, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
		"--from", "alice@example.test", "--to", "bob@dest.test", "--body", gtube)
	if code == 0 || !strings.Contains(out, "550 5.7.1 Message rejected as spam") {
		t.Fatalf("GTUBE: exit %d\n%s", code, out)
	}
	if n := len(s.replay()); n != 0 {
		t.Fatalf("%d events journaled for a rejected message", n)
	}
	s.submit(t, "alice@example.test", "bob@dest.test", "--body", "An ordinary message about lunch.")
	waitDelivered(t, sk, s, "ham delivered", 1)
}

// spamd down: the message passes untagged (and the failure is logged).
func TestSpamdDownPassesUntagged(t *testing.T) {
	sk := startSink(t, freePort(t))
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.rewrite(func(c string) string {
		return strings.Replace(c, "[admin]", "[policies]\nspamassassin = \""+dead+"\"\nspamassassin_timeout = \"2s\"\n[admin]", 1)
	})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	s.submit(t, "alice@example.test", "bob@dest.test")
	waitDelivered(t, sk, s, "delivery", 1)
	if msg := sk.messages(t)[0]; strings.Contains(msg, "X-Spam-") {
		t.Errorf("tagged although spamd is down:\n%s", msg)
	}
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, len(l))
	for i, x := range l {
		out[i], _ = x.(string)
	}
	return out
}
