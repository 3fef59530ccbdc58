package mxrelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// reuse runs the transaction on a pooled connection; ok is false when the
// peer had closed it while idle (the caller dials afresh).
func reuse(pool *Pool, key, addr string, pc *pooled, m Message) (Result, bool) {
	out, healthy := transaction(pc.c, m)
	if connectionLost(out) {
		pc.c.close()
		pc.lease.Release()
		return Result{}, false
	}
	if healthy {
		pool.put(key, pc)
	} else {
		pc.close()
	}
	return Result{Host: addr, TLS: pc.tls, Rcpts: out, Reused: true, Security: pc.sec}, true
}

// deliverHost runs one SMTP transaction with addr, on a pooled connection
// when one is idle (falling back to a new one if the pooled one has died).
// sec, when not nil, is the transport security policy the connection must
// satisfy (a pooled connection was opened under the same one).
func deliverHost(ctx context.Context, o Options, addr string, useAuth bool, m Message, pool *Pool, sec *hostSecurity) (res Result) {
	key := sec.poolKey(addr)
	if pc := pool.get(key); pc != nil {
		if r, ok := reuse(pool, key, addr, pc, m); ok {
			return r
		}
	}
	res = Result{Host: addr}
	pc, lease, err := pool.leaseOrIdle(ctx, key)
	if err == nil && pc != nil {
		if r, ok := reuse(pool, key, addr, pc, m); ok {
			return r
		}
		lease, err = pool.lease(ctx)
	}
	if err != nil {
		res.Rcpts = allRcpts(m.Recipients, temporary("%s: %v", addr, err))
		return res
	}
	// The lease goes with the connection into the pool; otherwise it is
	// given back when this function returns (the connection closed).
	defer func() {
		if lease != nil {
			lease.Release()
		}
	}()
	var st *Security
	if sec != nil {
		cp := sec.Security
		st = &cp
		defer func() {
			if st.Result == "" {
				st.Result = resultSuccess
			}
			res.Security = *st
		}()
	}
	d := net.Dialer{Timeout: o.ConnectTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		res.Rcpts = allRcpts(m.Recipients, temporary("connect to %s: %v", addr, unwrapNet(err)))
		return res
	}
	// Cancelling ctx (the server stopping) aborts the session.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() { stop() }() // the fallback below may replace stop

	c, tlsVersion, fail := openClient(o, conn, addr, sec, st)
	if fail != nil && fail.tlsBroken && o.TLS == TLSOpportunistic && o.TLSFallbackPlaintext && (sec == nil || !sec.require) {
		// Configured to prefer delivery over secrecy: redial without TLS.
		conn.Close()
		stop()
		if conn, err = d.DialContext(ctx, "tcp", addr); err != nil {
			res.Rcpts = allRcpts(m.Recipients, temporary("connect to %s: %v", addr, unwrapNet(err)))
			return res
		}
		stop = context.AfterFunc(ctx, func() { conn.Close() })
		plain := o
		plain.TLS = TLSNone
		c, tlsVersion, fail = openClient(plain, conn, addr, nil, nil)
	}
	if fail != nil {
		conn.Close()
		res.Rcpts = allRcpts(m.Recipients, fail.Outcome)
		return res
	}
	res.TLS = tlsVersion

	if useAuth && o.Username != "" {
		if tlsVersion == "" {
			c.close()
			res.Rcpts = allRcpts(m.Recipients, temporary("%s: not authenticating without TLS", addr))
			return res
		}
		if err := c.auth(o.Username, o.Password); err != nil {
			c.close()
			res.Rcpts = allRcpts(m.Recipients, classify(err))
			return res
		}
	}
	out, healthy := transaction(c, m)
	res.Rcpts = out
	if healthy && stop() {
		pc := &pooled{c: c, tls: tlsVersion, lease: lease}
		lease = nil
		if st != nil {
			pc.sec = *st
			if pc.sec.Result == "" {
				pc.sec.Result = resultSuccess
			}
		}
		pool.put(key, pc)
	} else {
		c.quit()
	}
	return res
}

// connectionLost reports whether every outcome is a transport failure (no
// SMTP reply at all), as when a pooled connection was closed by the peer.
func connectionLost(out map[string]Outcome) bool {
	for _, o := range out {
		if o.Code != 0 {
			return false
		}
	}
	return true
}

// transaction sends MAIL, every RCPT and DATA (pipelined when offered),
// then the body, and classifies each recipient. healthy reports whether
// the connection can carry another transaction (every step got an SMTP
// reply and the session is reset).
func transaction(c *client, m Message) (out map[string]Outcome, healthy bool) {
	out = make(map[string]Outcome, len(m.Recipients))
	e := c.envelope(c.mailCommand(m.From, m.Size, !isASCII(m.From, m.Recipients)), m.Recipients)
	usable := func(o Outcome) bool { return o.Code != 0 && o.Code != 421 }
	if e.mail != nil {
		o := classify(e.mail)
		return allRcpts(m.Recipients, o), usable(o) && c.reset() == nil
	}
	var accepted []string
	for i, r := range m.Recipients {
		if e.rcpt[i] == nil {
			accepted = append(accepted, r)
			continue
		}
		o := classify(e.rcpt[i])
		out[r] = o
		if !usable(o) {
			// The session is gone: the rest fail the same way.
			for _, rest := range m.Recipients {
				if _, done := out[rest]; !done {
					out[rest] = o
				}
			}
			return out, false
		}
	}
	if len(accepted) == 0 {
		return out, !isTransport(e.data) && c.reset() == nil
	}
	finish := func(o Outcome, ok bool) (map[string]Outcome, bool) {
		for _, r := range accepted {
			out[r] = o
		}
		return out, ok
	}
	if e.data != nil {
		o := classify(e.data)
		return finish(o, usable(o) && c.reset() == nil)
	}
	// The whole body must be written, and answered, within data_timeout.
	text, err := c.body(m.Body())
	if err != nil {
		o := classify(err)
		return finish(o, usable(o))
	}
	code, enh := 250, ""
	if f := strings.Fields(text); len(f) > 0 && looksEnhanced(f[0]) {
		enh, text = f[0], strings.TrimSpace(strings.TrimPrefix(text, f[0]))
	}
	return finish(Outcome{Code: code, Enhanced: enh, Message: text}, true)
}

