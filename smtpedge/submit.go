package smtpedge

import (
	"bytes"
	"errors"
	"net/netip"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// Submission is one message handed in by another edge (the HTTP API): the
// same credentials, rules and journal path as an SMTP session.
type Submission struct {
	ClientAddr         string // ip:port
	Listener           string // e.g. "http/127.0.0.1:2580"
	Username, Password string
	From               string
	Rcpts              []string
	Body               []byte
	TLS                string // the connection's TLS, if any
}

// checkPassword authenticates a user for every edge: a wrong name or
// password counts against ip in the AUTH-failure throttle and is
// errBadCredentials, or errTooManyAuthFailures once ip reached the limit;
// an authenticator failure is errAuthTemp.
func (s *Server) checkPassword(ip netip.Addr, user, password string, log *zap.Logger) (Identity, error) {
	id, err := s.o.Auth.Authenticate(user, password)
	if errors.Is(err, ErrBadCredentials) {
		log.Info("auth failed", zap.String("user", user))
		if s.throttle.fail(ip) {
			log.Warn("too many auth failures", zap.String("ip", ip.String()))
			return Identity{}, errTooManyAuthFailures
		}
		return Identity{}, errBadCredentials
	}
	if err != nil {
		log.Error("authenticator error", zap.String("user", user), zap.Error(err))
		return Identity{}, errAuthTemp
	}
	return id, nil
}

// Submit authenticates and validates a Submission exactly as an SMTP
// session would (the AUTH-failure throttle, the Auth, Mail, Rcpt and Data
// validators, the size limit, min_free) and accepts it (Accept). It returns
// the envelope ID, or the *smtp.SMTPError an SMTP client would have got.
func (s *Server) Submit(sub Submission) (string, error) {
	t := &Transaction{ClientAddr: sub.ClientAddr, Listener: sub.Listener, TLS: sub.TLS != ""}
	if ap, err := netip.ParseAddrPort(sub.ClientAddr); err == nil {
		t.ClientIP = ap.Addr().Unmap()
	}
	log := s.o.Logger.With(zap.String("client", sub.ClientAddr), zap.String("listener", sub.Listener))
	if s.throttle.blocked(t.ClientIP) {
		return "", errTooManyAuthFailures
	}
	id, err := s.checkPassword(t.ClientIP, sub.Username, sub.Password, log)
	if err != nil {
		return "", err
	}
	t.Identity = &id
	log = log.With(zap.String("user", id.Name))
	if err := runValidators(s.validators, StageAuth, t); err != nil {
		return "", err
	}
	t.From, t.Size = sub.From, int64(len(sub.Body))
	if err := runValidators(s.validators, StageMail, t); err != nil {
		log.Info("sender refused", zap.String("from", sub.From), zap.Error(err))
		return "", err
	}
	if s.o.MaxMessageBytes > 0 && t.Size > s.o.MaxMessageBytes {
		return "", errTooBig
	}
	if !s.o.Journal.HasRoom(t.Size) {
		return "", errNoStorage
	}
	if len(sub.Rcpts) == 0 {
		return "", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	}
	for _, r := range sub.Rcpts {
		t.Rcpt = r
		if err := runValidators(s.validators, StageRcpt, t); err != nil {
			log.Info("recipient refused", zap.String("to", r), zap.Error(err))
			return "", err
		}
		t.Rcpts = append(t.Rcpts, r)
	}
	sp := s.NewSpool()
	if _, err := sp.ReadFrom(bytes.NewReader(sub.Body)); err != nil {
		sp.Discard()
		return "", errTempFailure
	}
	return s.Accept(t, sp, Origin{TLS: sub.TLS}, log)
}
