package mxrelay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// policyServer is an in-process HTTPS server answering
// /.well-known/mta-sts.txt per Host (mta-sts.<domain>).
type policyServer struct {
	srv  *httptest.Server
	port int
	hits atomic.Int32
	mu   sync.Mutex
	body map[string]string // host -> policy
}

func startPolicyServer(t *testing.T, cert tls.Certificate) *policyServer {
	t.Helper()
	p := &policyServer{body: map[string]string{}}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		host := r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		p.mu.Lock()
		body, ok := p.body[host]
		p.mu.Unlock()
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, body)
	}))
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	_, port, _ := net.SplitHostPort(p.srv.Listener.Addr().String())
	p.port, _ = strconv.Atoi(port)
	return p
}

func (p *policyServer) set(domain, policy string) {
	p.mu.Lock()
	p.body["mta-sts."+domain] = policy
	p.mu.Unlock()
}

// secEnv is a world for transport-security tests: a CA, a DNS zone, a
// policy server for mta-sts.<domain> names, and an MX port.
type secEnv struct {
	ca     *mxtest.CA
	dns    *mxtest.DNS
	policy *policyServer
	port   string
}

func newSecEnv(t *testing.T, zone mxtest.Zone) *secEnv {
	t.Helper()
	ca, err := mxtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	d, err := mxtest.StartZone(zone)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	cert, err := ca.Issue("mta-sts.sts.test", "mta-sts.other.test")
	if err != nil {
		t.Fatal(err)
	}
	return &secEnv{ca: ca, dns: d, policy: startPolicyServer(t, cert), port: freePort(t, "127.0.0.1")}
}

