package console

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

const token = "console-test-token"

type fixture struct {
	j *journal.Journal
	q *projections.Queue
	h http.Handler
}

// newFixture is a console over a real journal with one deferred envelope
// whose Subject is hostile.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	j, err := journal.Open(journal.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	q := projections.NewQueue()
	j.Subscribe(q.Apply)
	a := NewActivity()
	j.Subscribe(a.Apply)
	body := "From: <s@src.test>\r\nSubject: <script>alert(1)</script> & \"hi\"\r\n\r\nbody\r\n"
	if _, err := j.Append(journal.Write{
		Bodies: []journal.Body{{Key: "E1", Data: []byte(body)}},
		Events: []events.Event{
			{Envelope: "E1", Payload: events.Received{Sender: "s@src.test", Recipients: []string{"<b>@dest.test"}, BodyKey: "E1"}},
			{Envelope: "E1", Payload: events.Deferred{Recipients: []string{"<b>@dest.test"}, NextAttempt: time.Now().Add(time.Hour),
				Reason: "451 4.3.0 <img src=x onerror=alert(2)>"}},
		},
	}); err != nil {
		t.Fatal(err)
	}
	return &fixture{j: j, q: q, h: New(Deps{Journal: j, Queue: q, Activity: a, Token: token})}
}

