package mxtest

import (
	"net"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"
)

// DNS is an authoritative test name server (miekg/dns) on loopback UDP.
type DNS struct {
	Addr    string
	srv     *dns.Server
	queries atomic.Int64
}

// StartDNS serves zone: owner name (FQDN, lower case) to records in
// presentation format ("x.test. 60 IN MX 10 mx.x.test."). Names not in the
// zone get NXDOMAIN; names in servfail get SERVFAIL.
func StartDNS(zone map[string][]string, servfail ...string) (*DNS, error) {
	records := map[string][]dns.RR{}
	for name, list := range zone {
		records[strings.ToLower(name)] = nil
		for _, s := range list {
			rr, err := dns.NewRR(s)
			if err != nil {
				return nil, err
			}
			records[strings.ToLower(name)] = append(records[strings.ToLower(name)], rr)
		}
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &DNS{Addr: pc.LocalAddr().String()}
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
		rrs, ok := records[strings.ToLower(q.Name)]
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

// Queries returns how many queries were answered.
func (d *DNS) Queries() int64 { return d.queries.Load() }

// Close stops the server.
func (d *DNS) Close() { d.srv.Shutdown() }
