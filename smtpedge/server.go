// Package smtpedge is ledgermail's submission server (go-smtp): the
// STARTTLS listener (587 style) and the implicit-TLS listener (465 style),
// AUTH PLAIN and LOGIN, the sender validators and the limits.
//
// The contract: a message is answered "250 2.0.0 Ok: queued as ID" only
// after its Received event and its body are durable in the journal; when the
// journal cannot take it the client gets "451 4.3.0" and nothing of the
// message is kept. Every refusal is an *smtp.SMTPError with the reply of
// SPEC.md; no internal error text reaches a client.
package smtpedge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/journal"
)

// Options configure a Server.
type Options struct {
	Hostname string
	// Submission are STARTTLS listener addresses; Submissions implicit TLS.
	Submission  []string
	Submissions []string
	TLS         *tls.Config
	Auth        Authenticator
	Journal     *journal.Journal
	// Accepted is called with the envelope ID after its Received event is
	// durable (the queue takes it from there).
	Accepted func(id string)
	// TrustedNetworks may submit without AUTH.
	TrustedNetworks   []netip.Prefix
	AllowInsecureAuth bool
	RequireOwnership  bool
	MaxMessageBytes   int64
	MaxRecipients     int
	MaxConnections    int
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	Logger            *zap.Logger
}

// Server runs the submission listeners.
type Server struct {
	o       Options
	servers []*smtp.Server
	lns     []net.Listener
	tlsOn   []bool // the listener at the same index is implicit TLS
	conns   chan struct{}
	wg      sync.WaitGroup
}

// New validates opts and binds every listener (so that privileges may be
// dropped before Serve).
func New(o Options) (*Server, error) {
	if o.Journal == nil || o.Auth == nil || o.Accepted == nil {
		return nil, errors.New("smtpedge: journal, authenticator and Accepted are required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 1000
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = 5 * time.Minute
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = time.Minute
	}
	s := &Server{o: o, conns: make(chan struct{}, o.MaxConnections)}
	bind := func(addrs []string, implicit bool) error {
		for _, a := range addrs {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", a, err)
			}
			name := "submission"
			if implicit {
				name = "submissions"
			}
			s.lns = append(s.lns, ln)
			s.tlsOn = append(s.tlsOn, implicit)
			s.servers = append(s.servers, s.newSMTP(name, ln.Addr().String(), implicit))
		}
		return nil
	}
	if err := bind(o.Submission, false); err != nil {
		s.closeListeners()
		return nil, err
	}
	if err := bind(o.Submissions, true); err != nil {
		s.closeListeners()
		return nil, err
	}
	return s, nil
}

func (s *Server) closeListeners() {
	for _, ln := range s.lns {
		ln.Close()
	}
}

// Addrs returns the bound addresses, in the order of the options.
func (s *Server) Addrs() []string {
	out := make([]string, len(s.lns))
	for i, ln := range s.lns {
		out[i] = ln.Addr().String()
	}
	return out
}

func (s *Server) newSMTP(name, addr string, implicit bool) *smtp.Server {
	b := &backend{s: s, listener: name + "/" + addr}
	srv := smtp.NewServer(b)
	srv.Domain = s.o.Hostname
	srv.MaxMessageBytes = s.o.MaxMessageBytes
	srv.MaxLineLength = 2000
	srv.ReadTimeout = s.o.ReadTimeout
	srv.WriteTimeout = s.o.WriteTimeout
	srv.EnableSMTPUTF8 = true
	// go-smtp answers AUTH before TLS with 523 on its own; the session
	// enforces TLS itself to give SPEC's 538 and to hide AUTH until TLS.
	srv.AllowInsecureAuth = true
	if !implicit {
		srv.TLSConfig = s.o.TLS
	}
	srv.ErrorLog = zapErrorLog{s.o.Logger}
	return srv
}

// Serve serves every listener until Shutdown.
func (s *Server) Serve() {
	for i, srv := range s.servers {
		s.wg.Add(1)
		// The connection limit wraps the raw connection, TLS goes on top,
		// so that go-smtp sees a *tls.Conn on the implicit-TLS listener.
		var ln net.Listener = &limitListener{Listener: s.lns[i], sem: s.conns}
		if s.tlsOn[i] {
			ln = tls.NewListener(ln, s.o.TLS)
		}
		go func(srv *smtp.Server, ln net.Listener) {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				s.o.Logger.Error("listener stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
			}
		}(srv, ln)
	}
}

// Shutdown stops accepting and waits (until ctx ends) for sessions to end.
func (s *Server) Shutdown(ctx context.Context) error {
	var first error
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil && first == nil {
			first = err
		}
	}
	s.wg.Wait()
	return first
}

type zapErrorLog struct{ l *zap.Logger }

func (z zapErrorLog) Printf(format string, v ...any) { z.l.Warn(fmt.Sprintf(format, v...)) }
func (z zapErrorLog) Println(v ...any)               { z.l.Warn(fmt.Sprint(v...)) }

// limitListener answers 421 to connections over max_connections.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &slotConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("421 4.7.0 Too many connections, try again later\r\n"))
			c.Close()
		}
	}
}

type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
