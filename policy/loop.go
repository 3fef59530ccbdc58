package policy

import (
	"bytes"
)

// MaxHops is how many Received: headers a message may carry before it is
// taken for a mail loop and bounced (5.4.6), as Postfix's hopcount_limit.
const MaxHops = 50

// CountReceived counts the Received: fields of body's header block.
func CountReceived(body []byte) int {
	n := 0
	for _, line := range bytes.Split(HeaderBlock(body), []byte("\n")) {
		if len(line) >= 9 && bytes.EqualFold(line[:9], []byte("received:")) {
			n++
		}
	}
	return n
}
