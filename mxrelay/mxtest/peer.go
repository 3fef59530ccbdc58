// Package mxtest provides a scripted SMTP peer for testing the relay's
// handling of misbehaving servers (like net/http/httptest): it listens on
// loopback and answers each command from a script. Well-behaved peers in
// tests are real (Postfix's smtp-sink, a second ledgermail); this one exists
// for the failures no real server produces on cue.
package mxtest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Script says how the peer behaves. Empty replies take the normal answer.
type Script struct {
	Greeting string // e.g. "421 4.3.2 busy"; "" = "220 mxtest ESMTP"
	// Tarpit: accept and never say anything.
	Tarpit bool
	// OfferSTARTTLS advertises STARTTLS; BrokenTLS answers it 220 and then
	// closes instead of a handshake; with neither broken nor offered, no TLS.
	OfferSTARTTLS bool
	BrokenTLS     bool
	// BrokenTLSOnce: only the first connection's STARTTLS is broken and only
	// it advertises STARTTLS (a peer fixed on redial, for fallback tests).
	BrokenTLSOnce bool
	Mail          string            // reply to MAIL
	Rcpt          map[string]string // reply per recipient address
	DataEnd       string            // reply after the final dot
	// DropMidData closes the connection after the first data line.
	DropMidData bool
	// DataDelay waits before answering the final dot.
	DataDelay time.Duration
	// TLS serves STARTTLS with this configuration (e.g. a certificate
	// from a CA); nil: a self-signed certificate for "mxtest".
	TLS *tls.Config
	// NoPipelining does not offer PIPELINING and, like Postfix with
	// reject_unauth_pipelining, answers a MAIL or RCPT that arrives with
	// more commands behind it "554 5.5.0".
	NoPipelining bool
	// DataWithoutRcpt answers DATA 354 even when no RCPT was accepted (a
	// server that RFC 2920 §3.1 warns about).
	DataWithoutRcpt bool
}

// Peer is a running scripted server.
type Peer struct {
	Addr     string
	ln       net.Listener
	script   Script
	tlsCfg   *tls.Config
	conns    atomic.Int32
	active   atomic.Int32
	peak     atomic.Int32
	mu       sync.Mutex
	messages []string
	wg       sync.WaitGroup
	batched  atomic.Int32
	commands []string
}

// Start listens on 127.0.0.1 (or addr when given, e.g. "127.0.0.9:0").
func Start(script Script, addr string) (*Peer, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Peer{Addr: ln.Addr().String(), ln: ln, script: script, tlsCfg: script.TLS}
	if p.tlsCfg == nil {
		p.tlsCfg = selfSigned()
	}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Close stops the peer and waits for its sessions.
func (p *Peer) Close() {
	p.ln.Close()
	p.wg.Wait()
}

// Connections returns how many connections were accepted.
func (p *Peer) Connections() int { return int(p.conns.Load()) }

// MaxConcurrent returns the most sessions that were open at once.
func (p *Peer) MaxConcurrent() int { return int(p.peak.Load()) }

// Pipelined returns how many MAIL commands arrived in one read together
// with the DATA of the same transaction (a pipelining client's envelope).
func (p *Peer) Pipelined() int { return int(p.batched.Load()) }

// Commands returns every command line the peer received, in order.
func (p *Peer) Commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.commands...)
}

// Messages returns the bodies of the transactions the peer accepted.
func (p *Peer) Messages() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.messages...)
}

func (p *Peer) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		n := p.conns.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			now := p.active.Add(1)
			var once sync.Once
			leave := func() { once.Do(func() { p.active.Add(-1) }) }
			defer leave()
			for {
				peak := p.peak.Load()
				if now <= peak || p.peak.CompareAndSwap(peak, now) {
					break
				}
			}
			p.session(c, n, leave)
		}()
	}
}

// session runs one connection; leave is called when the client has said
// QUIT, before the 221 goes out, so that a client which opens its next
// connection only after the 221 is never counted twice.
func (p *Peer) session(c net.Conn, n int32, leave func()) {
	s := p.script
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if s.Tarpit {
		buf := make([]byte, 1024)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
	var conn net.Conn = c
	r := bufio.NewReader(conn)
	w := func(line string) { conn.Write([]byte(line + "\r\n")) }
	if s.Greeting != "" {
		w(s.Greeting)
		if strings.HasPrefix(s.Greeting, "4") || strings.HasPrefix(s.Greeting, "5") {
			return
		}
	} else {
		w("220 mxtest ESMTP")
	}
	offerTLS := s.OfferSTARTTLS || (s.BrokenTLSOnce && n == 1)
	inTLS := false
	var rcptOK int
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		p.mu.Lock()
		p.commands = append(p.commands, strings.TrimSpace(line))
		p.mu.Unlock()
		behind := r.Buffered() > 0
		if s.NoPipelining && behind && (strings.HasPrefix(cmd, "MAIL") || strings.HasPrefix(cmd, "RCPT")) {
			w("554 5.5.0 improper use of SMTP command pipelining")
			continue
		}
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			w("250-mxtest")
			if !s.NoPipelining {
				w("250-PIPELINING")
			}
			if offerTLS && !inTLS {
				w("250-STARTTLS")
			}
			w("250 SIZE 10240000")
		case strings.HasPrefix(cmd, "HELO"):
			w("250 mxtest")
		case cmd == "STARTTLS":
			w("220 2.0.0 go ahead")
			if s.BrokenTLS || (s.BrokenTLSOnce && n == 1) {
				conn.Write([]byte("this is not a TLS record\r\n"))
				return
			}
			tc := tls.Server(c, p.tlsCfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			conn, inTLS = tc, true
			r = bufio.NewReader(conn)
		case strings.HasPrefix(cmd, "MAIL FROM:"):
			rcptOK = 0
			if peek, _ := r.Peek(r.Buffered()); strings.Contains(string(peek), "DATA\r\n") {
				p.batched.Add(1)
			}
			w(or(s.Mail, "250 2.1.0 ok"))
		case strings.HasPrefix(cmd, "RCPT TO:"):
			addr := strings.Trim(strings.TrimSpace(line[len("RCPT TO:"):]), "<>\r\n ")
			if i := strings.IndexByte(addr, '>'); i >= 0 {
				addr = addr[:i]
			}
			reply := "250 2.1.5 ok"
			if rep, ok := s.Rcpt[addr]; ok {
				reply = rep
			}
			if strings.HasPrefix(reply, "2") {
				rcptOK++
			}
			w(reply)
		case cmd == "DATA":
			if rcptOK == 0 && !s.DataWithoutRcpt {
				w("554 5.5.1 no valid recipients")
				continue
			}
			w("354 go ahead")
			var body strings.Builder
			first := true
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if s.DropMidData && first {
					return
				}
				first = false
				if l == ".\r\n" {
					break
				}
				body.WriteString(l)
			}
			time.Sleep(s.DataDelay)
			reply := or(s.DataEnd, "250 2.0.0 queued")
			if rcptOK == 0 {
				reply = "554 5.5.1 no valid recipients"
			}
			if strings.HasPrefix(reply, "2") {
				p.mu.Lock()
				p.messages = append(p.messages, body.String())
				p.mu.Unlock()
			}
			w(reply)
		case cmd == "RSET" || cmd == "NOOP":
			w("250 2.0.0 ok")
		case cmd == "QUIT":
			leave()
			w("221 2.0.0 bye")
			return
		default:
			w("502 5.5.2 unknown command")
		}
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func selfSigned() *tls.Config {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"mxtest"}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
