// Package mxrelay is ledgermail's SMTP client side: it takes one envelope
// (a sender, recipients of one destination, a body) to the next hop and
// reports a typed outcome per recipient.
//
// The contract: Deliver never returns a bare error. Every recipient gets an
// Outcome; an outcome that could not be classified (connection refused,
// timeout, a protocol error) is temporary, so the envelope is retried rather
// than lost. 5xx replies are permanent for the recipients they concern only.
package mxrelay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"time"
)

// TLSMode says how the relay uses STARTTLS.
type TLSMode string

// TLS modes of [relay] tls.
const (
	TLSOpportunistic TLSMode = "opportunistic" // STARTTLS when offered
	TLSRequired      TLSMode = "required"      // defer when not offered
	TLSNone          TLSMode = "none"          // never
)

// Options configure a Relay. Zero durations take the defaults of docs/CONFIG.md.
type Options struct {
	// Mode is "mx" (each recipient domain's MX hosts) or "static".
	Mode string
	// Smarthost is host:port for Mode "static".
	Smarthost string
	// Username and Password authenticate to the smarthost (AUTH PLAIN, only
	// over TLS) when set.
	Username, Password string
	// DNSServers are ip:port resolvers for Mode "mx"; empty: /etc/resolv.conf.
	DNSServers []string
	// MXPort is the port of MX hosts (25).
	MXPort int
	// Hostname is the name said in EHLO.
	Hostname string
	TLS      TLSMode
	// TLSFallbackPlaintext: with opportunistic TLS, a failed STARTTLS
	// handshake is retried at once in plaintext instead of deferring.
	TLSFallbackPlaintext bool
	// TLSVerify requires the peer's certificate to be valid for its name
	// (system roots); without it TLS is unauthenticated encryption.
	TLSVerify bool
	// TLSConfig is used for STARTTLS; nil: the system roots, with
	// verification relaxed for opportunistic TLS (as MTAs do).
	TLSConfig *tls.Config
	// RootCAs verify certificates (TLSVerify, MTA-STS hosts and policy
	// servers); nil: the system roots. [relay] tls_ca_file adds to them.
	RootCAs *x509.CertPool
	// MTASTS applies the recipient domains' MTA-STS policies (RFC 8461) in
	// mode "mx"; MTASTSPort is the policy server's port (443).
	MTASTS     bool
	MTASTSPort int
	// DNSSEC trusts the resolvers to validate: answers with the AD bit are
	// DNSSEC-secure, and DANE (RFC 7672) applies to MX hosts whose MX
	// RRset and TLSA records are.
	DNSSEC         bool
	ConnectTimeout time.Duration
	CommandTimeout time.Duration
	DataTimeout    time.Duration
}

func (o *Options) defaults() {
	if o.MXPort == 0 {
		o.MXPort = 25
	}
	if o.Hostname == "" {
		o.Hostname = "localhost"
	}
	if o.TLS == "" {
		o.TLS = TLSOpportunistic
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 20 * time.Second
	}
	if o.CommandTimeout == 0 {
		o.CommandTimeout = 10 * time.Second
	}
	if o.DataTimeout == 0 {
		o.DataTimeout = 20 * time.Second
	}
}

// Message is what one delivery sends: recipients all of one destination.
type Message struct {
	// Envelope is the envelope ID, for logs.
	Envelope   string
	From       string
	Recipients []string
	// Body returns a fresh reader of the full message (headers and body,
	// CRLF line endings); it may be called once per host tried.
	Body func() io.Reader
	Size int64
}

// Outcome is the typed result of one recipient.
type Outcome struct {
	Code     int    // SMTP reply code; 0 when no reply was had
	Enhanced string // e.g. "5.1.1"; empty when the peer gave none
	Message  string
	temp     bool
}

// Temporary reports whether the recipient should be retried.
func (o Outcome) Temporary() bool { return o.temp }

// TemporaryFailure is an outcome for a failure that no next hop reported
// (an internal error): temporary, so the recipient is retried.
func TemporaryFailure(msg string) Outcome { return Outcome{Message: msg, temp: true} }

// Success reports whether the next hop accepted the recipient.
func (o Outcome) Success() bool { return o.Code >= 200 && o.Code < 300 }

func (o Outcome) String() string {
	if o.Code == 0 {
		return o.Message
	}
	if o.Enhanced != "" {
		return fmt.Sprintf("%d %s %s", o.Code, o.Enhanced, o.Message)
	}
	return fmt.Sprintf("%d %s", o.Code, o.Message)
}

// Result is the outcome of one delivery attempt.
type Result struct {
	Host   string             // host:port that answered last
	TLS    string             // TLS version used, "" for plaintext
	Rcpts  map[string]Outcome // one per recipient of the Message
	Reused bool               // the transaction ran on a pooled connection
	// Security is the transport security policy that applied (MTA-STS or
	// DANE) and its result; zero when none did.
	Security Security
}

// Relay delivers messages to their next hop. pool, when not nil, lends
// and keeps open connections (see Pool); cancelling ctx aborts the attempt.
type Relay interface {
	Deliver(ctx context.Context, m Message, pool *Pool) Result
}

// New returns the relay for opts.Mode.
func New(opts Options) (Relay, error) {
	opts.defaults()
	switch opts.Mode {
	case "static":
		if opts.Smarthost == "" {
			return nil, fmt.Errorf("relay.smarthost is required when relay.mode is \"static\"")
		}
		return &staticRelay{opts: opts}, nil
	case "mx", "":
		r, err := newResolver(opts.DNSServers)
		if err != nil {
			return nil, err
		}
		r.dnssec = opts.DNSSEC
		x := &mxRelay{opts: opts, resolver: r}
		if opts.MTASTS {
			x.sts = newSTSFetcher(r, opts.RootCAs, opts.MTASTSPort, opts.CommandTimeout)
		}
		return x, nil
	}
	return nil, fmt.Errorf("relay.mode %q is not \"mx\" or \"static\"", opts.Mode)
}

// allRcpts gives every recipient the same outcome.
func allRcpts(rcpts []string, o Outcome) map[string]Outcome {
	m := make(map[string]Outcome, len(rcpts))
	for _, r := range rcpts {
		m[r] = o
	}
	return m
}

type staticRelay struct{ opts Options }

func (s *staticRelay) Deliver(ctx context.Context, m Message, pool *Pool) Result {
	return deliverHost(ctx, s.opts, s.opts.Smarthost, true, m, pool, nil)
}