// openClient greets the peer and negotiates STARTTLS per o.TLS and sec
// (a policy that requires TLS refuses a peer without it, or whose
// certificate fails the policy's check; one that does not records the
// failure in st and goes on).
func openClient(o Options, conn net.Conn, addr string, sec *hostSecurity, st *Security) (*client, string, *openFailure) {
	fail := func(result, detail string) {
		if st != nil && st.Result == "" {
			st.Result, st.Detail = result, detail
		}
	}
	c := newClient(conn, o.CommandTimeout, o.DataTimeout)
	if _, err := c.greeting(); err != nil {
		return nil, "", &openFailure{Outcome: classify(err)}
	}
	if err := c.hello(o.Hostname); err != nil {
		return nil, "", &openFailure{Outcome: classify(err)}
	}
	if o.TLS == TLSNone && sec == nil {
		return c, "", nil
	}
	_, offered := c.extension("STARTTLS")
	version := ""
	switch {
	case offered:
		cfg := tlsConfig(o, addr)
		refused := ""
		if sec != nil {
			cfg.ServerName = sec.serverName
			cfg.InsecureSkipVerify = true // checked by the policy instead
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				result, err := sec.verify(cs)
				if err != nil {
					fail(result, err.Error())
					if sec.require {
						refused = result
						return err
					}
				}
				return nil
			}
		}
		tc, err := c.startTLS(cfg)
		if err != nil {
			return nil, "", &openFailure{Outcome: classify(err)}
		}
		tc.SetDeadline(time.Now().Add(o.CommandTimeout))
		if err := tc.Handshake(); err != nil {
			if refused != "" {
				return nil, "", &openFailure{Outcome: temporary("%s: certificate refused by the %s policy (%s): %v", addr, sec.Policy, refused, err), tlsBroken: true}
			}
			fail(resultValidationFailed, "TLS handshake failed: "+err.Error())
			return nil, "", &openFailure{Outcome: temporary("%s: TLS handshake failed: %v", addr, err), tlsBroken: true}
		}
		version = tls.VersionName(tc.ConnectionState().Version)
		if err := c.hello(o.Hostname); err != nil {
			return nil, "", &openFailure{Outcome: classify(err)}
		}
	case sec != nil && sec.require:
		fail(resultNoSTARTTLS, addr+" does not offer STARTTLS")
		return nil, "", &openFailure{Outcome: temporary("%s does not offer STARTTLS, which the %s policy of its domain requires", addr, sec.Policy)}
	case sec != nil:
		fail(resultNoSTARTTLS, addr+" does not offer STARTTLS")
	case o.TLS == TLSRequired:
		return nil, "", &openFailure{Outcome: temporary("%s does not offer STARTTLS and relay.tls is \"required\"", addr)}
	}
	return c, version, nil
}

// openFailure is why a session could not be opened; tlsBroken marks a
// failed STARTTLS handshake (which fallback may retry in plaintext).
type openFailure struct {
	Outcome
	tlsBroken bool
}

func tlsConfig(o Options, addr string) *tls.Config {
	host, _, _ := net.SplitHostPort(addr)
	if o.TLSConfig != nil {
		cfg := o.TLSConfig.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		return cfg
	}
	// Like Postfix's "may" and "encrypt" levels, TLS protects against
	// passive listeners without verifying the peer (RFC 7435), unless
	// TLSVerify asks for a certificate valid for the host.
	return &tls.Config{ServerName: host, InsecureSkipVerify: !o.TLSVerify, RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}
}

func replyError(code int, msg string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: msg}
	if f := strings.Fields(msg); len(f) > 0 && looksEnhanced(f[0]) {
		var a, b, c int
		fmt.Sscanf(f[0], "%d.%d.%d", &a, &b, &c)
		e.EnhancedCode = smtp.EnhancedCode{a, b, c}
		e.Message = strings.TrimSpace(strings.TrimPrefix(msg, f[0]))
	}
	return e
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func looksEnhanced(s string) bool {
	var a, b, c int
	n, _ := fmt.Sscanf(s, "%d.%d.%d", &a, &b, &c)
	return n == 3 && (a == 2 || a == 4 || a == 5)
}

// classify turns an error of the SMTP exchange into an Outcome: SMTP replies
// keep their code (4xx temporary, 5xx permanent); anything else is temporary.
func classify(err error) Outcome {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		enh := ""
		if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
			enh = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
		return Outcome{Code: se.Code, Enhanced: enh, Message: se.Message, temp: se.Code < 500}
	}
	return Outcome{Message: unwrapNet(err).Error(), temp: true}
}

func temporary(format string, args ...any) Outcome {
	return Outcome{Message: fmt.Sprintf(format, args...), temp: true}
}

// permanent builds a permanent outcome with an SMTP-style code.
func permanent(code int, enhanced, format string, args ...any) Outcome {
	return Outcome{Code: code, Enhanced: enhanced, Message: fmt.Sprintf(format, args...)}
}

func unwrapNet(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

func isASCII(from string, rcpts []string) bool {
	for _, s := range append([]string{from}, rcpts...) {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}
