package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// errPermanentDNS marks resolution failures that will not heal by waiting.
type dnsFailure struct {
	outcome Outcome
}

func (d *dnsFailure) Error() string { return d.outcome.String() }

type resolver struct {
	servers []string
	client  *dns.Client
	// dnssec sets the AD bit in queries (RFC 6840 §5.7), asking a
	// validating resolver to say which answers are DNSSEC-secure.
	dnssec bool
	now    func() time.Time

	mu    sync.Mutex
	cache map[cacheKey]cached
}

type cacheKey struct {
	name  string
	qtype uint16
}

type cached struct {
	msg     *dns.Msg
	expires time.Time
}

// maxCacheEntries bounds the answer cache; when full it is cleared.
const maxCacheEntries = 100000

func newResolver(servers []string) (*resolver, error) {
	if len(servers) == 0 {
		cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("relay.dns_servers is empty and /etc/resolv.conf cannot be read: %w", err)
		}
		for _, s := range cfg.Servers {
			servers = append(servers, net.JoinHostPort(s, cfg.Port))
		}
	}
	return &resolver{servers: servers, client: &dns.Client{Timeout: 5 * time.Second}, now: time.Now, cache: map[cacheKey]cached{}}, nil
}

// query answers from the cache while the answer's TTL lasts, else asks.
// Answers and NXDOMAIN are cached; failures are not.
func (r *resolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	key := cacheKey{strings.ToLower(dns.Fqdn(name)), qtype}
	now := r.now()
	r.mu.Lock()
	if c, ok := r.cache[key]; ok && now.Before(c.expires) {
		r.mu.Unlock()
		return c.msg, nil
	}
	r.mu.Unlock()
	in, err := r.ask(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	if ttl, ok := cacheTTL(in); ok {
		r.mu.Lock()
		if len(r.cache) >= maxCacheEntries {
			r.cache = map[cacheKey]cached{}
		}
		r.cache[key] = cached{msg: in, expires: now.Add(ttl)}
		r.mu.Unlock()
	}
	return in, nil
}

// cacheTTL is the smallest TTL of the answer (or the SOA minimum of a
// negative answer, RFC 2308); SERVFAIL and the like are not cached.
func cacheTTL(in *dns.Msg) (time.Duration, bool) {
	if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
		return 0, false
	}
	var ttl uint32 = 3600
	found := false
	for _, rr := range in.Answer {
		if h := rr.Header(); !found || h.Ttl < ttl {
			ttl, found = h.Ttl, true
		}
	}
	if !found {
		ttl = 60
		for _, rr := range in.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = min(soa.Hdr.Ttl, soa.Minttl)
			}
		}
	}
	if ttl == 0 {
		return 0, false
	}
	return time.Duration(ttl) * time.Second, true
}

// ask queries each server in turn; it retries over TCP when truncated.
func (r *resolver) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = r.dnssec
	var lastErr error = errors.New("no DNS servers configured")
	for _, s := range r.servers {
		in, _, err := r.client.ExchangeContext(ctx, m, s)
		if err == nil && in.Truncated {
			tcp := &dns.Client{Net: "tcp", Timeout: r.client.Timeout}
			in, _, err = tcp.ExchangeContext(ctx, m, s)
		}
		if err != nil {
			lastErr = err
			continue
		}
		return in, nil
	}
	return nil, lastErr
}

// mxHosts returns the hosts to try for domain, in order, and whether the
// answer was DNSSEC-secure (AD set, with dnssec). A domain without MX
// records is its own host (implicit MX); a null MX is a permanent failure.
func (r *resolver) mxHosts(ctx context.Context, domain string) ([]string, bool, error) {
	hosts, in, err := r.mxLookup(ctx, domain)
	return hosts, err == nil && r.dnssec && in.AuthenticatedData, err
}

