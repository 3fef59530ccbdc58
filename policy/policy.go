// Package policy holds the queue policies the envelope actor applies right
// after Received: header additions and the recipient split.
//
// The contract: policies never modify the stored body. What they add is a
// header block prepended to it, recorded verbatim in the PoliciesApplied
// event, so that replay reproduces the exact bytes that were relayed. Every
// function here is pure: same inputs, same output.
package policy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/mail"
	"strings"
	"time"

	"github.com/ledgermail/ledgermail/events"
)

// Options select the policies ([policies], docs/POLICIES.md). They run in this order:
// Received, Date, Message-ID, the spam scan's headers, Forward, DKIM (last,
// so that it signs what is relayed).
type Options struct {
	AddDate      bool
	AddMessageID bool
	AddReceived  bool
	// ReceivedAuthUser adds "(authenticated sender: LOGIN)" to Received.
	ReceivedAuthUser bool
	// Split is "domain", "recipient" or "none".
	Split   string
	Forward []ForwardRule
	// DKIM keys; a message is signed with the key of its sender's domain.
	DKIM []DKIMKey
}

// Input is what the policies see of an accepted envelope.
type Input struct {
	ID       string
	Hostname string
	Received events.Received
	Arrived  time.Time
	// Header is the stored message's header block (HeaderBlock).
	Header []byte
	// Body returns a reader of the whole stored message (header and
	// body) from its start; DKIM reads it once, streaming.
	Body func() io.Reader
}

// Apply runs the policies and returns the PoliciesApplied event's payload.
// An error (a DKIM key that cannot sign) means the envelope must wait and
// try again; nothing is half-applied.
func Apply(o Options, in Input) (events.PoliciesApplied, error) {
	var b strings.Builder
	var applied []string
	header := HeaderBlock(in.Header)
	// A message made here (a DSN) did not come from a client: no trace field.
	if o.AddReceived && in.Received.Listener != events.ListenerLocal {
		b.WriteString(receivedHeader(in, o.ReceivedAuthUser))
		applied = append(applied, "received")
	}
	if o.AddDate && !hasField(header, "Date") {
		fmt.Fprintf(&b, "Date: %s\r\n", in.Arrived.Format(time.RFC1123Z))
		applied = append(applied, "date")
	}
	if o.AddMessageID && !hasField(header, "Message-ID") {
		fmt.Fprintf(&b, "Message-ID: <%s.%s@%s>\r\n", strings.ToLower(in.ID), randomHex(4), in.Hostname)
		applied = append(applied, "message-id")
	}
	if in.Received.ScanHeaders != "" {
		b.WriteString(in.Received.ScanHeaders)
		applied = append(applied, "spamassassin")
	}
	rcpts := in.Received.Recipients
	if len(o.Forward) > 0 {
		rcpts = Forward(o.Forward, rcpts)
		applied = append(applied, "forward")
	}
	prepend := b.String()
	if len(o.DKIM) == 0 {
		// No key to sign with: the From: field is not parsed.
	} else if key, ok := dkimKeyFor(o.DKIM, fromAddress(header)); ok {
		sig, err := key.SignReader(io.MultiReader(strings.NewReader(prepend), in.Body()))
		if err != nil {
			return events.PoliciesApplied{}, err
		}
		prepend = sig + prepend
		applied = append(applied, "dkim:"+key.Domain)
	}
	return events.PoliciesApplied{Policies: applied, Prepend: prepend, Recipients: append([]string(nil), rcpts...)}, nil
}

// fromAddress is the address of the From: field ("" unless exactly one).
// DKIM signs with the key of its domain (DMARC alignment): what the edge
// checked the user owns, not the envelope sender.
func fromAddress(header []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte(nil), header...), '\r', '\n')))
	if err != nil || len(msg.Header["From"]) != 1 {
		return ""
	}
	list, err := mail.ParseAddressList(msg.Header.Get("From"))
	if err != nil || len(list) != 1 {
		return ""
	}
	return list[0].Address
}

// dkimKeyFor picks the key of an address's domain.
func dkimKeyFor(keys []DKIMKey, sender string) (DKIMKey, bool) {
	i := strings.LastIndexByte(sender, '@')
	if i < 0 {
		return DKIMKey{}, false
	}
	d := strings.ToLower(sender[i+1:])
	for _, k := range keys {
		if k.Domain == d {
			return k, true
		}
	}
	return DKIMKey{}, false
}

// receivedHeader builds an RFC 5321 §4.4 trace field in Postfix's form.
func receivedHeader(in Input, authUser bool) string {
	r := in.Received
	host := r.ClientAddr
	if h, _, err := net.SplitHostPort(r.ClientAddr); err == nil {
		host = h
	}
	proto := "ESMTP"
	if r.TLS != "" {
		proto += "S"
	}
	if r.AuthUser != "" {
		proto += "A"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s (%s [%s])", orUnknown(r.Helo), orUnknown(r.ClientName), host)
	if r.TLS != "" {
		fmt.Fprintf(&b, "\r\n\t(using %s)", r.TLS)
	}
	if r.AuthUser != "" && authUser {
		fmt.Fprintf(&b, "\r\n\t(authenticated sender: %s)", r.AuthUser)
	}
	fmt.Fprintf(&b, "\r\n\tby %s (ledgermail) with %s id %s", in.Hostname, proto, in.ID)
	if len(r.Recipients) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", r.Recipients[0])
	}
	fmt.Fprintf(&b, "; %s\r\n", in.Arrived.Format(time.RFC1123Z))
	return b.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// HeaderBlock returns the header section of a message (through the first
// empty line, or all of it when there is none).
func HeaderBlock(body []byte) []byte {
	for i := 0; i < len(body); {
		j := bytes.IndexByte(body[i:], '\n')
		if j < 0 {
			return body
		}
		line := body[i : i+j]
		if len(bytes.TrimRight(line, "\r")) == 0 {
			return body[:i]
		}
		i += j + 1
	}
	return body
}

// hasField reports whether the header block has a field named name
// (case-insensitive; folded continuation lines are not field starts).
func hasField(header []byte, name string) bool {
	for _, line := range bytes.Split(header, []byte("\n")) {
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if i := bytes.IndexByte(line, ':'); i > 0 && strings.EqualFold(strings.TrimSpace(string(line[:i])), name) {
			return true
		}
	}
	return false
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Split groups recipients into the child envelopes of a split: per domain
// (case-insensitive), per recipient, or all together ("none"). Groups keep
// the recipients' order of first appearance.
func Split(mode string, rcpts []string) [][]string {
	switch mode {
	case "recipient":
		out := make([][]string, len(rcpts))
		for i, r := range rcpts {
			out[i] = []string{r}
		}
		return out
	case "none":
		if len(rcpts) == 0 {
			return nil
		}
		return [][]string{append([]string(nil), rcpts...)}
	}
	idx := map[string]int{}
	var out [][]string
	for _, r := range rcpts {
		d := ""
		if i := strings.LastIndexByte(r, '@'); i >= 0 {
			d = strings.ToLower(r[i+1:])
		}
		k, ok := idx[d]
		if !ok {
			k = len(out)
			idx[d] = k
			out = append(out, nil)
		}
		out[k] = append(out[k], r)
	}
	return out
}
