// Command loadgen drives an SMTP submission service the way mail clients
// do: each session connects, secures the connection (STARTTLS on a
// 587-style port, TLS from the first byte on a 465-style one, or none),
// authenticates with AUTH PLAIN when given credentials, and sends several
// messages before QUIT. It reports messages per second and the
// percentiles of end-of-DATA -> 250 (the time the server takes to make a
// message durable and say so), of the whole session set-up (connect,
// TLS, AUTH), and of each message's transaction.
//
// It is a benchmark tool (make bench-submission), not a test: it asserts
// nothing about times. Any failed message is counted and reported, and a
// run with failures exits 1.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	addr, mode, user, pass, from, to string
	sessions, messages, perSession   int
	size                             int
}

func main() {
	var c config
	flag.StringVar(&c.addr, "addr", "127.0.0.1:587", "server address")
	flag.StringVar(&c.mode, "tls", "starttls", "starttls (587), implicit (465) or none")
	flag.StringVar(&c.user, "user", "", "AUTH PLAIN user name (none: no AUTH)")
	flag.StringVar(&c.pass, "pass", "", "AUTH PLAIN password")
	flag.StringVar(&c.from, "from", "a@src.test", "envelope sender")
	flag.StringVar(&c.to, "to", "b@dest.test", "envelope recipient")
	flag.IntVar(&c.sessions, "sessions", 20, "concurrent sessions")
	flag.IntVar(&c.messages, "messages", 5000, "messages in all")
	flag.IntVar(&c.perSession, "per-session", 10, "messages per session before QUIT")
	flag.IntVar(&c.size, "size", 4096, "message size in bytes")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: loadgen [flags]\n\nSubmits messages like mail clients do and reports msg/s and latency percentiles.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if c.mode != "starttls" && c.mode != "implicit" && c.mode != "none" {
		fmt.Fprintf(os.Stderr, "loadgen: -tls must be starttls, implicit or none, not %q\n", c.mode)
		os.Exit(2)
	}
	r := run(c)
	fmt.Println(r)
	if r.failed > 0 {
		os.Exit(1)
	}
}

type result struct {
	cfg              config
	elapsed          time.Duration
	sent, failed     int64
	firstErr         string
	eod, setup, txns []time.Duration
}

func run(c config) *result {
	var next atomic.Int64 // messages handed out
	var sent, failed atomic.Int64
	var mu sync.Mutex
	res := &result{cfg: c}
	body := message(c.from, c.to, c.size)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < c.sessions; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := int(next.Add(int64(c.perSession)))
				batch := c.perSession
				if over := n - c.messages; over > 0 {
					batch -= over
				}
				if batch <= 0 {
					return
				}
				eod, setup, txns, err := session(c, body, batch)
				sent.Add(int64(len(eod)))
				mu.Lock()
				res.eod = append(res.eod, eod...)
				res.txns = append(res.txns, txns...)
				if setup > 0 {
					res.setup = append(res.setup, setup)
				}
				if err != nil {
					failed.Add(int64(batch - len(eod)))
					if res.firstErr == "" {
						res.firstErr = err.Error()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.sent, res.failed = sent.Load(), failed.Load()
	return res
}

// session sends n messages on one connection and returns the end-of-DATA
// latencies, the set-up time and the transaction times of those that got
// a 250.
func session(c config, body []byte, n int) (eod []time.Duration, setup time.Duration, txns []time.Duration, err error) {
	t0 := time.Now()
	host, _, _ := net.SplitHostPort(c.addr)
	tlsCfg := &tls.Config{ServerName: host, InsecureSkipVerify: true} // benchmark peers use self-signed certificates
	var conn net.Conn
	if c.mode == "implicit" {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", c.addr, tlsCfg)
	} else {
		conn, err = net.DialTimeout("tcp", c.addr, 30*time.Second)
	}
	if err != nil {
		return nil, 0, nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	cl, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return nil, 0, nil, err
	}
	defer cl.Close()
	if err = cl.Hello("loadgen.test"); err != nil {
		return
	}
	if c.mode == "starttls" {
		if err = cl.StartTLS(tlsCfg); err != nil {
			return
		}
	}
	if c.user != "" {
		// net/smtp's PlainAuth refuses to send a password without TLS
		// except to localhost; the benchmark only targets loopback.
		if err = cl.Auth(plainAuth{c.user, c.pass}); err != nil {
			return
		}
	}
	setup = time.Since(t0)
	for i := 0; i < n; i++ {
		ts := time.Now()
		if err = cl.Mail(c.from); err != nil {
			return
		}
		if err = cl.Rcpt(c.to); err != nil {
			return
		}
		w, werr := cl.Data()
		if werr != nil {
			return eod, setup, txns, werr
		}
		if _, err = w.Write(body); err != nil {
			return
		}
		te := time.Now()
		if err = w.Close(); err != nil { // the final dot, then the reply
			return
		}
		eod = append(eod, time.Since(te))
		txns = append(txns, time.Since(ts))
	}
	err = cl.Quit()
	return
}

// plainAuth is AUTH PLAIN (RFC 4616) with an initial response.
type plainAuth struct{ user, pass string }

func (a plainAuth) Start(*smtp.ServerInfo) (string, []byte, error) {
	return "PLAIN", []byte("\x00" + a.user + "\x00" + a.pass), nil
}

func (a plainAuth) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return nil, fmt.Errorf("unexpected server challenge")
	}
	return nil, nil
}

// message builds a message of about size bytes.
func message(from, to string, size int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: loadgen\r\nMessage-ID: <loadgen@loadgen.test>\r\n\r\n", from, to)
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return []byte(b.String())
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := int(p / 100 * float64(len(d)-1))
	return d[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func (r *result) String() string {
	c := r.cfg
	auth := "no AUTH"
	if c.user != "" {
		auth = "AUTH PLAIN"
	}
	s := fmt.Sprintf("%s tls=%s %s: %d sent, %d failed in %.2f s (%.0f msg/s); %d sessions x %d messages of %d B\n",
		c.addr, c.mode, auth, r.sent, r.failed, r.elapsed.Seconds(), float64(r.sent)/r.elapsed.Seconds(), c.sessions, c.perSession, c.size)
	s += fmt.Sprintf("  end-of-DATA -> 250: p50 %s  p99 %s;  session set-up: p50 %s  p99 %s;  transaction: p50 %s  p99 %s",
		ms(percentile(r.eod, 50)), ms(percentile(r.eod, 99)), ms(percentile(r.setup, 50)), ms(percentile(r.setup, 99)),
		ms(percentile(r.txns, 50)), ms(percentile(r.txns, 99)))
	if r.firstErr != "" {
		s += "\n  first error: " + r.firstErr
	}
	return s
}
