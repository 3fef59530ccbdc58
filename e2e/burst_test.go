package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// burstScript opens N SMTP sessions (trusted loopback: no TLS or AUTH
// needed), takes each to the end of its body, waits until all are there,
// then sends every final "." at the same moment and prints each reply code.
const burstScript = `
import smtplib, socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
barrier = threading.Barrier(n, timeout=120)
codes, lock = [], threading.Lock()
def one(i):
    code = "connect-failed"
    try:
        s = smtplib.SMTP(host, port, timeout=120)
        s.ehlo("burst.test")
        s.mail("burst@example.test")
        s.rcpt("rcpt%d@dest.test" % i)
        c, _ = s.docmd("DATA")
        if c != 354:
            code = "data-%d" % c
            barrier.abort()
        else:
            s.send(("Subject: burst %d\r\n\r\nmessage %d\r\n" % (i, i)).encode())
            barrier.wait()
            s.send(b".\r\n")
            c, _ = s.getreply()
            code = str(c)
        s.close()
    except Exception as e:
        code = "error:" + type(e).__name__
    with lock:
        codes.append(code)
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
from collections import Counter
for k, v in sorted(Counter(codes).items()): print(k, v)
`

// 2,000 sessions that send their final "." at once all get 250, all reach
// the sink, and the server still answers afterwards (the journal's
// request queue holds 1,024: the rest wait instead of deadlocking).
func TestBurstOf2000FinalDots(t *testing.T) {
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr, trusted: true, extra: "[limits]\nmax_connections = 2500\n"})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()
	host, port, _ := strings.Cut(s.sub, ":")
	const n = 2000
	out := python(t, burstScript, host, port, fmt.Sprint(n))
	if strings.TrimSpace(out) != fmt.Sprintf("250 %d", n) {
		t.Fatalf("replies to %d simultaneous final dots:\n%s", n, out)
	}
	waitFor(t, "every message at the sink", 3*time.Minute, func() bool { return len(sk.messages(t)) == n })
	s.submit(t, "alice@example.test", "after@dest.test")
}