func (r *resolver) mxLookup(ctx context.Context, domain string) ([]string, *dns.Msg, error) {
	in, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, nil, &dnsFailure{temporary("MX lookup for %s failed: %v", domain, err)}
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, nil, &dnsFailure{permanent(550, "5.1.2", "domain %s does not exist (NXDOMAIN)", domain)}
	default:
		return nil, nil, &dnsFailure{temporary("MX lookup for %s: %s", domain, dns.RcodeToString[in.Rcode])}
	}
	var mxs []*dns.MX
	for _, rr := range in.Answer {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
		}
	}
	if len(mxs) == 0 {
		return []string{domain}, in, nil
	}
	if len(mxs) == 1 && mxs[0].Mx == "." {
		return nil, nil, &dnsFailure{permanent(556, "5.1.10", "domain %s accepts no mail (null MX)", domain)}
	}
	// Equal preferences in random order, then a stable sort by preference.
	rand.Shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Preference < mxs[j].Preference })
	hosts := make([]string, 0, len(mxs))
	for _, mx := range mxs {
		if mx.Mx != "." {
			hosts = append(hosts, strings.TrimSuffix(mx.Mx, "."))
		}
	}
	return hosts, in, nil
}

// addrs resolves host to its IPv4 and IPv6 addresses (a literal IP is itself).
func (r *resolver) addrs(ctx context.Context, host string) ([]string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []string{ip.String()}, nil
	}
	var out []string
	var lastErr error
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		in, err := r.query(ctx, host, t)
		if err != nil {
			lastErr = err
			continue
		}
		for _, rr := range in.Answer {
			switch v := rr.(type) {
			case *dns.A:
				out = append(out, v.A.String())
			case *dns.AAAA:
				out = append(out, v.AAAA.String())
			}
		}
	}
	if len(out) == 0 && lastErr != nil {
		return nil, lastErr
	}
	return out, nil
}

type mxRelay struct {
	opts     Options
	resolver *resolver
	sts      *stsFetcher // nil: MTA-STS off
}

// Deliver groups the recipients by domain and delivers each group to its
// domain's MX hosts.
func (x *mxRelay) Deliver(ctx context.Context, m Message, pool *Pool) Result {
	groups := map[string][]string{}
	var order []string
	for _, r := range m.Recipients {
		d := strings.ToLower(domainOf(r))
		if _, ok := groups[d]; !ok {
			order = append(order, d)
		}
		groups[d] = append(groups[d], r)
	}
	total := Result{Rcpts: map[string]Outcome{}}
	for _, d := range order {
		sub := m
		sub.Recipients = groups[d]
		res := x.deliverDomain(ctx, d, sub, pool)
		total.Host, total.TLS, total.Security = res.Host, res.TLS, res.Security
		for k, v := range res.Rcpts {
			total.Rcpts[k] = v
		}
	}
	return total
}

func (x *mxRelay) deliverDomain(ctx context.Context, domain string, m Message, pool *Pool) Result {
	if domain == "" {
		return Result{Rcpts: allRcpts(m.Recipients, permanent(501, "5.1.3", "recipient has no domain"))}
	}
	if strings.HasPrefix(domain, "[") {
		// An address literal is its own host: no MX lookup (RFC 5321 §5.1).
		ip, ok := addressLiteral(domain)
		if !ok {
			return Result{Rcpts: allRcpts(m.Recipients, permanent(501, "5.1.3", "bad address literal %s", domain))}
		}
		return deliverHost(ctx, x.opts, net.JoinHostPort(ip.String(), strconv.Itoa(x.opts.MXPort)), false, m, pool, nil)
	}
	hosts, secure, err := x.resolver.mxHosts(ctx, domain)
	if err != nil {
		var df *dnsFailure
		errors.As(err, &df)
		return Result{Rcpts: allRcpts(m.Recipients, df.outcome)}
	}
	implicit := len(hosts) == 1 && hosts[0] == domain
	last := Result{Rcpts: allRcpts(m.Recipients, temporary("no address found for the MX hosts of %s", domain))}
	var sts *stsPolicy
	var stsFailure Security
	if x.sts != nil {
		var result, reason string
		sts, result, reason = x.sts.policy(ctx, domain)
		if result != "" {
			stsFailure = Security{Policy: "mta-sts", Result: result, Detail: reason}
			last.Security = stsFailure
		}
	}
	for _, h := range hosts {
		sec, refusal := x.hostSecurity(ctx, h, secure, sts)
		if sec == nil && stsFailure.Policy != "" {
			sec = &hostSecurity{Security: stsFailure, serverName: h}
		}
		if refusal != nil {
			last = Result{Host: h, Rcpts: allRcpts(m.Recipients, *refusal), Security: sec.Security}
			continue
		}
		addrs, err := x.resolver.addrs(ctx, h)
		if err != nil {
			last = Result{Host: h, Rcpts: allRcpts(m.Recipients, temporary("address lookup for %s failed: %v", h, err))}
			continue
		}
		if len(addrs) == 0 && implicit {
			// No MX and no address records: nowhere to deliver, ever (as
			// Postfix: 5.4.4), rather than retrying for days.
			return Result{Rcpts: allRcpts(m.Recipients, permanent(550, "5.4.4", "domain %s has no MX and no address records", domain))}
		}
		for _, a := range addrs {
			res := deliverHost(ctx, x.opts, net.JoinHostPort(a, strconv.Itoa(x.opts.MXPort)), false, m, pool, sec)
			last = res
			if tookTransaction(res) {
				return res
			}
		}
	}
	return last
}

