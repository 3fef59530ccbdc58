package e2e

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// writeCert writes c's chain and key as PEM files under dir.
func writeCert(t *testing.T, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	k, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: k}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// MTA-STS end to end. Three recipient domains publish policies, served by
// an in-process HTTPS server whose name the mta resolves through the test's
// DNS zone: good.test (enforce) has a second ledgermail as its MX, with a
// certificate for mx.good.test from a CA the mta is given in
// relay.tls_ca_file; bad.test (enforce) and testing.test (testing) have an
// MX whose certificate is self-signed. good.test is delivered over TLS,
// bad.test is deferred and never reaches its MX, testing.test is delivered;
// the attempts journal the policy's id and result and /metrics counts them.
func TestMTASTSEndToEnd(t *testing.T) {
	ca, err := mxtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	mxCert, err := ca.Issue("mx.good.test")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeCert(t, dir, "mx", mxCert)

	// The policy server.
	policies := map[string]string{
		"mta-sts.good.test":    "version: STSv1\nmode: enforce\nmx: mx.good.test\nmax_age: 86400\n",
		"mta-sts.bad.test":     "version: STSv1\nmode: enforce\nmx: *.bad.test\nmax_age: 86400\n",
		"mta-sts.testing.test": "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		p, ok := policies[host]
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, p)
	}))
	policyCert, err := ca.Issue("mta-sts.good.test", "mta-sts.bad.test", "mta-sts.testing.test")
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{policyCert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, policyPort, _ := net.SplitHostPort(srv.Listener.Addr().String())

	// good.test's MX: a second ledgermail, relaying on to a sink.
	sk := startSink(t, freePort(t))
	b := newServer(t, serverOpts{smarthost: sk.addr, trusted: true, extra: fmt.Sprintf("[tls]\ncert = %q\nkey = %q\n", certFile, keyFile)})
	b.start()
	_, mxPort, _ := net.SplitHostPort(b.sub)
	// bad.test's and testing.test's MX: a self-signed certificate.
	selfSigned, err := mxtest.Start(mxtest.Script{OfferSTARTTLS: true}, "127.0.0.2:"+mxPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(selfSigned.Close)

	zone := map[string][]string{
		"example.test.":    {"example.test. 60 IN MX 10 mx.good.test."},
		"good.test.":       {"good.test. 60 IN MX 10 mx.good.test."},
		"mx.good.test.":    {"mx.good.test. 60 IN A 127.0.0.1"},
		"bad.test.":        {"bad.test. 60 IN MX 10 mx.bad.test."},
		"mx.bad.test.":     {"mx.bad.test. 60 IN A 127.0.0.2"},
		"testing.test.":    {"testing.test. 60 IN MX 10 mx.testing.test."},
		"mx.testing.test.": {"mx.testing.test. 60 IN A 127.0.0.2"},
	}
	for _, d := range []string{"good.test", "bad.test", "testing.test"} {
		zone["_mta-sts."+d+"."] = []string{fmt.Sprintf(`_mta-sts.%s. 60 IN TXT "v=STSv1; id=%s-1"`, d, strings.TrimSuffix(d, ".test"))}
		zone["mta-sts."+d+"."] = []string{"mta-sts." + d + ". 60 IN A 127.0.0.1"}
	}
	dnsAddr := startDNS(t, zone)

	a := newServer(t, serverOpts{relay: fmt.Sprintf(`mode = "mx"
dns_servers = [%q]
mx_port = %s
tls_ca_file = %q
mta_sts_port = %s
connect_timeout = "2s"`, dnsAddr, mxPort, caFile, policyPort)})
	a.addUser("alice", "secret", "alice@example.test")
	a.start()
	good := a.submit(t, "alice@example.test", "u@good.test")
	bad := a.submit(t, "alice@example.test", "u@bad.test")
	testing := a.submit(t, "alice@example.test", "u@testing.test")

	waitFor(t, "good.test and testing.test delivered", 30*time.Second, func() bool {
		return len(sk.messages(t)) == 1 && len(selfSigned.Messages()) == 1
	})
	attempt := func(id string) replayLine {
		t.Helper()
		var last replayLine
		waitFor(t, "an attempt of "+id, 30*time.Second, func() bool {
			for _, l := range a.replay("--envelope", id) {
				if l["type"] == "Attempted" {
					last = l
				}
			}
			return last != nil
		})
		return last
	}
	if l := attempt(good); l["tls_policy"] != "mta-sts" || l["sts_mode"] != "enforce" || l["sts_id"] != "good-1" || l["tls_result"] != "success" || l["tls"] == nil {
		t.Errorf("good.test attempt: %v", l)
	}
	if l := attempt(bad); l["sts_mode"] != "enforce" || l["sts_id"] != "bad-1" || l["tls_result"] != "certificate-not-trusted" {
		t.Errorf("bad.test attempt: %v", l)
	}
	if l := attempt(testing); l["sts_mode"] != "testing" || l["tls_result"] != "certificate-not-trusted" {
		t.Errorf("testing.test attempt: %v", l)
	}
	// bad.test waits for a retry; nothing reached its MX but testing.test's message.
	q := a.queue()
	if len(q.Envelopes) != 1 || !strings.Contains(fmt.Sprint(q.Envelopes[0]), "u@bad.test") {
		t.Errorf("queue: %+v", q.Envelopes)
	}
	if got := selfSigned.Messages(); len(got) != 1 || !strings.Contains(got[0], "testing.test") {
		t.Errorf("the self-signed MX got %d messages: %q", len(got), got)
	}
	m := a.metrics()
	for _, want := range []string{
		`ledgermail_tls_policy_results_total{domain="good.test",mode="enforce",policy="mta-sts",result="success"} 1`,
		`ledgermail_tls_policy_results_total{domain="testing.test",mode="testing",policy="mta-sts",result="certificate-not-trusted"} 1`,
		`ledgermail_tls_policy_results_total{domain="bad.test",mode="enforce",policy="mta-sts",result="certificate-not-trusted"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
