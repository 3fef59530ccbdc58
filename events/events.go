// Package events defines the journal's schema: every state change of an
// envelope is one Event, a versioned record with a typed payload.
//
// The contract: an Event encodes to a self-describing JSON object
// ({"type","v","env","time","data"}). Decoders accept any version they know
// and keep unknown fields and unknown event types readable (as Raw payloads),
// so a journal written by a newer ledgermail can still be listed by an older
// one, and every older journal stays readable by newer ones. Fields are only
// ever added; a field's meaning never changes within a type.
//
// This package imports nothing of the project.
package events

import (
	"time"
)

// Type names an event type. The string is what the journal stores.
type Type string

// The lifecycle of an envelope, in order (package lifecycle says which may
// follow which).
const (
	TypeReceived        Type = "Received"
	TypePoliciesApplied Type = "PoliciesApplied"
	TypeSplit           Type = "Split"
	TypeAttemptStarted  Type = "AttemptStarted"
	TypeAttempted       Type = "Attempted"
	TypeDeferred        Type = "Deferred"
	TypeDelivered       Type = "Delivered"
	TypeBounced         Type = "Bounced"
	TypeExpired         Type = "Expired"
	TypeRetryRequested  Type = "RetryRequested"
	TypeDeleted         Type = "Deleted"
	TypeLost            Type = "Lost"
	TypeRecordLost      Type = "RecordLost"
	TypeSuspended       Type = "Suspended"
	TypeResumed         Type = "Resumed"
)

// DomainEnvelope is the Envelope of the events about a destination domain
// rather than a message (Suspended, Resumed): "@" and the domain.
func DomainEnvelope(domain string) string { return "@" + domain }

// CurrentVersion is the schema version written by this build for every type.
const CurrentVersion = 1

// Event is one journal record. Seq and Time are assigned by the journal when
// the event is appended; callers fill Envelope and Payload.
type Event struct {
	Seq      uint64
	Time     time.Time
	Envelope string
	Version  int
	Payload  Payload
}

// Type reports the event's type, taken from its payload.
func (e Event) Type() Type {
	if e.Payload == nil {
		return ""
	}
	return e.Payload.EventType()
}

// Payload is the type-specific part of an event.
type Payload interface {
	EventType() Type
}

// Received records an accepted message: the envelope, where the body is
// stored and how the client reached us. It is durable before the SMTP 250.
type Received struct {
	Sender     string   `json:"sender"`
	Recipients []string `json:"recipients"`
	BodyKey    string   `json:"body_key"`
	// BodySHA256 is the hex SHA-256 of the stored body: every read checks
	// it. Empty in events written before it existed (not checked).
	BodySHA256 string `json:"body_sha256,omitempty"`
	// BodySegment and BodyOffset say where the journal stored the body
	// (Size bytes at BodyOffset in body segment BodySegment); zero in
	// events written before body segments existed.
	BodySegment  uint64 `json:"body_segment,omitempty"`
	BodyOffset   int64  `json:"body_offset,omitempty"`
	Size         int64  `json:"size"`
	Listener     string `json:"listener,omitempty"`
	ClientAddr   string `json:"client_addr,omitempty"`
	ClientName   string `json:"client_name,omitempty"` // reverse DNS, forward-confirmed
	Helo         string `json:"helo,omitempty"`
	TLS          string `json:"tls,omitempty"`
	AuthUser     string `json:"auth_user,omitempty"`
	DeclaredSize int64  `json:"declared_size,omitempty"`
	// ScanHeaders are the header fields the content scan (spamd) asked to
	// add, CRLF-terminated; the policies prepend them.
	ScanHeaders string `json:"scan_headers,omitempty"`
	// Parent is set for envelopes created by ledgermail itself (a DSN names
	// the envelope that bounced).
	Parent string `json:"parent,omitempty"`
}

// ListenerLocal is Received.Listener for messages ledgermail makes itself
// (delivery status notifications).
const ListenerLocal = "local"

// PoliciesApplied records what the queue policies changed. Prepend is the
// exact header block (CRLF lines) put in front of the stored body, so that
// replay reproduces the relayed bytes.
type PoliciesApplied struct {
	Policies   []string `json:"policies"`
	Prepend    string   `json:"prepend,omitempty"`
	Recipients []string `json:"recipients"`
}

// Child is one envelope produced by a split.
type Child struct {
	ID         string   `json:"id"`
	Recipients []string `json:"recipients"`
}

// Split names the child envelopes (one per destination) created from the
// parent; each child delivers its recipients independently.
type Split struct {
	Mode     string  `json:"mode"`
	Children []Child `json:"children"`
}

// AttemptStarted records that a delivery attempt began.
type AttemptStarted struct {
	Attempt    int      `json:"attempt"`
	Recipients []string `json:"recipients"`
}

