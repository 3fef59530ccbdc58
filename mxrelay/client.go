package mxrelay

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// client is the relay's SMTP client (RFC 5321). Unlike go-smtp's client it
// pipelines (RFC 2920): when the server offers PIPELINING, MAIL, every RCPT
// and DATA leave in one write and their replies are read afterwards, so a
// transaction costs two round trips (envelope, body) instead of 3 + RCPTs.
// Every exchange runs under a deadline: timeout for commands, dataTimeout
// for writing the body and waiting for the reply to its final dot.
//
// A reply that is not the expected one is returned as an *smtp.SMTPError
// (see replyError); anything else (a timeout, a closed connection, a
// malformed reply) is a plain error, which classify makes temporary.
type client struct {
	conn        net.Conn
	r           *textproto.Reader
	w           *bufio.Writer
	ext         map[string]string // EHLO keywords (upper case) → parameters
	timeout     time.Duration
	dataTimeout time.Duration
	buf         []byte // for copying bodies, kept with the connection
}

func newClient(conn net.Conn, timeout, dataTimeout time.Duration) *client {
	return &client{
		conn:        conn,
		r:           textproto.NewReader(bufio.NewReader(conn)),
		w:           bufio.NewWriterSize(conn, 32<<10),
		timeout:     timeout,
		dataTimeout: dataTimeout,
	}
}

// greeting reads the server's 220 banner.
func (c *client) greeting() (string, error) {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	return c.reply(220)
}

// hello says EHLO, and HELO when the server does not know EHLO (a 5xx).
func (c *client) hello(name string) error {
	msg, err := c.cmd(250, "EHLO "+name)
	if err != nil {
		if code := replyCode(err); code >= 500 {
			c.ext = map[string]string{}
			_, err = c.cmd(250, "HELO "+name)
		}
		return err
	}
	c.ext = map[string]string{}
	for _, l := range strings.Split(msg, "\n")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *client) extension(name string) (string, bool) {
	v, ok := c.ext[name]
	return v, ok
}

// startTLS sends STARTTLS and hands the connection to tls.Client; the
// caller runs the handshake and then says EHLO again (rehello).
func (c *client) startTLS(cfg *tls.Config) (*tls.Conn, error) {
	if _, err := c.cmd(220, "STARTTLS"); err != nil {
		return nil, err
	}
	tc := tls.Client(c.conn, cfg)
	c.conn = tc
	c.r = textproto.NewReader(bufio.NewReader(tc))
	c.w.Reset(tc)
	c.ext = nil
	return tc, nil
}

// auth authenticates with AUTH PLAIN and its initial response (RFC 4616).
func (c *client) auth(user, pass string) error {
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	_, err := c.cmd(235, "AUTH PLAIN "+resp)
	return err
}

// cmd sends one command and reads its reply, which must have code want.
func (c *client) cmd(want int, line string) (string, error) {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	if err := c.send(line); err != nil {
		return "", err
	}
	if err := c.w.Flush(); err != nil {
		return "", err
	}
	return c.reply(want)
}

func (c *client) send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return errors.New("smtp: a command must not contain CR or LF")
	}
	c.w.WriteString(line)
	_, err := c.w.WriteString("\r\n")
	return err
}

func (c *client) reply(want int) (string, error) {
	_, msg, err := c.r.ReadResponse(want)
	if err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			return "", replyError(te.Code, te.Msg)
		}
		return "", err
	}
	return msg, nil
}

// envelopeReplies are the outcomes of MAIL, each RCPT and DATA: nil for
// the expected reply, an *smtp.SMTPError for another one, or a transport
// error (isTransport), after which the connection is unusable and every
// later step carries the same error.
type envelopeReplies struct {
	mail error
	rcpt []error
	data error // nil: DATA got its 354 and the body must follow
}

// errNoRecipient stands for DATA when no recipient was accepted.
var errNoRecipient = errors.New("no recipient accepted")

// maxPipelinedRcpts bounds a pipelined envelope: a longer one goes a
// command at a time, so that the replies the client has not read yet never
// fill the server's send buffer while the client is still writing (the
// deadlock RFC 2920 §3.2 warns of).
const maxPipelinedRcpts = 100