func (e *secEnv) relay(t *testing.T, mutate func(*Options)) Relay {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(e.ca.Cert)
	o := Options{Mode: "mx", DNSServers: []string{e.dns.Addr}, MXPort: atoi(e.port), Hostname: "lm.test",
		RootCAs: roots, MTASTS: true, MTASTSPort: e.policy.port, CommandTimeout: 5 * time.Second}
	if mutate != nil {
		mutate(&o)
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// peer starts an SMTP peer on the env's MX port with the given TLS
// certificate (nil: a self-signed one) and STARTTLS offered or not.
func (e *secEnv) peer(t *testing.T, cert *tls.Certificate, starttls bool) *mxtest.Peer {
	t.Helper()
	s := mxtest.Script{OfferSTARTTLS: starttls}
	if cert != nil {
		s.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	p, err := mxtest.Start(s, "127.0.0.1:"+e.port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func stsZone() map[string][]string {
	return map[string][]string{
		"sts.test.":          {"sts.test. 60 IN MX 10 mx.sts.test."},
		"mx.sts.test.":       {"mx.sts.test. 60 IN A 127.0.0.1"},
		"_mta-sts.sts.test.": {`_mta-sts.sts.test. 0 IN TXT "v=STSv1; id=20261201"`},
		"mta-sts.sts.test.":  {"mta-sts.sts.test. 60 IN A 127.0.0.1"},
	}
}

const enforcePolicy = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmx: *.backup.test\r\nmax_age: 86400\r\n"

func TestMTASTSEnforce(t *testing.T) {
	e := newSecEnv(t, mxtest.Zone{Records: stsZone()})
	e.policy.set("sts.test", enforcePolicy)
	good, err := e.ca.Issue("mx.sts.test")
	if err != nil {
		t.Fatal(err)
	}
	wrongName, err := e.ca.Issue("elsewhere.test")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		cert     *tls.Certificate
		starttls bool
		result   string
	}{
		{"good certificate", &good, true, "success"},
		{"self-signed certificate", nil, true, "certificate-not-trusted"},
		{"certificate for another name", &wrongName, true, "certificate-host-mismatch"},
		{"no STARTTLS", nil, false, "starttls-not-supported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := e.peer(t, c.cert, c.starttls)
			res := e.relay(t, nil).Deliver(context.Background(), msg("u@sts.test"), nil)
			o := res.Rcpts["u@sts.test"]
			want := Security{Policy: "mta-sts", Mode: "enforce", PolicyID: "20261201", Result: c.result}
			got := res.Security
			got.Detail = ""
			if got != want {
				t.Fatalf("security %+v, want %+v (outcome %v)", res.Security, want, o)
			}
			if c.result == "success" {
				if !o.Success() || res.TLS == "" || len(p.Messages()) != 1 {
					t.Fatalf("outcome %v over %q, %d messages: want delivered over TLS", o, res.TLS, len(p.Messages()))
				}
				return
			}
			if o.Success() || !o.Temporary() || len(p.Messages()) != 0 {
				t.Fatalf("outcome %v (%d messages at the peer): want deferred, nothing delivered", o, len(p.Messages()))
			}
		})
	}
}

func TestMTASTSEnforceRefusesUnlistedMX(t *testing.T) {
	zone := stsZone()
	zone["sts.test."] = []string{"sts.test. 60 IN MX 10 rogue.sts.test."}
	zone["rogue.sts.test."] = []string{"rogue.sts.test. 60 IN A 127.0.0.1"}
	e := newSecEnv(t, mxtest.Zone{Records: zone})
	e.policy.set("sts.test", enforcePolicy)
	good, _ := e.ca.Issue("rogue.sts.test")
	p := e.peer(t, &good, true)
	res := e.relay(t, nil).Deliver(context.Background(), msg("u@sts.test"), nil)
	if o := res.Rcpts["u@sts.test"]; !o.Temporary() || res.Security.Result != "validation-failure" {
		t.Fatalf("outcome %v, security %+v: want deferred, validation-failure", o, res.Security)
	}
	if p.Connections() != 0 {
		t.Fatalf("%d connections to an MX host the policy does not list", p.Connections())
	}
}

func TestMTASTSTestingDeliversAndReports(t *testing.T) {
	e := newSecEnv(t, mxtest.Zone{Records: stsZone()})
	e.policy.set("sts.test", strings.Replace(enforcePolicy, "enforce", "testing", 1))
	p := e.peer(t, nil, true) // self-signed: fails the check
	res := e.relay(t, nil).Deliver(context.Background(), msg("u@sts.test"), nil)
	if o := res.Rcpts["u@sts.test"]; !o.Success() || len(p.Messages()) != 1 {
		t.Fatalf("outcome %v, %d messages: testing mode must deliver", o, len(p.Messages()))
	}
	if s := res.Security; s.Policy != "mta-sts" || s.Mode != "testing" || s.Result != "certificate-not-trusted" {
		t.Fatalf("security %+v: want the failure reported", s)
	}
}

func TestMTASTSPolicyCache(t *testing.T) {
	e := newSecEnv(t, mxtest.Zone{Records: stsZone()})
	e.policy.set("sts.test", enforcePolicy)
	good, _ := e.ca.Issue("mx.sts.test")
	p := e.peer(t, &good, true)
	r := e.relay(t, nil)
	for i := 0; i < 3; i++ {
		if o := r.Deliver(context.Background(), msg("u@sts.test"), nil).Rcpts["u@sts.test"]; !o.Success() {
			t.Fatalf("delivery %d: %v", i, o)
		}
	}
	if n := e.policy.hits.Load(); n != 1 {
		t.Fatalf("%d policy fetches for three deliveries within max_age, want 1", n)
	}
	// A new id in the TXT record: the policy is fetched again.
	e.dns.Set("_mta-sts.sts.test.", `_mta-sts.sts.test. 0 IN TXT "v=STSv1; id=20261202"`)
	res := r.Deliver(context.Background(), msg("u@sts.test"), nil)
	if n := e.policy.hits.Load(); n != 2 || res.Security.PolicyID != "20261202" {
		t.Fatalf("after the id changed: %d fetches, policy id %q; want 2 and the new id", n, res.Security.PolicyID)
	}
	// The TXT record gone: the cached policy still applies (RFC 8461 §5.1).
	e.dns.Set("_mta-sts.sts.test.")
	res = r.Deliver(context.Background(), msg("u@sts.test"), nil)
	if res.Security.Policy != "mta-sts" || res.Security.Mode != "enforce" || e.policy.hits.Load() != 2 {
		t.Fatalf("without the TXT record: security %+v; want the cached policy", res.Security)
	}
	if len(p.Messages()) != 5 {
		t.Fatalf("%d messages at the peer, want 5", len(p.Messages()))
	}
}

func TestMTASTSWithoutPolicy(t *testing.T) {
	zone := stsZone()
	delete(zone, "_mta-sts.sts.test.")
	e := newSecEnv(t, mxtest.Zone{Records: zone, ServFail: []string{"_mta-sts.other.test"}})
	e.dns.Set("other.test.", "other.test. 60 IN MX 10 mx.sts.test.")
	p := e.peer(t, nil, true)
	r := e.relay(t, nil)
	// NXDOMAIN for the TXT record, and a failed lookup: no policy.
	for _, rcpt := range []string{"u@sts.test", "u@other.test"} {
		res := r.Deliver(context.Background(), msg(rcpt), nil)
		if o := res.Rcpts[rcpt]; !o.Success() || res.Security != (Security{}) {
			t.Fatalf("%s: outcome %v, security %+v: want delivered without a policy", rcpt, o, res.Security)
		}
	}
	if e.policy.hits.Load() != 0 || len(p.Messages()) != 2 {
		t.Fatalf("%d policy fetches, %d messages", e.policy.hits.Load(), len(p.Messages()))
	}
}

func TestMTASTSFetchFailures(t *testing.T) {
	e := newSecEnv(t, mxtest.Zone{Records: stsZone()})
	p := e.peer(t, nil, true)
	cases := []struct {
		name   string
		setup  func(*Options)
		policy string
		result string
	}{
		{"policy server down", func(o *Options) { o.MTASTSPort = atoi(freePort(t, "127.0.0.1")) }, enforcePolicy, "sts-policy-fetch-error"},
		{"untrusted policy server", func(o *Options) { o.RootCAs = x509.NewCertPool() }, enforcePolicy, "sts-webpki-invalid"},
		{"no policy file", nil, "", "sts-policy-fetch-error"},
		{"invalid policy", nil, "version: STSv1\nmode: sometimes\nmax_age: 10\n", "sts-policy-invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.policy.mu.Lock()
			delete(e.policy.body, "mta-sts.sts.test")
			e.policy.mu.Unlock()
			if c.policy != "" {
				e.policy.set("sts.test", c.policy)
			}
			before := len(p.Messages())
			res := e.relay(t, c.setup).Deliver(context.Background(), msg("u@sts.test"), nil)
			// RFC 8461 §3.3: without a policy, deliver as if there were none.
			if o := res.Rcpts["u@sts.test"]; !o.Success() || len(p.Messages()) != before+1 {
				t.Fatalf("outcome %v: want delivered", o)
			}
			if res.Security.Policy != "mta-sts" || res.Security.Result != c.result {
				t.Fatalf("security %+v, want result %s", res.Security, c.result)
			}
		})
	}
}

func TestParseSTSPolicy(t *testing.T) {
	p, err := parseSTSPolicy("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 9999999999\n")
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != "enforce" || p.MaxAge != maxSTSAge || len(p.MX) != 2 {
		t.Fatalf("%+v", p)
	}
	match := map[string]bool{"mail.example.com": true, "MAIL.example.com.": true, "a.example.net": true,
		"a.b.example.net": false, "example.net": false, "other.example.com": false}
	for host, want := range match {
		if p.matches(host) != want {
			t.Errorf("matches(%q) = %v, want %v", host, !want, want)
		}
	}
	for _, bad := range []string{
		"mode: enforce\nmx: a\nmax_age: 1\n",                  // no version
		"version: STSv1\nmode: enforce\nmax_age: 1\n",         // enforce without mx
		"version: STSv1\nmode: enforce\nmx: a\n",              // no max_age
		"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",   // bad mode
		"version: STSv1\nmode enforce\nmx: a\nmax_age: 1\n",   // not key: value
		"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",  // version
		"version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n", // negative age
	} {
		if _, err := parseSTSPolicy(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	txt := func(recs ...string) *dns.Msg {
		m := new(dns.Msg)
		for _, r := range recs {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Rrtype: dns.TypeTXT}, Txt: []string{r}})
		}
		return m
	}
	if id := stsTXT(txt("v=spf1 -all", "v=STSv1; id=abc;")); id != "abc" {
		t.Errorf("id %q", id)
	}
	if id := stsTXT(txt("v=STSv1; id=a", "v=STSv1; id=b")); id != "" {
		t.Errorf("two records gave id %q, want none", id)
	}
}

// daneEnv: dane.test's MX mx.dane.test, with the MX RRset and the TLSA
// records at _<port>._tcp.mx.dane.test answered with AD (secure) unless
// insecure; tlsa are the TLSA records' rdata ("3 1 1 <hex>").
func daneEnv(t *testing.T, insecure bool, tlsa ...string) *secEnv {
	t.Helper()
	port := freePort(t, "127.0.0.1")
	name := "_" + port + "._tcp.mx.dane.test."
	zone := mxtest.Zone{Records: map[string][]string{
		"dane.test.":    {"dane.test. 60 IN MX 10 mx.dane.test."},
		"mx.dane.test.": {"mx.dane.test. 60 IN A 127.0.0.1"},
		name:            nil,
	}}
	for _, r := range tlsa {
		zone.Records[name] = append(zone.Records[name], name+" 60 IN TLSA "+r)
	}
	if !insecure {
		zone.Secure = []string{"dane.test.", name}
	}
	e := newSecEnv(t, zone)
	e.port = port
	return e
}

func tlsaOf(t *testing.T, usage, selector, matching uint8, c *x509.Certificate) string {
	t.Helper()
	h, err := dns.CertificateToDANE(selector, matching, c)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d %d %d %s", usage, selector, matching, h)
}

func TestDANE(t *testing.T) {
	ca, err := mxtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("mx.dane.test")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ca.Issue("mx.dane.test")
	wrongName, _ := ca.Issue("elsewhere.test")
	cases := []struct {
		name     string
		insecure bool
		tlsa     []string
		cert     tls.Certificate
		starttls bool
		dnssec   bool
		result   string // "" : no policy applied
		deliver  bool
	}{
		{"DANE-EE 3 1 1 matches", false, []string{tlsaOf(t, 3, 1, 1, leaf.Leaf)}, leaf, true, true, "success", true},
		{"DANE-EE 3 0 2 matches", false, []string{tlsaOf(t, 3, 0, 2, leaf.Leaf)}, leaf, true, true, "success", true},
		{"DANE-EE needs no name", false, []string{tlsaOf(t, 3, 1, 1, wrongName.Leaf)}, wrongName, true, true, "success", true},
		{"DANE-EE does not match", false, []string{tlsaOf(t, 3, 1, 1, other.Leaf)}, leaf, true, true, "validation-failure", false},
		{"DANE-TA 2 0 1 matches the CA", false, []string{tlsaOf(t, 2, 0, 1, ca.Cert)}, leaf, true, true, "success", true},
		{"DANE-TA 2 1 1 and the wrong name", false, []string{tlsaOf(t, 2, 1, 1, ca.Cert)}, wrongName, true, true, "certificate-host-mismatch", false},
		{"TLSA and no STARTTLS", false, []string{tlsaOf(t, 3, 1, 1, leaf.Leaf)}, leaf, false, true, "starttls-not-supported", false},
		{"only unusable records", false, []string{tlsaOf(t, 1, 1, 1, other.Leaf)}, leaf, true, true, "tlsa-invalid", true},
		{"insecure answers", true, []string{tlsaOf(t, 3, 1, 1, other.Leaf)}, leaf, true, true, "", true},
		{"dnssec off", false, []string{tlsaOf(t, 3, 1, 1, other.Leaf)}, leaf, true, false, "", true},
		{"no TLSA records", false, nil, leaf, true, true, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := daneEnv(t, c.insecure, c.tlsa...)
			p := e.peer(t, &c.cert, c.starttls)
			res := e.relay(t, func(o *Options) { o.DNSSEC = c.dnssec }).Deliver(context.Background(), msg("u@dane.test"), nil)
			o := res.Rcpts["u@dane.test"]
			if c.result == "" {
				if res.Security != (Security{}) {
					t.Fatalf("security %+v, want no policy", res.Security)
				}
			} else if res.Security.Policy != "dane" || res.Security.Result != c.result {
				t.Fatalf("security %+v, want dane and %s (outcome %v)", res.Security, c.result, o)
			}
			if c.deliver != o.Success() || len(p.Messages()) != map[bool]int{true: 1}[c.deliver] {
				t.Fatalf("outcome %v, %d messages; want delivered=%v", o, len(p.Messages()), c.deliver)
			}
			if !c.deliver && !o.Temporary() {
				t.Fatalf("outcome %v: a DANE failure defers", o)
			}
		})
	}
}

