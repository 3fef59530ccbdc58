package smtpedge

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// authThrottle counts AUTH failures per client IP over a sliding window.
type authThrottle struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	fails  map[netip.Addr][]time.Time
}

func newAuthThrottle(max int, window time.Duration) *authThrottle {
	return &authThrottle{max: max, window: window, fails: map[netip.Addr][]time.Time{}}
}

// recent returns ip's failures still inside the window (pruning the rest).
func (a *authThrottle) recent(ip netip.Addr, now time.Time) []time.Time {
	ts := a.fails[ip]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= a.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(a.fails, ip)
	} else {
		a.fails[ip] = ts
	}
	return ts
}

// blocked reports whether ip has used up its failures.
func (a *authThrottle) blocked(ip netip.Addr) bool {
	if a == nil || a.max <= 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.recent(ip, time.Now())) >= a.max
}

// fail records a failure and reports whether ip is now blocked.
func (a *authThrottle) fail(ip netip.Addr) bool {
	if a == nil || a.max <= 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	ts := append(a.recent(ip, now), now)
	a.fails[ip] = ts
	if len(a.fails) > 100000 { // bound memory under a wide attack
		for k := range a.fails {
			a.recent(k, now)
		}
	}
	return len(ts) >= a.max
}

// tracked is one client connection, for graceful shutdown.
type tracked struct {
	conn   *slotConn // the raw connection (under TLS, if any)
	inData atomic.Bool
}

// connTracker knows every open client connection by remote address.
type connTracker struct {
	mu    sync.Mutex
	conns map[string]*tracked
}

func (t *connTracker) add(c *slotConn) *tracked {
	tr := &tracked{conn: c}
	t.mu.Lock()
	t.conns[c.RemoteAddr().String()] = tr
	t.mu.Unlock()
	return tr
}

func (t *connTracker) remove(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c.RemoteAddr().String())
	t.mu.Unlock()
}

func (t *connTracker) get(remote string) *tracked {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.conns[remote]
}

func (t *connTracker) each(fn func(*tracked)) int {
	t.mu.Lock()
	list := make([]*tracked, 0, len(t.conns))
	for _, c := range t.conns {
		list = append(list, c)
	}
	t.mu.Unlock()
	for _, c := range list {
		fn(c)
	}
	return len(list)
}

// gateListener enforces max_connections (421 4.7.0 when over) and the
// connect-stage validators, and tracks connections.
type gateListener struct {
	net.Listener
	s        *Server
	listener string
	implicit bool // TLS from the first byte: a refusal cannot be read, just close
}

func (l *gateListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.s.conns <- struct{}{}:
		default:
			l.s.o.Logger.Warn("connection refused: max_connections reached", zap.String("client", c.RemoteAddr().String()))
			if l.s.o.Rejected != nil {
				l.s.o.Rejected("too_many_connections")
			}
			l.refuse(c, "421 4.7.0 Too many connections, try again later")
			continue
		}
		if err := l.connectStage(c); err != nil {
			<-l.s.conns
			continue
		}
		sc := &slotConn{Conn: c, s: l.s, implicitTLS: l.implicit}
		sc.release = func() { l.s.tracker.remove(c); <-l.s.conns }
		sc.tr = l.s.tracker.add(sc)
		l.s.armWatchdog(sc)
		if l.implicit {
			l.s.armHandshake(sc)
		}
		return sc, nil
	}
}

func (l *gateListener) connectStage(c net.Conn) error {
	t := &Transaction{ClientAddr: c.RemoteAddr().String(), Listener: l.listener}
	if ap, err := netip.ParseAddrPort(t.ClientAddr); err == nil {
		t.ClientIP = ap.Addr().Unmap()
	}
	t.Trusted = l.s.trusted(t.ClientIP)
	if l.s.throttle.blocked(t.ClientIP) {
		l.refuse(c, "421 4.7.0 Too many authentication failures")
		return errTooMany
	}
	if err := runValidators(l.s.validators, StageConnect, t); err != nil {
		se := err.(*smtp.SMTPError)
		l.refuse(c, fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message))
		return err
	}
	return nil
}

func (l *gateListener) refuse(c net.Conn, line string) {
	if l.implicit {
		c.Close()
		return
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(line + "\r\n"))
	c.Close()
}

// slotConn holds a max_connections slot until closed. hangUp makes it close
// right after the next write (the reply that announces the hang-up), which
// go-smtp, re-arming its read deadline before every read, cannot be made
// to do by a deadline.
type slotConn struct {
	net.Conn
	s            *Server
	tr           *tracked
	once         sync.Once
	release      func()
	closeOnWrite atomic.Bool
	closed       atomic.Bool

	// Timeouts (timeouts.go).
	implicitTLS   bool
	lastReply     atomic.Int64 // unix nanos of the last write
	watchdog      atomic.Pointer[time.Timer]
	session       atomic.Pointer[net.Conn] // go-smtp's conn (TLS once it is)
	tlsStarted    atomic.Bool              // STARTTLS answered 220
	handshake     atomic.Pointer[time.Timer]
	handshakeDone atomic.Bool

	// Replies wait in out until the session reads again or closes (see
	// Write). wmu is never held across anything but the one write.
	wmu  sync.Mutex
	out  []byte
	werr error
}

// maxPendingReply bounds what Write keeps back: past it, it writes at once.
const maxPendingReply = 16 << 10

// Write keeps b back until the session next reads from the connection (or
// closes it), then sends everything kept in one write: go-smtp writes and
// flushes each line of a reply on its own (an EHLO reply was eight
// syscalls and as many TCP segments), and a pipelining client's commands
// are answered together, as RFC 2920 asks of a server. Nothing waits
// longer than that: a session reads, or closes, after every reply it
// writes (TLS included: a handshake reads after each flight it sends).
func (c *slotConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	err := c.werr
	if err == nil {
		c.out = append(c.out, b...)
		if len(c.out) >= maxPendingReply {
			err = c.flushLocked()
		}
	}
	c.wmu.Unlock()
	if err != nil {
		return 0, err
	}
	if c.s != nil {
		c.s.noteWrite(c, b)
	}
	if c.closeOnWrite.Load() {
		c.Close()
	}
	return len(b), nil
}

// Read sends the replies kept back, then reads.
func (c *slotConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *slotConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *slotConn) flushLocked() error {
	if c.werr != nil || len(c.out) == 0 {
		return c.werr
	}
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	if err != nil {
		c.werr = err
	}
	return err
}

func (c *slotConn) hangUp() { c.closeOnWrite.Store(true) }

func (c *slotConn) Close() error {
	c.once.Do(func() {
		// The last reply (a 221, a 421) before the close; a client that
		// stopped reading does not hold the close up for long.
		c.wmu.Lock()
		if len(c.out) > 0 && c.werr == nil {
			c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		}
		c.flushLocked()
		c.wmu.Unlock()
		c.closed.Store(true)
		if t := c.watchdog.Load(); t != nil {
			t.Stop()
		}
		if t := c.handshake.Load(); t != nil {
			t.Stop()
		}
		c.release()
	})
	return c.Conn.Close()
}

func zapClient(c *slotConn) zap.Field { return zap.String("client", c.RemoteAddr().String()) }
