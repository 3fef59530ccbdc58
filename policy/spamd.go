package policy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Spamd is a client of SpamAssassin's spamd (the SPAMC/1.5 protocol).
type Spamd struct {
	Addr    string // host:port
	Timeout time.Duration
}

// SpamResult is spamd's verdict.
type SpamResult struct {
	Spam      bool
	Score     float64
	Threshold float64
	Symbols   []string
}

// Check sends msg with the SYMBOLS command and parses the verdict.
func (s Spamd) Check(ctx context.Context, msg []byte) (SpamResult, error) {
	var res SpamResult
	if s.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.Timeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return res, fmt.Errorf("spamd %s: %w", s.Addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(conn, "SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n", len(msg)); err != nil {
		return res, fmt.Errorf("spamd %s: %w", s.Addr, err)
	}
	if _, err := conn.Write(msg); err != nil {
		return res, fmt.Errorf("spamd %s: %w", s.Addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	return parseSpamd(bufio.NewReader(conn))
}

func parseSpamd(r *bufio.Reader) (SpamResult, error) {
	var res SpamResult
	status, err := r.ReadString('\n')
	if err != nil {
		return res, fmt.Errorf("spamd: no answer: %w", err)
	}
	f := strings.Fields(status)
	if len(f) < 3 || !strings.HasPrefix(f[0], "SPAMD/") || f[1] != "0" {
		return res, fmt.Errorf("spamd: %s", strings.TrimSpace(status))
	}
	sawSpam := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return res, fmt.Errorf("spamd: truncated answer: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(k, "Spam") {
			continue
		}
		// "True ; 1003.7 / 5.0"
		verdict, scores, _ := strings.Cut(v, ";")
		score, threshold, _ := strings.Cut(scores, "/")
		res.Spam = strings.EqualFold(strings.TrimSpace(verdict), "True") || strings.EqualFold(strings.TrimSpace(verdict), "Yes")
		res.Score, _ = strconv.ParseFloat(strings.TrimSpace(score), 64)
		res.Threshold, _ = strconv.ParseFloat(strings.TrimSpace(threshold), 64)
		sawSpam = true
	}
	if !sawSpam {
		return res, fmt.Errorf("spamd: answer without a Spam header")
	}
	body, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	for _, s := range strings.Split(strings.TrimSpace(string(body)), ",") {
		if s = strings.TrimSpace(s); s != "" {
			res.Symbols = append(res.Symbols, s)
		}
	}
	return res, nil
}

// Headers renders the verdict as X-Spam-Flag (when spam), X-Spam-Score and
// X-Spam-Status fields (CRLF-terminated, folded at 78 columns).
func (r SpamResult) Headers() string {
	var b strings.Builder
	yes := "No"
	if r.Spam {
		yes = "Yes"
		b.WriteString("X-Spam-Flag: YES\r\n")
	}
	fmt.Fprintf(&b, "X-Spam-Score: %.1f\r\n", r.Score)
	line := fmt.Sprintf("X-Spam-Status: %s, score=%.1f required=%.1f tests=", yes, r.Score, r.Threshold)
	for i, s := range r.Symbols {
		part := s
		if i < len(r.Symbols)-1 {
			part += ","
		}
		if len(line)+len(part) > 78 && !strings.HasSuffix(line, "=") {
			b.WriteString(line + "\r\n")
			line = "\t"
		}
		line += part
	}
	b.WriteString(line + "\r\n")
	return b.String()
}
