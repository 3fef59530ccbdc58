// Package webhooks tells applications what became of their messages: a
// journal-tailing projection per webhook POSTs each matching event as JSON
// (its journal sequence number, envelope ID and type, so that a receiver
// can drop repeats), signed with
// "X-Ledgermail-Signature: t=<unix seconds>,sha256=<hex HMAC-SHA256 of
// "<t>.<body>" under the secret>".
//
// The contract: at least once, in journal order per webhook. Each webhook
// keeps a durable cursor (the last sequence number it delivered, written
// through journal.WriteFile after every delivery), so a kill -9 skips
// nothing and repeats at most the event in flight. A failed POST is
// retried with backoff (1 s, doubling up to 5 min) and holds back the
// events after it. The mail flow never waits for a webhook: the journal
// only wakes the worker; a dead endpoint costs a cursor that lags (Lag).
package webhooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/projections"
)

// Config is one [[webhooks]] entry.
type Config struct {
	URL    string
	Events []events.Type
	Secret string
}

// Hook is a running webhook.
type Hook struct {
	cfg    Config
	j      *journal.Journal
	cursor atomic.Uint64
	path   string // the cursor file
	client *http.Client
	log    *zap.Logger
	wake   chan struct{}
	want   map[events.Type]bool
}

// Start runs a webhook until ctx ends. Its cursor lives in dir (created
// when missing); a new webhook starts at the journal's current end.
func Start(ctx context.Context, cfg Config, j *journal.Journal, dir string, log *zap.Logger) (*Hook, error) {
	h := &Hook{cfg: cfg, j: j, client: &http.Client{Timeout: 30 * time.Second}, log: log.With(zap.String("webhook", cfg.URL)),
		wake: make(chan struct{}, 1), want: map[events.Type]bool{}}
	for _, t := range cfg.Events {
		h.want[t] = true
	}
	sum := sha256.Sum256([]byte(cfg.URL))
	h.path = filepath.Join(dir, hex.EncodeToString(sum[:8])+".cursor")
	b, err := os.ReadFile(h.path)
	switch {
	case err == nil:
		n, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			return nil, fmt.Errorf("webhook %s: cursor %s is corrupt", cfg.URL, h.path)
		}
		h.cursor.Store(n)
	case errors.Is(err, os.ErrNotExist):
		h.cursor.Store(j.LastSeq())
		if err := h.save(j.LastSeq()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("webhook %s: %w", cfg.URL, err)
	}
	j.Subscribe(func([]events.Event) {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	})
	go h.run(ctx)
	return h, nil
}

// Lag is how many journal events the webhook has not dealt with yet.
func (h *Hook) Lag() uint64 {
	last, c := h.j.LastSeq(), h.cursor.Load()
	if last < c {
		return 0
	}
	return last - c
}

// URL names the webhook.
func (h *Hook) URL() string { return h.cfg.URL }

func (h *Hook) save(seq uint64) error {
	return journal.WriteFile(h.path, []byte(strconv.FormatUint(seq, 10)+"\n"), 0o600)
}

func (h *Hook) run(ctx context.Context) {
	backoff := time.Second
	for {
		err := h.deliverPending(ctx)
		wait := time.Minute // a safety net: the journal wakes us
		if err != nil {
			h.log.Warn("webhook delivery failed; will retry", zap.Error(err), zap.Duration("in", backoff))
			wait, backoff = backoff, min(backoff*2, 5*time.Minute)
		} else {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
			if err != nil {
				// Failing: keep to the backoff, not to the mail flow.
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		case <-time.After(wait):
		}
	}
}

// errStop ends a scan after a failed delivery.
var errStop = errors.New("stop")

// deliverPending posts every matching event after the cursor, in order.
func (h *Hook) deliverPending(ctx context.Context) error {
	var failure error
	skipped := h.cursor.Load()
	err := h.j.Scan(h.cursor.Load()+1, func(e events.Event) error {
		if ctx.Err() != nil {
			return errStop
		}
		if !h.want[e.Type()] {
			skipped = e.Seq
			return nil
		}
		if err := h.post(ctx, e); err != nil {
			failure = err
			return errStop
		}
		h.cursor.Store(e.Seq)
		skipped = e.Seq
		return h.save(e.Seq)
	})
	if skipped > h.cursor.Load() {
		h.cursor.Store(skipped)
		h.save(skipped)
	}
	if failure != nil {
		return failure
	}
	if err != nil && !errors.Is(err, errStop) {
		return err
	}
	return nil
}

func (h *Hook) post(ctx context.Context, e events.Event) error {
	body, err := projections.JSONLine(e)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Ledgermail-Signature", Sign(h.cfg.Secret, time.Now(), body))
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("event %d: %s", e.Seq, resp.Status)
	}
	h.log.Debug("webhook delivered", zap.Uint64("seq", e.Seq), zap.String("envelope", e.Envelope))
	return nil
}

// Sign returns the X-Ledgermail-Signature value for body sent at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "t=" + ts + ",sha256=" + hex.EncodeToString(mac.Sum(nil))
}
