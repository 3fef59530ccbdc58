package events

import "time"

// The handoff of a live envelope to another node of the cluster (`mta
// drain`), in two phases: the origin journals TransferStarted and stops
// delivering the envelope; the peer journals TransferredIn (durable, with
// the body) and acknowledges; the origin journals TransferredOut. A
// TransferStarted without an outcome is resolved by asking the peer:
// TransferredOut if it has the envelope, else TransferAborted (delivered
// here again).
const (
	TypeTransferStarted Type = "TransferStarted"
	TypeTransferredOut  Type = "TransferredOut"
	TypeTransferAborted Type = "TransferAborted"
	TypeTransferredIn   Type = "TransferredIn"
)

// TransferStarted: the envelope is being handed to Peer (a node name).
type TransferStarted struct {
	Peer       string   `json:"peer"`
	Recipients []string `json:"recipients"`
}

// TransferredOut: Peer has the envelope (durably); it is final here.
type TransferredOut struct {
	Peer       string   `json:"peer"`
	Recipients []string `json:"recipients"`
}

// TransferAborted: the peer does not have the envelope; it is delivered
// here again.
type TransferAborted struct {
	Peer   string `json:"peer"`
	Reason string `json:"reason"`
}

// TransferredIn creates an envelope handed over by Origin (a node name)
// under the ID it had there. The stored body is the message as the origin
// would have sent it (its policies' header block included), so the
// envelope is ready for delivery: no policies run again.
type TransferredIn struct {
	Origin     string    `json:"origin"`
	Sender     string    `json:"sender"`
	Recipients []string  `json:"recipients"`
	BodyKey    string    `json:"body_key"`
	BodySHA256 string    `json:"body_sha256"`
	Size       int64     `json:"size"`
	Arrived    time.Time `json:"arrived"` // when the origin accepted it (max_age counts from there)
	Attempts   int       `json:"attempts"`
	AuthUser   string    `json:"auth_user,omitempty"`
	ClientAddr string    `json:"client_addr,omitempty"`
}

func (TransferStarted) EventType() Type { return TypeTransferStarted }
func (TransferredOut) EventType() Type  { return TypeTransferredOut }
func (TransferAborted) EventType() Type { return TypeTransferAborted }
func (TransferredIn) EventType() Type   { return TypeTransferredIn }
