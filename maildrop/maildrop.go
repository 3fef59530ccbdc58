// Package maildrop is the sendmail(8) way in, like Postfix's postdrop:
// `mta sendmail` writes each message as one complete, fsynced file into
// <data_dir>/maildrop/ (renamed into place, so a reader never sees half a
// file), and the server ingests those files into the journal, at start and
// while it runs. Mail from cron is kept even while the server is down.
//
// The contract: a file is removed only after its Received event and body
// are durable in the journal; the envelope ID is chosen when the file is
// written, so a crash between the journal write and the removal cannot
// queue the message twice (a file whose envelope is already journaled is
// just removed).
package maildrop

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/smtpedge"
)

// Listener is the Received event's listener for maildrop submissions.
const Listener = "sendmail"

// Envelope is the first line of a maildrop file (JSON); the message
// follows.
type Envelope struct {
	ID         string   `json:"id"`
	Sender     string   `json:"sender"`
	Recipients []string `json:"recipients"`
	User       string   `json:"user"` // the local user who ran sendmail
}

// Drop writes msg into dir as one file: a temporary file, fsynced, then
// renamed into place (and the directory fsynced). It returns the envelope
// ID.
func Drop(dir string, env Envelope, msg io.Reader) (string, error) {
	if env.ID == "" {
		env.ID = events.NewID()
	}
	head, err := json.Marshal(env)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, ".drop-*")
	if err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	f.Chmod(0o640) // the directory's group (setgid) may read it: the server
	w := bufio.NewWriter(f)
	w.Write(head)
	w.WriteByte('\n')
	if _, err := io.Copy(w, msg); err != nil {
		f.Close()
		return "", fmt.Errorf("maildrop: write: %w", err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return "", fmt.Errorf("maildrop: write: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("maildrop: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("maildrop: write: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, env.ID+".msg")); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return env.ID, nil
}

// Ingester moves maildrop files into the journal.
type Ingester struct {
	Dir      string
	Journal  *journal.Journal
	Accepted func(id string) // the queue takes it from there
	Log      *zap.Logger
	// MaxBytes refuses larger messages (limits.max_message_bytes): the
	// file is moved aside as <id>.refused.
	MaxBytes int64
	// Memory counts the bodies being read ([limits] body_memory, shared
	// with the other edges); nil means a budget of its own.
	Memory *smtpedge.BodyMemory
}

// Run ingests what is there, then every interval until done is closed.
func (in *Ingester) Run(interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		in.Once()
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}

// Once ingests every complete file now in the directory, oldest first, and
// returns how many it queued.
func (in *Ingester) Once() int {
	names, _ := filepath.Glob(filepath.Join(in.Dir, "*.msg"))
	sort.Strings(names) // IDs are time-sortable
	n := 0
	for _, name := range names {
		id, err := in.ingest(name)
		if err != nil {
			in.Log.Error("maildrop file not ingested; left in place", zap.String("file", name), zap.Error(err))
			if errors.Is(err, journal.ErrFailed) {
				return n
			}
			continue
		}
		if id != "" {
			n++
		}
	}
	return n
}

func (in *Ingester) ingest(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	r := bufio.NewReaderSize(f, 64<<10)
	head, err := r.ReadSlice('\n')
	var env Envelope
	if err != nil || json.Unmarshal(head, &env) != nil || env.ID == "" || len(env.Recipients) == 0 {
		in.Log.Error("maildrop file is not a message; moved aside", zap.String("file", name))
		return "", os.Rename(name, strings.TrimSuffix(name, ".msg")+".bad")
	}
	size := st.Size() - int64(len(head))
	log := in.Log.With(zap.String("envelope", env.ID))
	if prior, err := in.Journal.EnvelopeEvents(env.ID, false); err == nil && len(prior) > 0 {
		// Journaled before a crash kept the file: do not queue it twice.
		return "", os.Remove(name)
	}
	if in.MaxBytes > 0 && size > in.MaxBytes {
		log.Warn("maildrop message refused: too big", zap.Int64("size", size), zap.Int64("max", in.MaxBytes))
		return "", os.Rename(name, strings.TrimSuffix(name, ".msg")+".refused")
	}
	sp := smtpedge.NewSpool(in.Journal, in.Memory)
	if _, err := sp.ReadFrom(r); err != nil {
		sp.Discard()
		return "", err
	}
	if err := sp.Err(); err != nil {
		// Out of body memory or storage: the file stays for the next pass.
		sp.Discard()
		return "", err
	}
	rcv := events.Received{Sender: env.Sender, Recipients: env.Recipients, BodyKey: env.ID, Size: sp.Size(),
		BodySHA256: sp.Sum(), Listener: Listener, AuthUser: env.User}
	_, err = in.Journal.Append(journal.Write{
		Bodies: []journal.Body{sp.Body(env.ID)},
		Events: []events.Event{{Envelope: env.ID, Payload: rcv}},
	})
	sp.Release()
	if err != nil {
		return "", err
	}
	log.Info("message accepted", zap.String("listener", Listener), zap.String("user", env.User), zap.String("from", env.Sender),
		zap.Strings("to", env.Recipients), zap.Int64("size", rcv.Size))
	if err := os.Remove(name); err != nil {
		log.Warn("maildrop file journaled but not removed (it will not be queued twice)", zap.Error(err))
	}
	in.Accepted(env.ID)
	return env.ID, nil
}