func (f *fixture) do(t *testing.T, method, target string, form url.Values, auth func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	var r *http.Request
	if form != nil {
		r = httptest.NewRequest(method, target, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	if auth != nil {
		auth(r)
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func bearer(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }

// Without the token or the session cookie every page sends the browser to
// /login, and every action is refused.
func TestPagesNeedTheToken(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"/", "/destinations", "/search?q=x", "/messages/E1", "/messages/E1/raw"} {
		w := f.do(t, "GET", p, nil, nil)
		if w.Code != http.StatusSeeOther || !strings.HasPrefix(w.Header().Get("Location"), "/login?next=") {
			t.Errorf("GET %s without the token: %d, Location %q", p, w.Code, w.Header().Get("Location"))
		}
		wrong := f.do(t, "GET", p, nil, func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") })
		if wrong.Code != http.StatusSeeOther {
			t.Errorf("GET %s with a wrong token: %d", p, wrong.Code)
		}
		if ok := f.do(t, "GET", p, nil, bearer); ok.Code != http.StatusOK {
			t.Errorf("GET %s with the bearer token: %d", p, ok.Code)
		}
	}
	seq := f.j.LastSeq()
	csrf := mac(token, "ledgermail console csrf")
	for _, p := range []string{"/destinations/dest.test/suspend", "/destinations/dest.test/retry", "/logout"} {
		if w := f.do(t, "POST", p, url.Values{"csrf": {csrf}}, nil); w.Code != http.StatusForbidden {
			t.Errorf("POST %s without the token: %d", p, w.Code)
		}
	}
	if f.j.LastSeq() != seq {
		t.Fatalf("an unauthenticated action was journaled (%d -> %d)", seq, f.j.LastSeq())
	}
}

// POST /login checks the token and sets a session cookie that scripts
// cannot read and other sites cannot send; the cookie then opens the pages.
func TestLoginSetsAStrictHttpOnlyCookie(t *testing.T) {
	f := newFixture(t)
	bad := f.do(t, "POST", "/login", url.Values{"token": {"guess"}, "next": {"/destinations"}}, nil)
	if bad.Code != http.StatusUnauthorized || len(bad.Result().Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v", bad.Code, bad.Result().Cookies())
	}
	w := f.do(t, "POST", "/login", url.Values{"token": {token}, "next": {"/destinations"}}, nil)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/destinations" {
		t.Fatalf("login: %d to %q", w.Code, w.Header().Get("Location"))
	}
	cs := w.Result().Cookies()
	if len(cs) != 1 {
		t.Fatalf("cookies: %v", cs)
	}
	c := cs[0]
	if c.Name != CookieName || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Value == "" || strings.Contains(c.Value, token) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not the token itself", c)
	}
	withCookie := func(r *http.Request) { r.AddCookie(c) }
	if page := f.do(t, "GET", "/", nil, withCookie); page.Code != http.StatusOK || !strings.Contains(page.Body.String(), `id="count-deferred">1<`) {
		t.Fatalf("overview with the cookie: %d\n%s", page.Code, page.Body.String())
	}
	forged := func(r *http.Request) { r.AddCookie(&http.Cookie{Name: CookieName, Value: token}) }
	if page := f.do(t, "GET", "/", nil, forged); page.Code != http.StatusSeeOther {
		t.Fatalf("a cookie holding the token itself opened the console: %d", page.Code)
	}
	for next, want := range map[string]string{"//evil.test/x": "/", "https://evil.test/": "/", "/\\evil.test": "/", "/search?q=a": "/search?q=a"} {
		w := f.do(t, "POST", "/login", url.Values{"token": {token}, "next": {next}}, nil)
		if got := w.Header().Get("Location"); got != want {
			t.Errorf("next=%q: redirected to %q, want %q", next, got, want)
		}
	}
	r := httptest.NewRequest("POST", "https://console.test/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	tw := httptest.NewRecorder()
	f.h.ServeHTTP(tw, r)
	if cs := tw.Result().Cookies(); len(cs) != 1 || !cs[0].Secure {
		t.Fatalf("over TLS the cookie must be Secure: %v", cs)
	}
}

// Every action needs the CSRF token, even with a valid session.
func TestActionsNeedTheCSRFToken(t *testing.T) {
	f := newFixture(t)
	csrf := mac(token, "ledgermail console csrf")
	for _, p := range []string{"/destinations/dest.test/suspend", "/destinations/dest.test/resume", "/destinations/dest.test/retry", "/logout"} {
		for _, form := range []url.Values{{}, {"csrf": {"0000"}}, {"csrf": {token}}} {
			seq := f.j.LastSeq()
			if w := f.do(t, "POST", p, form, bearer); w.Code != http.StatusForbidden {
				t.Errorf("POST %s with csrf %q: %d, want 403", p, form.Get("csrf"), w.Code)
			}
			if f.j.LastSeq() != seq {
				t.Fatalf("POST %s without the CSRF token was journaled", p)
			}
		}
	}
	w := f.do(t, "POST", "/destinations/dest.test/suspend", url.Values{"csrf": {csrf}}, bearer)
	if w.Code != http.StatusSeeOther {
		t.Fatalf("suspend with the CSRF token: %d %s", w.Code, w.Body.String())
	}
	if _, ok := f.q.Suspensions()["dest.test"]; !ok {
		t.Fatal("dest.test not suspended after the action")
	}
	page := f.do(t, "GET", "/destinations", nil, bearer).Body.String()
	if !strings.Contains(page, `action="/destinations/dest.test/resume"`) || !strings.Contains(page, `name="csrf" value="`+csrf+`"`) {
		t.Fatalf("destinations page after suspending: no resume form with the CSRF token\n%s", page)
	}
	w = f.do(t, "POST", "/destinations/dest.test/resume", url.Values{"csrf": {csrf}}, bearer)
	if _, ok := f.q.Suspensions()["dest.test"]; w.Code != http.StatusSeeOther || ok {
		t.Fatalf("resume: %d, still suspended %v", w.Code, ok)
	}
}

// Values from mail are escaped on every page: a Subject with a script, a
// recipient with angle brackets, a next hop's reply with markup.
func TestHostileValuesAreEscaped(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"/messages/E1", "/destinations", "/search?q=dest.test"} {
		page := f.do(t, "GET", p, nil, bearer).Body.String()
		for _, raw := range []string{"<script>alert(1)", "<img src=x", "<b>@dest.test"} {
			if strings.Contains(page, raw) {
				t.Errorf("%s contains %q unescaped", p, raw)
			}
		}
	}
	msg := f.do(t, "GET", "/messages/E1", nil, bearer).Body.String()
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;hi&#34;", "&lt;b&gt;@dest.test", `<span class="ok">verified</span>`, "Deferred"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message page lacks %q\n%s", want, msg)
		}
	}
	raw := f.do(t, "GET", "/messages/E1/raw", nil, bearer)
	if raw.Code != http.StatusOK || raw.Header().Get("Content-Type") != "message/rfc822" || !strings.Contains(raw.Body.String(), "Subject: <script>") {
		t.Fatalf("raw download: %d %q\n%s", raw.Code, raw.Header().Get("Content-Type"), raw.Body.String())
	}
	if csp := raw.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("no script-blocking CSP: %q", csp)
	}
	if w := f.do(t, "GET", "/search?q=E1", nil, bearer); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/messages/E1" {
		t.Fatalf("searching an envelope ID: %d %q", w.Code, w.Header().Get("Location"))
	}
	if w := f.do(t, "GET", "/static/style.css", nil, nil); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "system-ui") {
		t.Fatalf("stylesheet: %d", w.Code)
	}
}

// /events streams the overview's counts: one update at once, another after
// the journal commits a change.
func TestLiveCounts(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/events", nil)
	bearer(req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	next := func() map[string]int {
		t.Helper()
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended: %v", err)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var m map[string]int
				if err := json.Unmarshal([]byte(data), &m); err != nil {
					t.Fatal(err)
				}
				return m
			}
		}
	}
	if m := next(); m["live"] != 1 || m["deferred"] != 1 {
		t.Fatalf("first update %v, want live 1, deferred 1", m)
	}
	if _, err := f.j.Append(journal.Write{Events: []events.Event{{Envelope: "E2",
		Payload: events.Received{Sender: "s@src.test", Recipients: []string{"c@dest.test"}, BodyKey: "E1"}}}}); err != nil {
		t.Fatal(err)
	}
	if m := next(); m["live"] != 2 || m["received"] != 1 {
		t.Fatalf("after a new message %v, want live 2, received 1", m)
	}
	f.h.(*Handler).Stop() // as the server's shutdown does: the stream ends
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, rd)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the stream ended with %v, want a clean end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream was still open 5 s after Stop")
	}
	noAuth, _ := http.Get(srv.URL + "/events")
	noAuth.Body.Close()
	if noAuth.Request.URL.Path != "/login" {
		t.Fatalf("/events without the token ended at %s", noAuth.Request.URL.Path)
	}
}

