// Package smtpedge is ledgermail's submission server (go-smtp): the
// STARTTLS listener (587 style) and the implicit-TLS listener (465 style),
// AUTH PLAIN and LOGIN, the sender validators and the limits.
//
// The contract: a message is answered "250 2.0.0 Ok: queued as ID" only
// after its Received event and its body are durable in the journal; when the
// journal cannot take it the client gets "451 4.3.0" and nothing of the
// message is kept. Every refusal is an *smtp.SMTPError with the reply that
// docs/SMTP.md lists; no internal error text reaches a client.
package smtpedge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/journal"
)

// Options configure a Server.
type Options struct {
	Hostname string
	// Postmaster receives mail to the bare recipient "postmaster";
	// default postmaster@Hostname.
	Postmaster string
	// Submission are STARTTLS listener addresses; Submissions implicit TLS.
	// Listeners, when set, are already bound and the addresses are unused.
	Submission  []string
	Submissions []string
	Listeners   *Listeners
	TLS         *tls.Config
	Auth        Authenticator
	Journal     *journal.Journal
	// Accepted is called with the envelope ID after its Received event is
	// durable (the queue takes it from there).
	Accepted func(id string)
	// Rejected, if set, is called with a reason for every refusal (metrics).
	Rejected func(reason string)
	// Scan, if set, checks each message before it is journaled: reject
	// refuses it "550 5.7.1 Message rejected as spam"; headers are kept in
	// the Received event for the policies to prepend.
	Scan func(body []byte) (headers string, reject bool)
	// TrustedNetworks may submit without AUTH.
	TrustedNetworks   []netip.Prefix
	AllowInsecureAuth bool
	RequireOwnership  bool
	MaxMessageBytes   int64
	// BodyMemory caps the memory of all bodies being received at once
	// ([limits] body_memory), shared with the other edges; nil means one
	// of DefaultBodyMemory.
	BodyMemory     *BodyMemory
	MaxRecipients  int
	MaxConnections int
	// MaxAuthFailures per client IP within AuthFailureWindow, then 421
	// and disconnect; 0 disables the throttle.
	MaxAuthFailures   int
	AuthFailureWindow time.Duration
	// Validators replace the default set when non-nil (see
	// DefaultValidators; append your own to it to keep the defaults).
	Validators []Validator
	// ReadTimeout bounds the wait for each command; DataTimeout the whole
	// DATA transfer.
	ReadTimeout  time.Duration
	DataTimeout  time.Duration
	WriteTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (STARTTLS or implicit); 0
	// means 10 s.
	HandshakeTimeout time.Duration
	Logger           *zap.Logger
}

// Server runs the submission listeners.
type Server struct {
	o          Options
	servers    []*smtp.Server
	lns        []net.Listener
	names      []string
	tlsOn      []bool // the listener at the same index is implicit TLS
	conns      chan struct{}
	tracker    *connTracker
	throttle   *authThrottle
	validators []Validator
	budget     *BodyMemory
	wg         sync.WaitGroup // the Serve loops
	closing    atomic.Bool    // Shutdown has begun
	serveMu    sync.Mutex     // orders Serve's start against Shutdown
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
	if o.Postmaster == "" {
		o.Postmaster = "postmaster@" + o.Hostname
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 1000
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = 5 * time.Minute
	}
	if o.DataTimeout == 0 {
		o.DataTimeout = 10 * time.Minute
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	o.TLS = handshakeConfig(o.TLS)
	if o.WriteTimeout == 0 {
		o.WriteTimeout = time.Minute
	}
	if o.BodyMemory == nil {
		o.BodyMemory = NewBodyMemory(0)
	}
	if o.AuthFailureWindow == 0 {
		o.AuthFailureWindow = 10 * time.Minute
	}
	s := &Server{o: o, conns: make(chan struct{}, o.MaxConnections), tracker: &connTracker{conns: map[string]*tracked{}},
		throttle: newAuthThrottle(o.MaxAuthFailures, o.AuthFailureWindow), validators: o.Validators, budget: o.BodyMemory}
	if s.validators == nil {
		s.validators = DefaultValidators(o.RequireOwnership, o.MaxRecipients)
	}
	ls := o.Listeners
	if ls == nil {
		var err error
		if ls, err = Listen(o.Submission, o.Submissions); err != nil {
			return nil, err
		}
	}
	add := func(lns []net.Listener, implicit bool) {
		name := "submission"
		if implicit {
			name = "submissions"
		}
		for _, ln := range lns {
			s.lns = append(s.lns, ln)
			s.tlsOn = append(s.tlsOn, implicit)
			s.names = append(s.names, name+"/"+ln.Addr().String())
			s.servers = append(s.servers, s.newSMTP(name, ln.Addr().String(), implicit))
		}
	}
	add(ls.Submission, false)
	add(ls.Submissions, true)
	return s, nil
}

// Listeners are bound sockets for New: bind them first (as root, for ports
// under 1024), drop privileges, then build the server.
type Listeners struct {
	Submission  []net.Listener // STARTTLS
	Submissions []net.Listener // implicit TLS
}

// Listen binds every address; on error nothing stays bound.
func Listen(submission, submissions []string) (*Listeners, error) {
	ls := &Listeners{}
	for _, group := range []struct {
		addrs []string
		into  *[]net.Listener
	}{{submission, &ls.Submission}, {submissions, &ls.Submissions}} {
		for _, a := range group.addrs {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				ls.Close()
				return nil, fmt.Errorf("listen on %s: %w", a, err)
			}
			*group.into = append(*group.into, ln)
		}
	}
	return ls, nil
}

