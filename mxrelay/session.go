package mxrelay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// deliverHost runs one SMTP transaction with addr, on a pooled connection
// when one is idle (falling back to a new one if the pooled one has died).
// sec, when not nil, is the transport security policy the connection must
// satisfy (a pooled connection was opened under the same one).
func deliverHost(ctx context.Context, o Options, addr string, useAuth bool, m Message, pool *Pool, sec *hostSecurity) (res Result) {
	key := sec.poolKey(addr)
	if pc := pool.get(key); pc != nil {
		out, healthy := transaction(o, pc.c, pc.raw, m)
		if !connectionLost(out) {
			if healthy {
				pool.put(key, pc)
			} else {
				pc.close()
			}
			return Result{Host: addr, TLS: pc.tls, Rcpts: out, Reused: true, Security: pc.sec}
		}
		pc.c.Close() // the peer closed it while idle: dial afresh
	}
	res = Result{Host: addr}
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
	c.CommandTimeout = o.CommandTimeout
	c.SubmissionTimeout = o.DataTimeout

	if useAuth && o.Username != "" {
		if tlsVersion == "" {
			c.Close()
			res.Rcpts = allRcpts(m.Recipients, temporary("%s: not authenticating without TLS", addr))
			return res
		}
		if err := c.Auth(sasl.NewPlainClient("", o.Username, o.Password)); err != nil {
			c.Close()
			res.Rcpts = allRcpts(m.Recipients, classify(err))
			return res
		}
	}
	out, healthy := transaction(o, c, conn, m)
	res.Rcpts = out
	if healthy && stop() {
		pc := &pooled{c: c, raw: conn, tls: tlsVersion}
		if st != nil {
			pc.sec = *st
			if pc.sec.Result == "" {
				pc.sec.Result = resultSuccess
			}
		}
		pool.put(key, pc)
	} else {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		c.Quit()
		c.Close()
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

// transaction sends MAIL, every RCPT and DATA, and classifies each
// recipient. healthy reports whether the connection can carry another
// transaction (every step got an SMTP reply and the session is reset).
func transaction(o Options, c *smtp.Client, raw net.Conn, m Message) (out map[string]Outcome, healthy bool) {
	out = make(map[string]Outcome, len(m.Recipients))
	opts := &smtp.MailOptions{}
	if ok, _ := c.Extension("SIZE"); ok && m.Size > 0 {
		opts.Size = m.Size
	}
	if ok, _ := c.Extension("SMTPUTF8"); ok && !isASCII(m.From, m.Recipients) {
		opts.UTF8 = true
	}
	if err := c.Mail(m.From, opts); err != nil {
		o := classify(err)
		return allRcpts(m.Recipients, o), o.Code != 0 && o.Code != 421 && c.Reset() == nil
	}
	var accepted []string
	for _, r := range m.Recipients {
		if err := c.Rcpt(r, nil); err != nil {
			o := classify(err)
			out[r] = o
			if o.Code == 0 || o.Code == 421 {
				// The session is gone: the rest fail the same way.
				for _, rest := range m.Recipients {
					if _, done := out[rest]; !done {
						out[rest] = o
					}
				}
				return out, false
			}
			continue
		}
		accepted = append(accepted, r)
	}
	if len(accepted) == 0 {
		return out, c.Reset() == nil
	}
	finish := func(o Outcome, ok bool) (map[string]Outcome, bool) {
		for _, r := range accepted {
			out[r] = o
		}
		return out, ok
	}
	w, err := c.Data()
	if err != nil {
		o := classify(err)
		return finish(o, o.Code != 0 && o.Code != 421 && c.Reset() == nil)
	}
	// The whole body must be written within data_timeout.
	raw.SetWriteDeadline(time.Now().Add(o.DataTimeout))
	if _, err := io.Copy(w, m.Body()); err != nil {
		return finish(classify(err), false)
	}
	resp, err := w.CloseWithResponse()
	raw.SetWriteDeadline(time.Time{})
	if err != nil {
		o := classify(err)
		return finish(o, o.Code != 0 && o.Code != 421)
	}
	code, enh, text := 250, "", resp.StatusText
	if f := strings.Fields(text); len(f) > 0 && looksEnhanced(f[0]) {
		enh, text = f[0], strings.TrimSpace(strings.TrimPrefix(text, f[0]))
	}
	return finish(Outcome{Code: code, Enhanced: enh, Message: text}, true)
}

// openClient greets the peer and negotiates STARTTLS per o.TLS and sec
// (a policy that requires TLS refuses a peer without it, or whose
// certificate fails the policy's check; one that does not records the
// failure in st and goes on). go-smtp's
// client has no public STARTTLS after EHLO, and NewClientStartTLS would say
// "EHLO localhost"; so the plaintext EHLO and STARTTLS are done here on the
// raw connection, and the go-smtp client takes over after the handshake.
func openClient(o Options, conn net.Conn, addr string, sec *hostSecurity, st *Security) (*smtp.Client, string, *openFailure) {
	conn.SetDeadline(time.Now().Add(o.CommandTimeout))
	defer conn.SetDeadline(time.Time{})
	fail := func(result, detail string) {
		if st != nil && st.Result == "" {
			st.Result, st.Detail = result, detail
		}
	}
	if o.TLS == TLSNone && sec == nil {
		c := smtp.NewClient(conn)
		c.CommandTimeout = o.CommandTimeout
		if err := c.Hello(o.Hostname); err != nil {
			return nil, "", &openFailure{Outcome: classify(err)}
		}
		return c, "", nil
	}
	br := bufio.NewReader(conn)
	tp := textproto.NewReader(br)
	greeting, err := readReply(tp, 220)
	if err != nil {
		return nil, "", &openFailure{Outcome: classify(err)}
	}
	if _, err := fmt.Fprintf(conn, "EHLO %s\r\n", o.Hostname); err != nil {
		return nil, "", &openFailure{Outcome: classify(err)}
	}
	ehlo, err := readReply(tp, 250)
	if err != nil {
		return nil, "", &openFailure{Outcome: classify(err)}
	}
	offered := false
	for _, l := range strings.Split(ehlo, "\n")[1:] {
		if strings.EqualFold(strings.TrimSpace(l), "STARTTLS") {
			offered = true
		}
	}
	var next net.Conn = conn
	version := ""
	switch {
	case offered:
		if _, err := io.WriteString(conn, "STARTTLS\r\n"); err != nil {
			return nil, "", &openFailure{Outcome: classify(err)}
		}
		if _, err := readReply(tp, 220); err != nil {
			return nil, "", &openFailure{Outcome: classify(err)}
		}
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
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			if refused != "" {
				return nil, "", &openFailure{Outcome: temporary("%s: certificate refused by the %s policy (%s): %v", addr, sec.Policy, refused, err), tlsBroken: true}
			}
			fail(resultValidationFailed, "TLS handshake failed: "+err.Error())
			return nil, "", &openFailure{Outcome: temporary("%s: TLS handshake failed: %v", addr, err), tlsBroken: true}
		}
		next, version = tc, tls.VersionName(tc.ConnectionState().Version)
	case sec != nil && sec.require:
		fail(resultNoSTARTTLS, addr+" does not offer STARTTLS")
		return nil, "", &openFailure{Outcome: temporary("%s does not offer STARTTLS, which the %s policy of its domain requires", addr, sec.Policy)}
	case sec != nil:
		fail(resultNoSTARTTLS, addr+" does not offer STARTTLS")
	case o.TLS == TLSRequired:
		return nil, "", &openFailure{Outcome: temporary("%s does not offer STARTTLS and relay.tls is \"required\"", addr)}
	}
	// Hand the connection to go-smtp, which expects to read a greeting.
	c := smtp.NewClient(&greetedConn{Conn: next, greeting: "220 " + firstLine(greeting) + "\r\n"})
	c.CommandTimeout = o.CommandTimeout
	if err := c.Hello(o.Hostname); err != nil {
		return nil, "", &openFailure{Outcome: classify(err)}
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

// greetedConn replays a greeting line before the connection's own data.
type greetedConn struct {
	net.Conn
	greeting string
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if g.greeting != "" {
		n := copy(p, g.greeting)
		g.greeting = g.greeting[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

func readReply(tp *textproto.Reader, want int) (string, error) {
	code, msg, err := tp.ReadResponse(want)
	if err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			return "", replyError(te.Code, te.Msg)
		}
		return "", err
	}
	_ = code
	return msg, nil
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