// A time window searches the journal (finished messages too): found by
// sender, not found outside the window or for another address.
func TestSearchByTimeWindow(t *testing.T) {
	f := newFixture(t)
	now := time.Now().UTC()
	q := func(needle string, from, to time.Time) string {
		v := url.Values{"q": {needle}, "from": {from.Format(timeLayout)}, "to": {to.Format(timeLayout)}}
		w := f.do(t, "GET", "/search?"+v.Encode(), nil, bearer)
		if w.Code != http.StatusOK {
			t.Fatalf("search: %d", w.Code)
		}
		return w.Body.String()
	}
	page := q("src.test", now.Add(-time.Hour), now.Add(time.Hour))
	if !strings.Contains(page, `href="/messages/E1"`) || !strings.Contains(page, "&lt;b&gt;@dest.test") || !strings.Contains(page, "1 message(s) found") {
		t.Fatalf("window around now, by sender: E1 not listed\n%s", page)
	}
	if page := q("nobody.test", now.Add(-time.Hour), now.Add(time.Hour)); strings.Contains(page, `href="/messages/E1"`) {
		t.Fatal("another address found E1")
	}
	if page := q("", now.Add(-3*time.Hour), now.Add(-2*time.Hour)); strings.Contains(page, `href="/messages/E1"`) || !strings.Contains(page, "0 message(s) found") {
		t.Fatalf("a window two hours ago listed E1\n%s", page)
	}
	if w := f.do(t, "GET", "/search?from=yesterday", nil, bearer); !strings.Contains(w.Body.String(), "from: not a time") {
		t.Fatalf("a bad time is not reported:\n%s", w.Body.String())
	}
}

// A whole address is looked up in the journal's address index: found in
// any case, newest first, narrowed by a window when one is given.
func TestSearchByAddress(t *testing.T) {
	f := newFixture(t)
	page := f.do(t, "GET", "/search?q=S@SRC.TEST", nil, bearer).Body.String()
	if !strings.Contains(page, `href="/messages/E1"`) || !strings.Contains(page, "1 message(s) found") {
		t.Fatalf("by sender address: E1 not listed\n%s", page)
	}
	page = f.do(t, "GET", "/search?q=other@src.test", nil, bearer).Body.String()
	if strings.Contains(page, `href="/messages/E1"`) {
		t.Fatal("another address found E1")
	}
	past := time.Now().UTC().Add(-3 * time.Hour)
	v := url.Values{"q": {"s@src.test"}, "from": {past.Format(timeLayout)}, "to": {past.Add(time.Hour).Format(timeLayout)}}
	if page := f.do(t, "GET", "/search?"+v.Encode(), nil, bearer).Body.String(); strings.Contains(page, `href="/messages/E1"`) {
		t.Fatal("a window hours ago still listed E1")
	}
}

// A bounce's DSN is linked to its own envelope, and the story of a
// bounced child shows under its parent.
func TestStoryLinksDSNs(t *testing.T) {
	f := newFixture(t)
	if _, err := f.j.Append(journal.Write{
		Bodies: []journal.Body{{Key: "P", Data: []byte("Subject: to bounce\r\n\r\nx\r\n")}},
		Events: []events.Event{
			{Envelope: "P", Payload: events.Received{Sender: "s@src.test", Recipients: []string{"gone@dest.test"}, BodyKey: "P"}},
			{Envelope: "P", Payload: events.PoliciesApplied{Policies: []string{"date"}, Recipients: []string{"gone@dest.test"}}},
			{Envelope: "P", Payload: events.Split{Mode: "domain", Children: []events.Child{{ID: "P.1", Recipients: []string{"gone@dest.test"}}}}},
			{Envelope: "P.1", Payload: events.AttemptStarted{Attempt: 1, Recipients: []string{"gone@dest.test"}}},
			{Envelope: "P.1", Payload: events.Attempted{Attempt: 1, Host: "mx.dest.test:25", TLS: "TLS1.3",
				Results: []events.RcptResult{{Recipient: "gone@dest.test", Code: 550, Enhanced: "5.1.1", Message: "no such user"}}}},
			{Envelope: "P.1", Payload: events.Bounced{Recipients: []string{"gone@dest.test"}, Reason: "550 5.1.1 no such user", DSN: "D1"}},
		},
	}); err != nil {
		t.Fatal(err)
	}
	page := f.do(t, "GET", "/messages/P", nil, bearer).Body.String()
	for _, want := range []string{`href="/messages/D1"`, "Bounced", "host: mx.dest.test:25", "5.1.1", "no such user", "P.1", "Subject", "to bounce", `<span class="ok">verified</span>`} {
		if !strings.Contains(page, want) {
			t.Errorf("story of P lacks %q", want)
		}
	}
}
