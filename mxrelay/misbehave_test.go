package mxrelay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/mxrelay/mxtest"
)

// Each misbehaviour gets the typed outcome that makes the queue do the
// right thing: defer (temporary) or bounce (permanent), per recipient.
func TestMisbehavingPeers(t *testing.T) {
	cases := []struct {
		name   string
		script mxtest.Script
		opts   func(*Options)
		// per recipient: "ok", "temp" or "perm"
		want     map[string]string
		contains string
		maxTime  time.Duration
	}{
		{name: "421 on connect", script: mxtest.Script{Greeting: "421 4.3.2 try later"},
			want: map[string]string{"a@x.test": "temp"}, contains: "421"},
		{name: "451 on one RCPT", script: mxtest.Script{Rcpt: map[string]string{"b@x.test": "451 4.3.0 greylisted"}},
			want: map[string]string{"a@x.test": "ok", "b@x.test": "temp"}, contains: "greylisted"},
		{name: "550 on one RCPT", script: mxtest.Script{Rcpt: map[string]string{"b@x.test": "550 5.1.1 no such user"}},
			want: map[string]string{"a@x.test": "ok", "b@x.test": "perm"}, contains: "5.1.1"},
		{name: "552 after DATA", script: mxtest.Script{DataEnd: "552 5.3.4 too big"},
			want: map[string]string{"a@x.test": "perm", "b@x.test": "perm"}, contains: "5.3.4"},
		{name: "451 after DATA", script: mxtest.Script{DataEnd: "451 4.3.0 local error"},
			want: map[string]string{"a@x.test": "temp"}, contains: "4.3.0"},
		{name: "tarpit", script: mxtest.Script{Tarpit: true},
			opts: func(o *Options) { o.CommandTimeout = 300 * time.Millisecond },
			want: map[string]string{"a@x.test": "temp"}, contains: "timeout", maxTime: 5 * time.Second},
		{name: "drop mid-DATA", script: mxtest.Script{DropMidData: true},
			want: map[string]string{"a@x.test": "temp"}},
		{name: "STARTTLS broken", script: mxtest.Script{OfferSTARTTLS: true, BrokenTLS: true},
			want: map[string]string{"a@x.test": "temp"}, contains: "TLS handshake failed"},
		{name: "STARTTLS works", script: mxtest.Script{OfferSTARTTLS: true},
			want: map[string]string{"a@x.test": "ok"}},
		{name: "STARTTLS broken, fallback to plaintext", script: mxtest.Script{BrokenTLSOnce: true},
			opts: func(o *Options) { o.TLSFallbackPlaintext = true },
			want: map[string]string{"a@x.test": "ok"}},
		{name: "TLS required, not offered", script: mxtest.Script{},
			opts: func(o *Options) { o.TLS = TLSRequired },
			want: map[string]string{"a@x.test": "temp"}, contains: "STARTTLS"},
		{name: "MAIL refused 553", script: mxtest.Script{Mail: "553 5.7.1 sender rejected"},
			want: map[string]string{"a@x.test": "perm"}, contains: "sender rejected"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := mxtest.Start(c.script, "")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			o := Options{Mode: "static", Smarthost: p.Addr, Hostname: "relay.test", ConnectTimeout: time.Second,
				CommandTimeout: 2 * time.Second, DataTimeout: 2 * time.Second}
			if c.opts != nil {
				c.opts(&o)
			}
			r, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			var rcpts []string
			for rc := range c.want {
				rcpts = append(rcpts, rc)
			}
			start := time.Now()
			res := r.Deliver(context.Background(), msg(rcpts...), nil)
			if c.maxTime > 0 && time.Since(start) > c.maxTime {
				t.Errorf("took %s", time.Since(start))
			}
			var all []string
			for rc, want := range c.want {
				out := res.Rcpts[rc]
				got := "temp"
				switch {
				case out.Success():
					got = "ok"
				case !out.Temporary():
					got = "perm"
				}
				if got != want {
					t.Errorf("%s: %s (%q), want %s", rc, got, out, want)
				}
				all = append(all, out.String())
			}
			if !strings.Contains(strings.ToLower(strings.Join(all, " | ")), strings.ToLower(c.contains)) {
				t.Errorf("outcomes %q lack %q", all, c.contains)
			}
			if strings.Contains(c.name, "STARTTLS works") && res.TLS == "" {
				t.Errorf("TLS version not reported: %+v", res)
			}
			if strings.Contains(c.name, "fallback") && (res.TLS != "" || p.Connections() != 2) {
				t.Errorf("fallback: TLS %q after %d connections", res.TLS, p.Connections())
			}
		})
	}
}

func TestDNSAnswersAreCachedForTheirTTL(t *testing.T) {
	d := startCountingDNS(t, map[string][]string{
		"cached.test.":    {"cached.test. 300 IN MX 10 mx.cached.test."},
		"mx.cached.test.": {"mx.cached.test. 300 IN A 127.0.0.1"},
		"short.test.":     {"short.test. 1 IN MX 10 mx.cached.test."},
	})
	r, err := newResolver([]string{d.Addr})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if h, _, err := r.mxHosts(ctx, "cached.test"); err != nil || len(h) != 1 || h[0] != "mx.cached.test" {
			t.Fatalf("mxHosts: %v %v", h, err)
		}
	}
	if n := d.Queries(); n != 1 {
		t.Fatalf("%d queries for three lookups within the TTL, want 1", n)
	}
	r.mxHosts(ctx, "short.test")
	now = now.Add(2 * time.Second) // past short.test's TTL, within cached.test's
	r.mxHosts(ctx, "short.test")
	r.mxHosts(ctx, "cached.test")
	if n := d.Queries(); n != 3 {
		t.Fatalf("%d queries, want 3 (short.test asked twice)", n)
	}
	// NXDOMAIN is cached too (negative caching), SERVFAIL is not.
	r.mxHosts(ctx, "nowhere.test")
	r.mxHosts(ctx, "nowhere.test")
	if n := d.Queries(); n != 4 {
		t.Fatalf("%d queries after two NXDOMAIN lookups, want 4", n)
	}
}