// hostSecurity decides what a connection to the MX host h must satisfy:
// DANE when the MX RRset was secure and h has secure TLSA records (it then
// takes precedence over MTA-STS, RFC 8461 §2), else the MTA-STS policy,
// else nothing (nil). A non-nil refusal means h must not be tried.
func (x *mxRelay) hostSecurity(ctx context.Context, h string, mxSecure bool, sts *stsPolicy) (*hostSecurity, *Outcome) {
	if mxSecure {
		name := fmt.Sprintf("_%d._tcp.%s", x.opts.MXPort, h)
		in, err := x.resolver.query(ctx, name, dns.TypeTLSA)
		switch {
		case err != nil || (in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError):
			// A failed TLSA lookup under a secure MX: the host is unusable
			// (RFC 7672 §2.2), not one to reach without authentication.
			sec := &hostSecurity{Security: Security{Policy: "dane", Result: resultDNSSECInvalid, Detail: "TLSA lookup for " + name + " failed"}, serverName: h, require: true}
			o := temporary("TLSA lookup for %s failed; not delivering to %s without it (DANE)", name, h)
			return sec, &o
		case in.AuthenticatedData && len(in.Answer) > 0:
			sec := &hostSecurity{Security: Security{Policy: "dane"}, serverName: h, require: true, tlsa: usableTLSA(in)}
			if len(sec.tlsa) == 0 {
				sec.Result, sec.Detail = resultTLSAInvalid, "no usable TLSA record at "+name+": TLS without authentication"
			}
			return sec, nil
		}
	}
	if sts == nil {
		return nil, nil
	}
	sec := &hostSecurity{Security: Security{Policy: "mta-sts", Mode: sts.Mode, PolicyID: sts.ID}, serverName: h,
		require: sts.Mode == "enforce", roots: x.opts.RootCAs}
	if !sts.matches(h) {
		sec.Result, sec.Detail = resultValidationFailed, fmt.Sprintf("MX host %s does not match the MTA-STS policy", h)
		if sec.require {
			o := temporary("MX host %s is not allowed by the MTA-STS policy (id %s) of its domain", h, sts.ID)
			return sec, &o
		}
	}
	return sec, nil
}

// tookTransaction reports whether a host gave a final answer for at least one
// recipient; otherwise the next host is tried.
func tookTransaction(r Result) bool {
	for _, o := range r.Rcpts {
		if !o.Temporary() {
			return true
		}
	}
	return false
}

// addressLiteral parses "[192.0.2.1]" or "[IPv6:2001:db8::1]".
func addressLiteral(d string) (net.IP, bool) {
	if !strings.HasPrefix(d, "[") || !strings.HasSuffix(d, "]") {
		return nil, false
	}
	inner := d[1 : len(d)-1]
	v6 := false
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		inner, v6 = inner[5:], true
	}
	ip := net.ParseIP(inner)
	if ip == nil || (v6 != (ip.To4() == nil)) {
		return nil, false
	}
	return ip, true
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}
