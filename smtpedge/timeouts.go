package smtpedge

import (
	"bytes"
	"crypto/tls"
	"net"
	"time"
)

// Timeouts are enforced here rather than by go-smtp's read deadline alone:
// on a deadline its line reader hands a partial line over as a command, so
// a client dribbling bytes without a newline got "501 Bad command" at every
// timeout instead of being dropped. A watchdog per connection instead ends
// a session whose client has sent no complete command within the command
// timeout of our last reply: "421 4.4.2 <host> Error: timeout exceeded",
// then close. (go-smtp's own deadline stays as a backstop, a minute later.)
// DATA has its own timeout (Session.Data), and a TLS handshake, STARTTLS
// or implicit, its own (Options.HandshakeTimeout): a client that stalls it
// is cut without a reply, none being readable mid-handshake.

// timeoutReply is what a timed-out client reads before the close.
func (s *Server) timeoutReply() []byte {
	return []byte("421 4.4.2 " + s.o.Hostname + " Error: timeout exceeded\r\n")
}

// armWatchdog starts the command watchdog of c.
func (s *Server) armWatchdog(c *slotConn) {
	c.lastReply.Store(time.Now().UnixNano())
	c.watchdog.Store(time.AfterFunc(s.o.ReadTimeout, func() { s.checkWatchdog(c) }))
}

func (s *Server) checkWatchdog(c *slotConn) {
	if c.closed.Load() {
		return
	}
	idle := time.Since(time.Unix(0, c.lastReply.Load()))
	switch {
	case c.tr != nil && c.tr.inData.Load():
		c.watchdog.Load().Reset(s.o.ReadTimeout) // DATA has its own timeout
	case idle < s.o.ReadTimeout:
		c.watchdog.Load().Reset(s.o.ReadTimeout - idle)
	default:
		s.o.Logger.Info("session timed out", zapClient(c))
		if w := c.replyConn(); w != nil {
			w.SetWriteDeadline(time.Now().Add(5 * time.Second))
			w.Write(s.timeoutReply())
		}
		c.Close()
	}
}

// replyConn is the connection a reply must be written on now: the TLS one
// once the session runs over TLS, the raw one before; nil when neither is
// usable (TLS under way, its conn not known yet).
func (c *slotConn) replyConn() net.Conn {
	if p := c.session.Load(); p != nil {
		if _, isTLS := (*p).(*tls.Conn); isTLS || !c.tlsStarted.Load() {
			return *p
		}
	}
	if c.implicitTLS || c.tlsStarted.Load() {
		return nil
	}
	return c // after any reply still kept back (slotConn.Write)
}

var startTLSReply = []byte("220 2.0.0 Ready to start TLS")

// noteWrite is called with every write on the raw connection: a reply resets
// the watchdog's clock, and the STARTTLS go-ahead starts the handshake's.
func (s *Server) noteWrite(c *slotConn, b []byte) {
	c.lastReply.Store(time.Now().UnixNano())
	if !c.tlsStarted.Load() && !c.implicitTLS && bytes.HasPrefix(b, startTLSReply) {
		c.tlsStarted.Store(true)
		s.armHandshake(c)
	}
}

// armHandshake cuts c if its TLS handshake has not completed in time.
func (s *Server) armHandshake(c *slotConn) {
	c.handshake.Store(time.AfterFunc(s.o.HandshakeTimeout, func() {
		if !c.handshakeDone.Load() && !c.closed.Load() {
			s.o.Logger.Info("TLS handshake timed out", zapClient(c))
			c.Close()
		}
	}))
}

// handshakeConfig wraps the TLS configuration so that a completed
// handshake is known to its connection's timers.
func handshakeConfig(base *tls.Config) *tls.Config {
	if base == nil {
		return nil
	}
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		sc, _ := hi.Conn.(*slotConn)
		c.VerifyConnection = func(tls.ConnectionState) error {
			if sc != nil {
				sc.handshakeDone.Store(true)
				if t := sc.handshake.Load(); t != nil {
					t.Stop()
				}
			}
			return nil
		}
		return c, nil
	}
	return cfg
}

// tlsSessions hands each implicit-TLS connection's *tls.Conn to its raw
// connection from the start, so that a timeout before EHLO can still be
// answered over TLS. (After STARTTLS the TLS conn is known from the next
// EHLO on; a timeout in between closes without a reply.)
type tlsSessions struct{ net.Listener }

func (l tlsSessions) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*tls.Conn); ok {
		if sc, ok := tc.NetConn().(*slotConn); ok {
			var nc net.Conn = tc
			sc.session.Store(&nc)
		}
	}
	return c, err
}