// DANE takes precedence over MTA-STS (RFC 8461 §2): a host whose TLSA
// records match is used even though the MTA-STS policy does not list it.
func TestDANEBeforeMTASTS(t *testing.T) {
	ca, _ := mxtest.NewCA()
	leaf, _ := ca.Issue("mx.dane.test")
	e := daneEnv(t, false, tlsaOf(t, 3, 1, 1, leaf.Leaf))
	e.dns.Set("_mta-sts.dane.test.", `_mta-sts.dane.test. 0 IN TXT "v=STSv1; id=1"`)
	e.dns.Set("mta-sts.dane.test.", "mta-sts.dane.test. 60 IN A 127.0.0.1")
	e.policy.set("dane.test", "version: STSv1\nmode: enforce\nmx: other.test\nmax_age: 600\n")
	p := e.peer(t, &leaf, true)
	res := e.relay(t, func(o *Options) { o.DNSSEC = true }).Deliver(context.Background(), msg("u@dane.test"), nil)
	if o := res.Rcpts["u@dane.test"]; !o.Success() || res.Security.Policy != "dane" || len(p.Messages()) != 1 {
		t.Fatalf("outcome %v, security %+v", o, res.Security)
	}
}

func TestDANETLSALookupFailureDefers(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	e := newSecEnv(t, mxtest.Zone{Records: map[string][]string{
		"dane.test.":    {"dane.test. 60 IN MX 10 mx.dane.test."},
		"mx.dane.test.": {"mx.dane.test. 60 IN A 127.0.0.1"},
	}, Secure: []string{"dane.test."}, ServFail: []string{"_" + port + "._tcp.mx.dane.test."}})
	e.port = port
	p := e.peer(t, nil, true)
	res := e.relay(t, func(o *Options) { o.DNSSEC = true }).Deliver(context.Background(), msg("u@dane.test"), nil)
	if o := res.Rcpts["u@dane.test"]; !o.Temporary() || res.Security.Result != "dnssec-invalid" || p.Connections() != 0 {
		t.Fatalf("outcome %v, security %+v, %d connections", o, res.Security, p.Connections())
	}
}
