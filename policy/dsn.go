package policy

import (
	"fmt"
	"strings"
	"time"
)

// DSNRecipient is one failed recipient of a delivery status notification.
type DSNRecipient struct {
	Recipient string
	// Status is the RFC 3463 code ("5.1.1"); Diagnostic the SMTP reply or
	// the reason ("550 5.1.1 no such user").
	Status     string
	Diagnostic string
	RemoteMTA  string // host that answered, if any
}

// DSN describes a failure report (RFC 3464) to the envelope sender.
type DSN struct {
	ID       string // the DSN envelope's own ID (for Message-ID)
	Hostname string // Reporting-MTA
	Envelope string // the envelope that failed
	Sender   string // original sender, the DSN's recipient
	Arrived  time.Time
	Now      time.Time
	Expired  bool // the failure is max_age, not a 5xx
	// Delayed makes it a delay warning (RFC 3464 "Action: delayed"): the
	// message is still being retried, until RetryUntil.
	Delayed    bool
	RetryUntil time.Time
	Recipients []DSNRecipient
	// Header is the original message's header block (CRLF lines).
	Header []byte
}

// BuildDSN returns the DSN message: a multipart/report with a readable part,
// a message/delivery-status part and the original headers
// (text/rfc822-headers). It is pure: same input, same bytes.
func BuildDSN(d DSN) []byte {
	boundary := "=_ledgermail_" + d.ID
	var b strings.Builder
	crlf := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	crlf("From: Mail Delivery System <MAILER-DAEMON@%s>", d.Hostname)
	crlf("To: <%s>", d.Sender)
	if d.Delayed {
		crlf("Subject: Delayed Mail (still being retried)")
	} else if d.Expired {
		crlf("Subject: Undelivered Mail Returned to Sender (delivery time expired)")
	} else {
		crlf("Subject: Undelivered Mail Returned to Sender")
	}
	crlf("Date: %s", d.Now.Format(time.RFC1123Z))
	crlf("Message-ID: <%s.dsn@%s>", strings.ToLower(d.ID), d.Hostname)
	crlf("Auto-Submitted: auto-replied")
	crlf("MIME-Version: 1.0")
	crlf("Content-Type: multipart/report; report-type=delivery-status;")
	crlf("\tboundary=\"%s\"", boundary)
	crlf("")
	crlf("This is a MIME-encapsulated message.")
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Description: Notification")
	crlf("Content-Type: text/plain; charset=us-ascii")
	crlf("")
	crlf("This is the mail system at host %s.", d.Hostname)
	crlf("")
	if d.Delayed {
		crlf("Your message could not be delivered yet to the recipients below.")
		crlf("The mail system keeps trying; no action is needed on your part.")
		if !d.RetryUntil.IsZero() {
			crlf("It gives up after %s.", d.RetryUntil.Format(time.RFC1123Z))
		}
	} else if d.Expired {
		crlf("Your message could not be delivered to the recipients below before it")
		crlf("expired in the queue. It has been returned to you.")
	} else {
		crlf("Your message could not be delivered to one or more recipients.")
		crlf("It has been returned to you. The errors are below.")
	}
	crlf("")
	for _, r := range d.Recipients {
		crlf("<%s>: %s", r.Recipient, oneLine(r.Diagnostic))
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Description: Delivery report")
	crlf("Content-Type: message/delivery-status")
	crlf("")
	crlf("Reporting-MTA: dns; %s", d.Hostname)
	crlf("X-Ledgermail-Envelope-ID: %s", d.Envelope)
	if !d.Arrived.IsZero() {
		crlf("Arrival-Date: %s", d.Arrived.Format(time.RFC1123Z))
	}
	for _, r := range d.Recipients {
		crlf("")
		crlf("Final-Recipient: rfc822; %s", r.Recipient)
		if d.Delayed {
			crlf("Action: delayed")
		} else {
			crlf("Action: failed")
		}
		crlf("Status: %s", r.Status)
		if r.RemoteMTA != "" {
			crlf("Remote-MTA: dns; %s", r.RemoteMTA)
		}
		if r.Diagnostic != "" {
			crlf("Diagnostic-Code: smtp; %s", oneLine(r.Diagnostic))
		}
		crlf("Last-Attempt-Date: %s", d.Now.Format(time.RFC1123Z))
		if d.Delayed && !d.RetryUntil.IsZero() {
			crlf("Will-Retry-Until: %s", d.RetryUntil.Format(time.RFC1123Z))
		}
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Description: Undelivered Message Headers")
	crlf("Content-Type: text/rfc822-headers")
	crlf("")
	h := strings.ReplaceAll(string(d.Header), "\r\n", "\n")
	for _, l := range strings.Split(strings.TrimRight(h, "\n"), "\n") {
		crlf("%s", l)
	}
	crlf("")
	crlf("--%s--", boundary)
	return []byte(b.String())
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// StatusFor returns the RFC 3463 status to report for a reply: its
// enhanced code when it has one, else one derived from the reply class.
func StatusFor(code int, enhanced string, expired bool) string {
	switch {
	case expired:
		return "4.4.7"
	case enhanced != "":
		return enhanced
	case code >= 500:
		return "5.0.0"
	case code >= 400:
		return "4.0.0"
	}
	return "5.0.0"
}
