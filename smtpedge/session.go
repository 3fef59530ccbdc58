package smtpedge

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// The replies, as docs/SMTP.md tabulates them.
var (
	errEncryptionRequired  = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	errBadCredentials      = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthTemp            = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	errTooMany             = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	errBadSyntax           = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	errBadSender           = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errTooBig              = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big"}
	errTempFailure         = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure, try again later"}
	errJournal             = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure, try again later"}
	errNoStorage           = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}
	errNoMemoryReply       = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system resources, try again later"}
	errSpam                = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Message rejected as spam"}
	errLineTooLong         = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 4, 0}, Message: "Line too long, closing connection"}
	errTooManyAuthFailures = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many authentication failures"}
)

func notAuthenticated(sender string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "<" + sender + "> Not authenticated"}
}

func headerNotOwned(addr, why string) *smtp.SMTPError {
	if addr == "" {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender headers refused: " + why}
	}
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "<" + addr + "> in From:/Sender: not owned by user"}
}

func notOwned(sender string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "<" + sender + "> Sender address not owned by user"}
}

type backend struct {
	s        *Server
	listener string
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	addr := c.Conn().RemoteAddr().String()
	t := &Transaction{ClientAddr: addr, Listener: b.listener, Helo: c.Hostname()}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		t.ClientIP = ap.Addr().Unmap()
	}
	_, t.TLS = c.TLSConnectionState()
	t.Trusted = b.s.trusted(t.ClientIP)
	t.RDNS = reverseName(t.ClientIP)
	log := b.s.o.Logger.With(zap.String("client", addr))
	if err := runValidators(b.s.validators, StageEhlo, t); err != nil {
		log.Info("EHLO refused", zap.String("helo", t.Helo), zap.Error(err))
		return nil, err
	}
	tr := b.s.tracker.get(addr)
	if tr != nil {
		conn := c.Conn() // TLS once it is: replies on a timeout go there
		tr.conn.session.Store(&conn)
	}
	return &session{s: b.s, c: c, t: t, tr: tr, log: log}, nil
}

// session is one SMTP session; go-smtp calls it from one goroutine.
type session struct {
	s   *Server
	c   *smtp.Conn
	t   *Transaction
	tr  *tracked // nil only in tests that bypass the listener
	log *zap.Logger
}

func (s *session) tlsState() (tls.ConnectionState, bool) { return s.c.TLSConnectionState() }

func (s *session) authAllowed() bool {
	_, isTLS := s.tlsState()
	return isTLS || s.s.o.AllowInsecureAuth
}