// Close closes every listener.
func (ls *Listeners) Close() {
	for _, ln := range append(append([]net.Listener(nil), ls.Submission...), ls.Submissions...) {
		ln.Close()
	}
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
	// The watchdog (timeouts.go) ends idle sessions; go-smtp's own
	// deadline, which would take a partial line for a command, is only a
	// backstop.
	srv.ReadTimeout = s.o.ReadTimeout + time.Minute
	srv.WriteTimeout = s.o.WriteTimeout
	srv.EnableSMTPUTF8 = true
	// go-smtp answers AUTH before TLS with 523 on its own; the session
	// enforces TLS itself to give 538 (docs/SMTP.md) and to hide AUTH until TLS.
	srv.AllowInsecureAuth = true
	if !implicit {
		srv.TLSConfig = s.o.TLS
	}
	srv.ErrorLog = zapErrorLog{s.o.Logger}
	return srv
}

// Serve serves every listener until Shutdown; after Shutdown (an early
// `mta drain`) it serves nothing.
func (s *Server) Serve() {
	s.serveMu.Lock()
	defer s.serveMu.Unlock()
	if s.closing.Load() {
		return
	}
	for i, srv := range s.servers {
		s.wg.Add(1)
		// The connection limit wraps the raw connection, TLS goes on top,
		// so that go-smtp sees a *tls.Conn on the implicit-TLS listener.
		var ln net.Listener = &gateListener{Listener: s.lns[i], s: s, listener: s.names[i], implicit: s.tlsOn[i]}
		if s.tlsOn[i] {
			ln = tlsSessions{tls.NewListener(ln, s.o.TLS)}
		}
		go func(srv *smtp.Server, ln net.Listener) {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !s.closing.Load() {
				s.o.Logger.Error("listener stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
			}
		}(srv, ln)
	}
}

// Shutdown stops accepting, lets sessions in DATA finish and answers the
// others 421 (go-smtp's "421 4.4.2" on the interrupted read), waiting until
// ctx ends; then it cuts what is left. A message is either answered 250
// (and durable) or not accepted: nothing accepted is lost.
func (s *Server) Shutdown(ctx context.Context) error {
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			// Interrupt the read of every session not inside DATA; go-smtp
			// re-arms its deadline before each read, hence the repetition.
			s.tracker.each(func(c *tracked) {
				if !c.inData.Load() {
					c.conn.SetReadDeadline(time.Now())
				}
			})
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	defer close(stop)
	// Stop accepting first, and wait until every Serve loop has returned:
	// go-smtp's Serve adds each accepted connection to a WaitGroup that its
	// Shutdown waits on, and an Add racing that Wait is a data race. Once
	// the loops are gone, go-smtp's Shutdown only waits for the sessions.
	s.serveMu.Lock()
	s.closing.Store(true)
	s.serveMu.Unlock()
	for _, ln := range s.lns {
		ln.Close()
	}
	s.wg.Wait()
	errs := make(chan error, len(s.servers))
	for _, srv := range s.servers {
		go func(srv *smtp.Server) { errs <- srv.Shutdown(ctx) }(srv)
	}
	var first error
	for range s.servers {
		// Its listeners are already closed: closing them again is no error.
		if err := <-errs; err != nil && !errors.Is(err, net.ErrClosed) && first == nil {
			first = err
		}
	}
	if first != nil {
		n := s.tracker.each(func(c *tracked) { c.conn.Close() })
		s.o.Logger.Warn("shutdown: sessions cut", zap.Int("sessions", n))
	}
	return first
}

func (s *Server) trusted(ip netip.Addr) bool {
	for _, p := range s.o.TrustedNetworks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

type zapErrorLog struct{ l *zap.Logger }

func (z zapErrorLog) Printf(format string, v ...any) { z.l.Warn(fmt.Sprintf(format, v...)) }
func (z zapErrorLog) Println(v ...any)               { z.l.Warn(fmt.Sprint(v...)) }