// RcptResult is the typed outcome of one recipient in one attempt.
type RcptResult struct {
	Recipient string `json:"rcpt"`
	Code      int    `json:"code"`
	Enhanced  string `json:"enhanced,omitempty"`
	Message   string `json:"message"`
	Temporary bool   `json:"temporary"`
}

// Attempted records one delivery attempt's per-recipient results.
type Attempted struct {
	Attempt int          `json:"attempt"`
	Host    string       `json:"host,omitempty"`
	TLS     string       `json:"tls,omitempty"`
	Results []RcptResult `json:"results"`
	Seconds float64      `json:"seconds"`
	// TLSPolicy is the transport security policy that applied: "mta-sts"
	// (with its mode and the policy's id) or "dane"; TLSResult is
	// "success" or the TLS-RPT result type (RFC 8460) of its failure, and
	// TLSDetail why.
	TLSPolicy string `json:"tls_policy,omitempty"`
	STSMode   string `json:"sts_mode,omitempty"`
	STSID     string `json:"sts_id,omitempty"`
	TLSResult string `json:"tls_result,omitempty"`
	TLSDetail string `json:"tls_detail,omitempty"`
}

// Deferred records that recipients wait for another attempt at NextAttempt.
type Deferred struct {
	Recipients  []string  `json:"recipients"`
	NextAttempt time.Time `json:"next_attempt"`
	Reason      string    `json:"reason"`
	// DelayDSN is the ID of the delay warning (RFC 3464 "Action: delayed")
	// queued to the sender with this deferral: sent once per envelope.
	DelayDSN string `json:"delay_dsn,omitempty"`
}

// Delivered records recipients whose delivery the next hop accepted.
type Delivered struct {
	Recipients []string `json:"recipients"`
	Host       string   `json:"host,omitempty"`
}

// Bounced records recipients that failed permanently. DSN is the envelope ID
// of the delivery status notification queued to the sender, if any.
type Bounced struct {
	Recipients []string `json:"recipients"`
	Reason     string   `json:"reason"`
	DSN        string   `json:"dsn,omitempty"`
}

// Expired records that the envelope outlived the queue's max_age.
type Expired struct {
	Recipients []string `json:"recipients"`
	Age        string   `json:"age"`
}

// Suspended records an operator's stop of deliveries to Domain until Until
// (zero: until Resumed). Its Envelope is DomainEnvelope(Domain).
type Suspended struct {
	Domain string    `json:"domain"`
	Until  time.Time `json:"until,omitempty"`
}

// Resumed ends a suspension of Domain.
type Resumed struct {
	Domain string `json:"domain"`
}

// RetryRequested records an operator's request to retry now.
type RetryRequested struct {
	By string `json:"by,omitempty"`
}

// Deleted records an operator's removal of the envelope (no bounce).
type Deleted struct {
	By string `json:"by,omitempty"`
}

// Raw holds an event of a type this build does not know. It is listed, not
// interpreted.
// Lost is journaled by `mta journal repair` for an envelope it can no
// longer account for (a record or its body is unreadable): a final state;
// the sender gets a DSN (DSN names its envelope) unless the sender is <>.
type Lost struct {
	Recipients []string `json:"recipients"`
	Reason     string   `json:"reason"`
	DSN        string   `json:"dsn,omitempty"`
}

// RecordLost stands, after `mta journal repair`, at the sequence number of
// a record that could not be read, so that the sequence has no gap and the
// audit shows the loss; it changes no envelope. Envelope is the one the
// per-envelope index named, or "-" when unknown.
type RecordLost struct {
	Reason string `json:"reason"`
}

type Raw struct {
	RawType Type   `json:"-"`
	Data    []byte `json:"-"`
}

func (Received) EventType() Type        { return TypeReceived }
func (PoliciesApplied) EventType() Type { return TypePoliciesApplied }
func (Split) EventType() Type           { return TypeSplit }
func (AttemptStarted) EventType() Type  { return TypeAttemptStarted }
func (Attempted) EventType() Type       { return TypeAttempted }
func (Deferred) EventType() Type        { return TypeDeferred }
func (Delivered) EventType() Type       { return TypeDelivered }
func (Bounced) EventType() Type         { return TypeBounced }
func (Expired) EventType() Type         { return TypeExpired }
func (RetryRequested) EventType() Type  { return TypeRetryRequested }
func (Suspended) EventType() Type       { return TypeSuspended }
func (Resumed) EventType() Type         { return TypeResumed }
func (Deleted) EventType() Type         { return TypeDeleted }
func (Lost) EventType() Type            { return TypeLost }
func (RecordLost) EventType() Type      { return TypeRecordLost }
func (r Raw) EventType() Type           { return r.RawType }
