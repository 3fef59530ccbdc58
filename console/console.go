// Package console serves the operator console on the admin listener: the
// queue, the destinations and every message's story, as server-rendered
// HTML (html/template, assets embedded; no CDN, no fonts; one small script
// for live refresh, without which everything works):
//
//	GET  /                          overview: counts by state, the last hour per minute, the journal
//	GET  /destinations              one row per destination domain, with suspend/resume/retry
//	POST /destinations/{d}/suspend  journal Suspended (until resumed)
//	POST /destinations/{d}/resume   journal Resumed, retry its envelopes now
//	POST /destinations/{d}/retry    journal RetryRequested for its live envelopes, retry now
//	GET  /search?q=                 an envelope ID, or live envelopes by sender or recipient
//	GET  /messages/{id}             a message's story: its events and its children's, chain-checked
//	GET  /messages/{id}/raw         the stored message as relayed (policies' headers, then the body)
//	GET  /events                    Server-Sent Events: the overview's counts as they change
//	GET  /login, POST /login        the admin token, once; POST /logout
//
// The contract: every page and action needs the admin token, either as an
// "Authorization: Bearer" header or as the session cookie that POST /login
// sets after checking it (HttpOnly, SameSite=Strict, Secure over TLS; its
// value is an HMAC of the token, never the token). Without either, a GET
// answers 303 to /login and a POST 403. Every POST (but /login) must carry
// the form field csrf, an HMAC of the token for that purpose, or gets 403.
// Every value from mail (headers, addresses, replies) is escaped by
// html/template.
package console

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/actors"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// CookieName is the session cookie's name.
const CookieName = "ledgermail_console"

// Deps are what the console shows and acts on.
type Deps struct {
	Journal  *journal.Journal
	Queue    *projections.Queue
	Actors   *actors.System // nil: no held counts, retries wait for the scheduler
	Activity *Activity      // nil: no per-minute chart
	Token    string         // the admin token; "" leaves the console closed
	Log      *zap.Logger
}

// Paths reports whether the admin listener should hand path to the
// console rather than to the JSON API.
func Paths(path string) bool {
	if path == "/" || path == "/login" || path == "/logout" || path == "/search" || path == "/destinations" || path == "/events" {
		return true
	}
	for _, p := range []string{"/destinations/", "/messages/", "/static/"} {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// Handler is the console: an http.Handler, and Stop, which ends the live
// streams (call it when the server shuts down: http.Server.Shutdown waits
// for open connections, and a stream never ends by itself).
type Handler struct {
	http.Handler
	c *console
}

// Stop ends every live-refresh stream, now and later.
func (h *Handler) Stop() { h.c.stopOnce.Do(func() { close(h.c.stop) }) }

type console struct {
	stop     chan struct{}
	stopOnce sync.Once
	d        Deps
	live     *notifier
	pages    map[string]*template.Template
	session  string // the cookie's value
	csrf     string
}

// New returns the console's handler.
func New(d Deps) *Handler {
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	c := &console{stop: make(chan struct{}), d: d, pages: map[string]*template.Template{}, live: &notifier{subs: map[chan struct{}]struct{}{}},
		session: mac(d.Token, "ledgermail console session"), csrf: mac(d.Token, "ledgermail console csrf")}
	for _, p := range []string{"overview", "destinations", "search", "message"} {
		c.pages[p] = template.Must(template.ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html"))
	}
	c.pages["login"] = template.Must(template.ParseFS(templateFS, "templates/login.html"))
	static, _ := fs.Sub(staticFS, "static")
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("POST /login", c.login)
	mux.HandleFunc("POST /logout", c.guard(c.logout))
	mux.HandleFunc("GET /{$}", c.guard(c.overview))
	mux.HandleFunc("GET /destinations", c.guard(c.destinations))
	mux.HandleFunc("POST /destinations/{domain}/{action}", c.guard(c.destinationAction))
	mux.HandleFunc("GET /search", c.guard(c.search))
	mux.HandleFunc("GET /messages/{id}", c.guard(c.message))
	mux.HandleFunc("GET /messages/{id}/raw", c.guard(c.raw))
	mux.HandleFunc("GET /events", c.guard(c.stream))
	if d.Journal != nil {
		d.Journal.Subscribe(c.live.notify)
	}
	return &Handler{Handler: securityHeaders(mux), c: c}
}

func mac(key, msg string) string {
	h := hmac.New(sha256.New, []byte(key))
	h.Write([]byte(msg))
	return hex.EncodeToString(h.Sum(nil))
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// securityHeaders keeps the pages out of frames and scripts out of them.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

// authenticated reports whether r carries the token or the session cookie.
func (c *console) authenticated(r *http.Request) bool {
	if c.d.Token == "" {
		return false
	}
	if equal(r.Header.Get("Authorization"), "Bearer "+c.d.Token) {
		return true
	}
	ck, err := r.Cookie(CookieName)
	return err == nil && equal(ck.Value, c.session)
}

// guard lets authenticated requests through; a POST must also carry the
// CSRF token.
func (c *console) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.authenticated(r) {
			if r.Method != http.MethodGet {
				http.Error(w, "log in first", http.StatusForbidden)
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !equal(r.PostFormValue("csrf"), c.csrf) {
			http.Error(w, "missing or wrong CSRF token: reload the page and try again", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// localPath keeps a post-login redirect on this site.
func localPath(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

func (c *console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "login", map[string]string{"Next": localPath(r.URL.Query().Get("next"))})
}

func (c *console) login(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.PostFormValue("next"))
	if c.d.Token == "" || !equal(r.PostFormValue("token"), c.d.Token) {
		c.d.Log.Warn("console login refused", zap.String("remote", r.RemoteAddr))
		c.render(w, http.StatusUnauthorized, "login", map[string]string{"Next": next, "Error": "That is not the admin token."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: c.session, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int((12 * time.Hour).Seconds())})
	c.d.Log.Info("console login", zap.String("remote", r.RemoteAddr))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *console) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// page is what every page's layout needs.
type page struct {
	Title, Page, CSRF string
}

func (c *console) page(title, name string) page { return page{Title: title, Page: name, CSRF: c.csrf} }

func (c *console) render(w http.ResponseWriter, status int, name string, data any) {
	var b strings.Builder
	if err := c.pages[name].ExecuteTemplate(&b, pageRoot(name), data); err != nil {
		c.d.Log.Error("console page failed", zap.String("page", name), zap.Error(err))
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write([]byte(b.String()))
}

func pageRoot(name string) string { return name + ".html" }
