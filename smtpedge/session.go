package smtpedge

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
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

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
)

// Replies of SPEC.md's table.
var (
	errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	errBadCredentials     = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthTemp           = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	errTooMany            = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	errBadSyntax          = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad address syntax"}
	errTooBig             = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big"}
	errTempFailure        = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure, try again later"}
)

func notAuthenticated(sender string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "<" + sender + "> Not authenticated"}
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
	return &session{
		s: b.s, c: c, listener: b.listener, client: addr, helo: c.Hostname(),
		log: b.s.o.Logger.With(zap.String("client", addr)),
	}, nil
}

// session is one SMTP session; go-smtp calls it from one goroutine.
type session struct {
	s        *Server
	c        *smtp.Conn
	listener string
	client   string
	helo     string
	log      *zap.Logger

	identity *Identity
	from     string
	declared int64
	rcpts    []string
}

func (s *session) tlsState() (tls.ConnectionState, bool) { return s.c.TLSConnectionState() }

func (s *session) trusted() bool {
	host, _, err := net.SplitHostPort(s.client)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	for _, p := range s.s.o.TrustedNetworks {
		if p.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

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

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.authAllowed() {
		return nil, errEncryptionRequired
	}
	check := func(username, password string) error {
		id, err := s.s.o.Auth.Authenticate(username, password)
		if errors.Is(err, ErrBadCredentials) {
			s.log.Info("auth failed", zap.String("user", username))
			return errBadCredentials
		}
		if err != nil {
			s.log.Error("authenticator error", zap.String("user", username), zap.Error(err))
			return errAuthTemp
		}
		s.identity = &id
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
	if s.identity == nil && !s.trusted() {
		return notAuthenticated(from)
	}
	if from != "" && !validAddress(from) {
		return errBadSyntax
	}
	if s.identity != nil && s.s.o.RequireOwnership && from != "" && !s.identity.Owns(from) {
		s.log.Info("sender not owned", zap.String("from", from))
		return notOwned(from)
	}
	if from == "" && s.identity == nil {
		return notAuthenticated(from)
	}
	if opts != nil && s.s.o.MaxMessageBytes > 0 && opts.Size > s.s.o.MaxMessageBytes {
		return errTooBig
	}
	s.from = from
	if opts != nil {
		s.declared = opts.Size
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !validAddress(to) {
		return errBadSyntax
	}
	if s.s.o.MaxRecipients > 0 && len(s.rcpts) >= s.s.o.MaxRecipients {
		return errTooMany
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

// Data reads the message, makes it durable and only then answers 250.
func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return errTooBig
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return errTempFailure
	}
	body := NormalizeLineEndings(raw)
	id := NewID()
	rcv := events.Received{
		Sender: s.from, Recipients: append([]string(nil), s.rcpts...), BodyKey: id, Size: int64(len(body)),
		Listener: s.listener, ClientAddr: s.client, Helo: s.c.Hostname(), DeclaredSize: s.declared,
	}
	if st, ok := s.tlsState(); ok {
		rcv.TLS = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
	}
	if s.identity != nil {
		rcv.AuthUser = s.identity.Name
	}
	_, err = s.s.o.Journal.Append(journal.Write{
		Bodies: []journal.Body{{Key: id, Data: body}},
		Events: []events.Event{{Envelope: id, Payload: rcv}},
	})
	if err != nil {
		s.log.Error("journal append failed; message refused", zap.String("envelope", id), zap.Error(err))
		return errTempFailure
	}
	s.log.Info("message accepted", zap.String("envelope", id), zap.String("from", s.from),
		zap.Strings("to", rcv.Recipients), zap.Int("size", len(body)), zap.String("tls", rcv.TLS))
	s.s.o.Accepted(id)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + id}
}

func (s *session) Reset() {
	s.from, s.rcpts, s.declared = "", nil, 0
}

func (s *session) Logout() error { return nil }

// NewID returns a new envelope ID: 20 upper-case hex digits, the first 12 a
// millisecond timestamp so that IDs sort by arrival.
func NewID() string {
	var b [10]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	rand.Read(b[6:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

// validAddress is a conservative check of a mailbox: local@domain, no
// spaces or angle brackets, a dotted or bracketed domain.
func validAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || len(a) > 320 {
		return false
	}
	if strings.ContainsAny(a, " \t<>\r\n") {
		return false
	}
	domain := a[at+1:]
	if strings.HasPrefix(domain, "[") {
		return strings.HasSuffix(domain, "]")
	}
	return !strings.HasPrefix(domain, ".") && !strings.HasSuffix(domain, ".") && !strings.Contains(domain, "..")
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
