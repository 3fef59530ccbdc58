package mxrelay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// MTA-STS (RFC 8461): a domain publishes, in a TXT record at
// _mta-sts.<domain>, the id of a policy served over HTTPS at
// https://mta-sts.<domain>/.well-known/mta-sts.txt; the policy names the MX
// hosts that may receive the domain's mail and whether TLS with a
// certificate valid for them is required (enforce) or only reported
// (testing). Policies are cached for their max_age and refetched when the
// TXT record's id changes.

// stsPolicy is a parsed policy.
type stsPolicy struct {
	ID      string
	Mode    string // "enforce", "testing" or "none"
	MX      []string
	MaxAge  time.Duration
	expires time.Time
}

// maxSTSAge is the longest max_age a policy may have (RFC 8461 §3.2).
const maxSTSAge = 31557600 * time.Second

// maxSTSPolicyBytes bounds the policy body read.
const maxSTSPolicyBytes = 64 << 10

// parseSTSPolicy parses the body of mta-sts.txt (RFC 8461 §3.2).
func parseSTSPolicy(body string) (*stsPolicy, error) {
	p := &stsPolicy{}
	var version, age string
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %q is not \"key: value\"", line)
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "version":
			version = v
		case "mode":
			p.Mode = v
		case "max_age":
			age = v
		case "mx":
			p.MX = append(p.MX, strings.ToLower(strings.TrimSuffix(v, ".")))
		}
	}
	if version != "STSv1" {
		return nil, fmt.Errorf("version %q is not STSv1", version)
	}
	switch p.Mode {
	case "enforce", "testing":
		if len(p.MX) == 0 {
			return nil, fmt.Errorf("mode %s without any mx", p.Mode)
		}
	case "none":
	default:
		return nil, fmt.Errorf("mode %q is not enforce, testing or none", p.Mode)
	}
	n, err := strconv.ParseUint(age, 10, 64)
	if err != nil || len(age) > 10 {
		return nil, fmt.Errorf("max_age %q is not a number of seconds (at most 10 digits)", age)
	}
	p.MaxAge = time.Duration(min(n, uint64(maxSTSAge/time.Second))) * time.Second
	return p, nil
}

// matches reports whether the MX host name is allowed by the policy: an
// exact name, or "*.example.com" standing for one leftmost label.
func (p *stsPolicy) matches(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			if i := strings.IndexByte(host, '.'); i > 0 && host[i+1:] == rest {
				return true
			}
		} else if host == pat {
			return true
		}
	}
	return false
}

// stsTXT extracts the id of the one "v=STSv1" TXT record, or "" when there
// is none (or more than one, which RFC 8461 §3.1 treats as none).
func stsTXT(in *dns.Msg) string {
	var ids []string
	for _, rr := range in.Answer {
		t, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		rec := strings.Join(t.Txt, "")
		if !strings.HasPrefix(rec, "v=STSv1;") && rec != "v=STSv1" {
			continue
		}
		id := ""
		for _, f := range strings.Split(rec, ";") {
			if k, v, ok := strings.Cut(strings.TrimSpace(f), "="); ok && k == "id" {
				id = v
			}
		}
		if id == "" {
			return ""
		}
		ids = append(ids, id)
	}
	if len(ids) != 1 {
		return ""
	}
	return ids[0]
}

// stsFetcher finds a domain's policy: its TXT record through the relay's
// resolver, the policy over HTTPS (host resolved through the same
// resolver), and an in-memory cache.
type stsFetcher struct {
	resolver *resolver
	client   *http.Client
	port     int
	now      func() time.Time

	mu    sync.Mutex
	cache map[string]*stsPolicy
}

// maxSTSCache bounds the policy cache; when full it is cleared.
const maxSTSCache = 10000

func newSTSFetcher(r *resolver, roots *x509.CertPool, port int, timeout time.Duration) *stsFetcher {
	f := &stsFetcher{resolver: r, port: port, now: time.Now, cache: map[string]*stsPolicy{}}
	if f.port == 0 {
		f.port = 443
	}
	dialer := &net.Dialer{Timeout: timeout}
	tr := &http.Transport{
		// The policy host is resolved like every other name: through the
		// relay's DNS servers.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			ips, err := r.addrs(ctx, host)
			if err != nil {
				return nil, err
			}
			if len(ips) == 0 {
				return nil, fmt.Errorf("%s has no address", host)
			}
			var last error
			for _, ip := range ips {
				c, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip, strconv.Itoa(f.port)))
				if err == nil {
					return c, nil
				}
				last = err
			}
			return nil, last
		},
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: timeout,
		DisableKeepAlives:   true,
	}
	f.client = &http.Client{Transport: tr, Timeout: timeout,
		// RFC 8461 §3.3: HTTP redirects are not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return f
}

// policy returns the domain's policy in force (nil: none) and, when
// finding it failed, the TLS-RPT result type of the failure
// (sts-policy-fetch-error, sts-webpki-invalid, sts-policy-invalid) with
// its reason. A failure with a cached, unexpired policy keeps that policy.
func (f *stsFetcher) policy(ctx context.Context, domain string) (*stsPolicy, string, string) {
	now := f.now()
	f.mu.Lock()
	cached := f.cache[domain]
	f.mu.Unlock()
	if cached != nil && !now.Before(cached.expires) {
		cached = nil
	}
	usable := func(p *stsPolicy) *stsPolicy {
		if p == nil || p.Mode == "none" {
			return nil
		}
		return p
	}
	in, err := f.resolver.query(ctx, "_mta-sts."+domain, dns.TypeTXT)
	id := ""
	if err == nil && in.Rcode == dns.RcodeSuccess {
		id = stsTXT(in)
	}
	if id == "" {
		// No record (or a failed lookup): no policy, unless one is cached.
		return usable(cached), "", ""
	}
	if cached != nil && cached.ID == id {
		return usable(cached), "", ""
	}
	p, result, reason := f.fetch(ctx, domain)
	if p == nil {
		return usable(cached), result, reason
	}
	p.ID = id
	p.expires = now.Add(p.MaxAge)
	f.mu.Lock()
	if len(f.cache) >= maxSTSCache {
		f.cache = map[string]*stsPolicy{}
	}
	f.cache[domain] = p
	f.mu.Unlock()
	return usable(p), "", ""
}

// fetch gets and parses https://mta-sts.<domain>/.well-known/mta-sts.txt.
func (f *stsFetcher) fetch(ctx context.Context, domain string) (*stsPolicy, string, string) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "sts-policy-fetch-error", err.Error()
	}
	resp, err := f.client.Do(req)
	if err != nil {
		var ce *tls.CertificateVerificationError
		if errors.As(err, &ce) {
			return nil, "sts-webpki-invalid", fmt.Sprintf("%s: %v", url, ce.Err)
		}
		return nil, "sts-policy-fetch-error", fmt.Sprintf("%s: %v", url, unwrapNet(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "sts-policy-fetch-error", fmt.Sprintf("%s: HTTP %s", url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, "sts-policy-invalid", fmt.Sprintf("%s: content type %q is not text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSTSPolicyBytes+1))
	if err != nil {
		return nil, "sts-policy-fetch-error", fmt.Sprintf("%s: %v", url, err)
	}
	if len(body) > maxSTSPolicyBytes {
		return nil, "sts-policy-invalid", fmt.Sprintf("%s: longer than %d bytes", url, maxSTSPolicyBytes)
	}
	p, err := parseSTSPolicy(string(body))
	if err != nil {
		return nil, "sts-policy-invalid", fmt.Sprintf("%s: %v", url, err)
	}
	return p, "", ""
}
