package scaleout

import "github.com/asynkron/protoactor-go/actor"

// Receiver takes envelopes that a draining peer hands over.
type Receiver interface{}

func (n *Node) receiveTransfer(c actor.Context, kind string, msg any) {
	c.Respond(wrap(map[string]string{"error": "unknown request " + kind}))
}
