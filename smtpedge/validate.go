package smtpedge

import (
	"bytes"
	"fmt"
	"net/mail"
	"net/netip"

	"github.com/emersion/go-smtp"
)

// Stage is the point of an SMTP session a Validator is asked about.
type Stage int

// The stages, in session order.
const (
	StageConnect Stage = iota // before the banner; a refusal closes the connection
	StageEhlo                 // EHLO/HELO name known
	StageAuth                 // a user authenticated
	StageMail                 // MAIL FROM
	StageRcpt                 // each RCPT TO
	StageData                 // the whole message read, before it is journaled
)

// Transaction is what validators see. Fields fill in as the session goes on.
type Transaction struct {
	ClientIP   netip.Addr
	ClientAddr string // ip:port
	RDNS       string // reverse DNS name, forward-confirmed; "" when unknown
	Listener   string
	Helo       string
	TLS        bool
	Trusted    bool      // the client is in trusted_networks
	Identity   *Identity // nil until AUTH succeeds
	From       string
	Rcpts      []string // accepted so far
	Rcpt       string   // the recipient being validated (StageRcpt)
	Size       int64    // declared SIZE at StageMail, body size at StageData
	Header     []byte   // the header block (StageData)
}

// Validator vets a session at each stage, like slimta's SmtpValidators.
// Returning an error refuses the command: an *smtp.SMTPError is sent as it
// is; any other error is answered "451 4.3.0" without its text.
type Validator interface {
	Validate(stage Stage, t *Transaction) error
}

// ValidatorFunc adapts a function to a Validator.
type ValidatorFunc func(stage Stage, t *Transaction) error

// Validate calls f.
func (f ValidatorFunc) Validate(stage Stage, t *Transaction) error { return f(stage, t) }

// DefaultValidators is the default set, in order: authentication before
// MAIL (trusted networks excepted), address syntax, sender ownership, null
// sender only for authenticated users, and max recipients.
func DefaultValidators(requireOwnership bool, maxRecipients int) []Validator {
	return []Validator{
		ValidatorFunc(requireAuth),
		ValidatorFunc(addressSyntax),
		ownership{required: requireOwnership},
		ValidatorFunc(nullSender),
		maxRcpts{max: maxRecipients},
	}
}

func requireAuth(stage Stage, t *Transaction) error {
	if stage == StageMail && t.Identity == nil && !t.Trusted {
		return notAuthenticated(t.From)
	}
	return nil
}

func addressSyntax(stage Stage, t *Transaction) error {
	switch {
	case stage == StageMail && t.From != "" && !validAddress(t.From):
		return errBadSender
	case stage == StageRcpt && !validAddress(t.Rcpt):
		return errBadSyntax
	}
	return nil
}

// ownership: an authenticated user may send only as addresses it owns,
// in MAIL FROM and in the From: and Sender: headers (Postfix's
// reject_sender_login_mismatch, extended to the headers that DKIM and the
// recipient see). Trusted-network submissions are not checked.
type ownership struct{ required bool }

func (o ownership) Validate(stage Stage, t *Transaction) error {
	if !o.required || t.Identity == nil {
		return nil
	}
	switch stage {
	case StageMail:
		if t.From != "" && !t.Identity.Owns(t.From) {
			return notOwned(t.From)
		}
	case StageData:
		addrs, err := HeaderSenders(t.Header)
		if err != nil {
			return headerNotOwned("", err.Error())
		}
		for _, a := range addrs {
			if !t.Identity.Owns(a) {
				return headerNotOwned(a, "")
			}
		}
	}
	return nil
}

// HeaderSenders returns every address of the From: and Sender: fields of
// a header block.
func HeaderSenders(header []byte) ([]string, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte(nil), header...), '\r', '\n')))
	if err != nil {
		return nil, fmt.Errorf("the header cannot be parsed")
	}
	var out []string
	for _, field := range []string{"From", "Sender"} {
		for _, v := range msg.Header[field] {
			list, err := mail.ParseAddressList(v)
			if err != nil {
				return nil, fmt.Errorf("the %s: field cannot be parsed", field)
			}
			for _, a := range list {
				out = append(out, a.Address)
			}
		}
	}
	return out, nil
}

// nullSender: "MAIL FROM:<>" is for bounces; only authenticated users (or
// trusted hosts relaying bounces) may send one.
func nullSender(stage Stage, t *Transaction) error {
	if stage == StageMail && t.From == "" && t.Identity == nil && !t.Trusted {
		return notAuthenticated("")
	}
	return nil
}

type maxRcpts struct{ max int }

func (m maxRcpts) Validate(stage Stage, t *Transaction) error {
	if stage == StageRcpt && m.max > 0 && len(t.Rcpts) >= m.max {
		return errTooMany
	}
	return nil
}

// runValidators asks each validator in turn; the first refusal wins.
func runValidators(vs []Validator, stage Stage, t *Transaction) error {
	for _, v := range vs {
		if err := v.Validate(stage, t); err != nil {
			if _, ok := err.(*smtp.SMTPError); ok {
				return err
			}
			return errTempFailure
		}
	}
	return nil
}