// AuthMechanisms hides AUTH until TLS is up (unless allow_insecure_auth).
func (s *session) AuthMechanisms() []string {
	if !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// hangUp makes the session end right after the reply being written.
func (s *session) hangUp() {
	if s.tr != nil {
		s.tr.conn.hangUp()
	}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.authAllowed() {
		return nil, s.reject(errEncryptionRequired)
	}
	if s.s.throttle.blocked(s.t.ClientIP) {
		s.hangUp()
		return nil, s.reject(errTooManyAuthFailures)
	}
	check := func(username, password string) error {
		id, err := s.s.checkPassword(s.t.ClientIP, username, password, s.log.With(zap.String("mechanism", mech)))
		switch err {
		case nil:
		case errTooManyAuthFailures:
			s.hangUp()
			return s.reject(err)
		case errBadCredentials:
			return s.reject(err)
		default:
			return err
		}
		s.t.Identity = &id
		if err := runValidators(s.s.validators, StageAuth, s.t); err != nil {
			s.t.Identity = nil
			return err
		}
		s.log = s.log.With(zap.String("user", id.Name))
		s.log.Info("authenticated", zap.String("mechanism", mech))
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return errBadCredentials
			}
			return check(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.t.From, s.t.Size = from, 0
	if opts != nil {
		s.t.Size = opts.Size
	}
	if err := runValidators(s.s.validators, StageMail, s.t); err != nil {
		s.log.Info("MAIL refused", zap.String("from", from), zap.Error(err))
		s.t.From = ""
		return s.reject(err)
	}
	if s.s.o.MaxMessageBytes > 0 && s.t.Size > s.s.o.MaxMessageBytes {
		return s.reject(errTooBig)
	}
	// Checked at every MAIL FROM, so mail is accepted again by itself once
	// space returns.
	if !s.s.o.Journal.HasRoom(s.t.Size) {
		s.log.Warn("MAIL refused: journal storage below min_free", zap.String("from", from))
		s.t.From = ""
		return s.reject(errNoStorage)
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	// RFC 5321 §4.5.1: the bare "postmaster" must be accepted.
	if strings.EqualFold(to, "postmaster") {
		to = s.s.o.Postmaster
	}
	s.t.Rcpt = to
	if err := runValidators(s.s.validators, StageRcpt, s.t); err != nil {
		s.log.Info("RCPT refused", zap.String("to", to), zap.Error(err))
		return s.reject(err)
	}
	s.t.Rcpts = append(s.t.Rcpts, to)
	return nil
}

// Data reads the message, makes it durable and only then answers 250.
func (s *session) Data(r io.Reader) error {
	if s.tr != nil {
		s.tr.inData.Store(true)
		defer s.tr.inData.Store(false)
	}
	// go-smtp reads the body without re-arming its per-line deadline: this
	// one bounds the whole transfer.
	s.c.Conn().SetReadDeadline(time.Now().Add(s.s.o.DataTimeout))
	sp := s.s.NewSpool()
	if _, err := sp.ReadFrom(r); err != nil {
		sp.Discard()
		if errors.Is(err, smtp.ErrDataTooLarge) {
			s.log.Info("message refused: too big", zap.Int64("max", s.s.o.MaxMessageBytes))
			return s.reject(errTooBig)
		}
		if errors.Is(err, smtp.ErrTooLongLine) {
			// The rest of the stream cannot be trusted to be in step.
			s.log.Info("message refused: line too long")
			s.hangUp()
			return s.reject(errLineTooLong)
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		// The rest of the stream cannot be trusted to be in step either:
		// whatever the client sends after this is not a command.
		s.hangUp()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.log.Info("message refused: data_timeout", zap.Duration("data_timeout", s.s.o.DataTimeout))
			return s.reject(&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: s.s.o.Hostname + " Error: timeout exceeded"})
		}
		s.log.Info("message refused: read error", zap.Error(err))
		return s.reject(errTempFailure)
	}
	tlsInfo := ""
	if st, ok := s.tlsState(); ok {
		tlsInfo = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
	}
	id, err := s.s.Accept(s.t, sp, Origin{Helo: s.c.Hostname(), TLS: tlsInfo}, s.log)
	if err != nil {
		return s.reject(err)
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + id}
}

// reject counts a refusal by reason and returns err.
func (s *session) reject(err error) error {
	if s.s.o.Rejected != nil {
		s.s.o.Rejected(reasonOf(err))
	}
	return err
}

// reasonOf names a refusal for the rejected-messages metric.
func reasonOf(err error) string {
	switch err {
	case errBadCredentials:
		return "auth_failed"
	case errTooManyAuthFailures:
		return "auth_throttled"
	case errEncryptionRequired:
		return "encryption_required"
	case errTooMany:
		return "too_many_recipients"
	case errBadSyntax, errBadSender:
		return "bad_address"
	case errTooBig:
		return "too_big"
	case errLineTooLong:
		return "line_too_long"
	case errJournal:
		return "journal_error"
	case errNoStorage:
		return "insufficient_storage"
	case errNoMemoryReply:
		return "body_memory"
	case errSpam:
		return "spam"
	case errTempFailure:
		return "temporary"
	}
	if se, ok := err.(*smtp.SMTPError); ok {
		switch se.Code {
		case 550:
			return "not_authenticated"
		case 553:
			return "sender_not_owned"
		}
	}
	return "validator"
}

func (s *session) Reset() {
	s.t.From, s.t.Rcpts, s.t.Rcpt, s.t.Size, s.t.Header = "", nil, "", 0, nil
}

func (s *session) Logout() error { return nil }

// reverseName is the client's reverse DNS name, confirmed by a forward
// lookup (like Postfix's client name), or "" (unknown). It is asked once
// per session, at EHLO, with a short timeout.
func reverseName(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	names, err := net.DefaultResolver.LookupAddr(ctx, ip.String())
	if err != nil || len(names) == 0 {
		return ""
	}
	name := strings.TrimSuffix(names[0], ".")
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if a.Unmap() == ip {
			return name
		}
	}
	return ""
}

// policyHeader returns the header block of a message.
func policyHeader(body []byte) []byte {
	if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 {
		return body[:i+2]
	}
	return body
}

// validAddress is a conservative check of a mailbox: local@domain, no
// spaces or angle brackets, a dotted or bracketed domain.
func validAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || len(a) > 320 {
		return false
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x20 || c == 0x7f || c == ' ' || c == '<' || c == '>' {
			return false
		}
	}
	domain := a[at+1:]
	if strings.HasPrefix(domain, "[") {
		_, ok := addressLiteral(domain)
		return ok
	}
	if len(domain) > 255 {
		return false
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c >= 0x80) {
				return false
			}
		}
	}
	return true
}

// addressLiteral parses a domain literal: "[192.0.2.1]" or
// "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3).
func addressLiteral(d string) (netip.Addr, bool) {
	if len(d) < 3 || d[0] != '[' || d[len(d)-1] != ']' {
		return netip.Addr{}, false
	}
	inner := d[1 : len(d)-1]
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		ip, err := netip.ParseAddr(inner[5:])
		return ip, err == nil && ip.Is6() && !ip.Is4In6() && ip.Zone() == ""
	}
	ip, err := netip.ParseAddr(inner)
	return ip, err == nil && ip.Is4()
}

// NormalizeLineEndings turns bare LF and bare CR into CRLF (Postfix's
// smtpd_forbid_bare_newline = normalize), so that what is relayed can never
// be read as two messages by a next hop, and ends the body with CRLF.
func NormalizeLineEndings(b []byte) []byte {
	if !bytes.ContainsAny(b, "\r\n") {
		if len(b) == 0 {
			return b
		}
		return append(b, '\r', '\n')
	}
	out := make([]byte, 0, len(b)+len(b)/50+2)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, '\r', '\n')
	}
	return out
}

// loginServer is the server side of AUTH LOGIN (not in go-sasl).
type loginServer struct {
	check    func(user, pass string) error
	step     int
	username string
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.username = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.username, string(response))
	}
	return nil, false, fmt.Errorf("unexpected AUTH LOGIN step")
}
