package mxtest

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// DNS is an authoritative test name server (miekg/dns) on loopback UDP.
type DNS struct {
	Addr    string
	srv     *dns.Server
	queries atomic.Int64

	mu      sync.Mutex
	records map[string][]dns.RR
}

// StartDNS serves zone: owner name (FQDN, lower case) to records in
// presentation format ("x.test. 60 IN MX 10 mx.x.test."). Names not in the
// zone get NXDOMAIN; names in servfail get SERVFAIL.
func StartDNS(zone map[string][]string, servfail ...string) (*DNS, error) {
	return StartZone(Zone{Records: zone, ServFail: servfail})
}

// Zone is what StartZone serves.
type Zone struct {
	// Records: owner name (FQDN) to records in presentation format.
	Records map[string][]string
	// ServFail: names answered SERVFAIL.
	ServFail []string
	// Secure: names whose answers (records, NODATA or NXDOMAIN) carry the
	// AD bit, as a validating resolver sets it for DNSSEC-secure data.
	Secure []string
}

// StartZone serves z on loopback UDP.
func StartZone(z Zone) (*DNS, error) {
	zone, servfail := z.Records, z.ServFail
	secure := map[string]bool{}
	for _, s := range z.Secure {
		secure[strings.ToLower(dns.Fqdn(s))] = true
	}
	d := &DNS{records: map[string][]dns.RR{}}
	for name, list := range zone {
		if err := d.Set(name, list...); err != nil {
			return nil, err
		}
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d.Addr = pc.LocalAddr().String()
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		d.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		for _, s := range servfail {
			if strings.EqualFold(q.Name, dns.Fqdn(s)) {
				m.Rcode = dns.RcodeServerFailure
				w.WriteMsg(m)
				return
			}
		}
		m.AuthenticatedData = secure[strings.ToLower(q.Name)]
		d.mu.Lock()
		rrs, ok := d.records[strings.ToLower(q.Name)]
		d.mu.Unlock()
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{})
	d.srv = &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go d.srv.ActivateAndServe()
	<-started
	return d, nil
}

// Set replaces the records of name (presentation format); with none, the
// name exists without records (NODATA).
func (d *DNS) Set(name string, records ...string) error {
	var rrs []dns.RR
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			return err
		}
		rrs = append(rrs, rr)
	}
	d.mu.Lock()
	d.records[strings.ToLower(name)] = rrs
	d.mu.Unlock()
	return nil
}

// Queries returns how many queries were answered.
func (d *DNS) Queries() int64 { return d.queries.Load() }

// Close stops the server.
func (d *DNS) Close() { d.srv.Shutdown() }