// envelope sends MAIL FROM, one RCPT TO per recipient and DATA, pipelined
// when the server offers PIPELINING (and there are at most
// maxPipelinedRcpts recipients). Without an accepted recipient DATA
// is not sent, or, when pipelined and answered 354 all the same (RFC 2920
// §3.1), the empty message is ended with a lone dot; data is then
// errNoRecipient.
func (c *client) envelope(mail string, rcpts []string) (e envelopeReplies) {
	e.rcpt = make([]error, len(rcpts))
	broken := func(from int, err error) envelopeReplies {
		for i := from; i < len(e.rcpt); i++ {
			e.rcpt[i] = err
		}
		e.data = err
		return e
	}
	_, pipelining := c.ext["PIPELINING"]
	if !pipelining || len(rcpts) > maxPipelinedRcpts {
		if _, e.mail = c.cmd(250, mail); e.mail != nil {
			return broken(0, e.mail)
		}
		ok := 0
		for i, r := range rcpts {
			if _, e.rcpt[i] = c.cmd(250, "RCPT TO:<"+r+">"); e.rcpt[i] == nil {
				ok++
			} else if isTransport(e.rcpt[i]) {
				return broken(i, e.rcpt[i])
			}
		}
		if ok == 0 {
			e.data = errNoRecipient
			return e
		}
		_, e.data = c.cmd(354, "DATA")
		return e
	}
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	c.send(mail)
	for _, r := range rcpts {
		if err := c.send("RCPT TO:<" + r + ">"); err != nil {
			e.mail = err
			return broken(0, err)
		}
	}
	c.send("DATA")
	if err := c.w.Flush(); err != nil {
		e.mail = err
		return broken(0, err)
	}
	if _, e.mail = c.reply(250); isTransport(e.mail) {
		return broken(0, e.mail)
	}
	ok := 0
	for i := range rcpts {
		if _, e.rcpt[i] = c.reply(250); e.rcpt[i] == nil {
			ok++
		} else if isTransport(e.rcpt[i]) {
			return broken(i, e.rcpt[i])
		}
	}
	if _, e.data = c.reply(354); e.data != nil {
		if ok == 0 && !isTransport(e.data) {
			e.data = errNoRecipient
		}
		return e
	}
	if e.mail != nil || ok == 0 {
		// DATA was taken although nothing can be delivered: end it.
		if _, err := c.cmd(0, "."); isTransport(err) {
			e.data = err
			return e
		}
		e.data = errNoRecipient
	}
	return e
}

// body writes the message (dot-stuffed) and the final dot, and returns the
// text of the 250 that follows.
func (c *client) body(r io.Reader) (string, error) {
	c.conn.SetDeadline(time.Now().Add(c.dataTimeout))
	dw := textproto.NewWriter(c.w).DotWriter()
	if c.buf == nil {
		c.buf = make([]byte, 16<<10)
	}
	// The connection's own buffer: io.Copy would allocate 32 KiB per
	// message (the body is a MultiReader, whose WriteTo copies each part
	// through a fresh buffer), so that path is hidden from it.
	if _, err := io.CopyBuffer(dw, struct{ io.Reader }{r}, c.buf); err != nil {
		return "", err
	}
	if err := dw.Close(); err != nil { // writes ".\r\n" and flushes
		return "", err
	}
	return c.reply(250)
}

// reset sends RSET, so that the connection can carry another transaction.
func (c *client) reset() error {
	_, err := c.cmd(250, "RSET")
	return err
}

// quit says QUIT (within two seconds) and closes the connection.
func (c *client) quit() {
	c.timeout = 2 * time.Second
	c.cmd(221, "QUIT")
	c.conn.Close()
}

func (c *client) close() error { return c.conn.Close() }

// isTransport reports whether err is not an SMTP reply (the connection
// failed, timed out or said something that is not SMTP).
func isTransport(err error) bool {
	return err != nil && err != errNoRecipient && replyCode(err) == 0
}

func replyCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// mailCommand builds MAIL FROM with the parameters the server supports.
func (c *client) mailCommand(from string, size int64, utf8 bool) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + from + ">")
	if _, ok := c.ext["8BITMIME"]; ok {
		b.WriteString(" BODY=8BITMIME") // bodies are relayed as received
	}
	if _, ok := c.ext["SIZE"]; ok && size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(size, 10))
	}
	if _, ok := c.ext["SMTPUTF8"]; ok && utf8 {
		b.WriteString(" SMTPUTF8")
	}
	return b.String()
}
