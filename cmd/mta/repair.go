package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
)

func newJournalCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "journal",
		Short: "journal maintenance (repair)",
		Args:  cobra.NoArgs,
	}
	var path string
	repair := &cobra.Command{
		Use:   "repair [-c FILE]",
		Short: "rebuild a damaged journal from what can be read; the server must be stopped",
		Long: `repair keeps the damaged journal as it is, renamed <data_dir>/journal.damaged-TIME,
and writes a new journal holding every record that can still be read, at its
sequence number. Each unreadable record becomes a RecordLost event. Every live
envelope that lost a record or its body gets a Lost event (a final state), and
its sender a DSN saying so. A sound journal is left alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := LoadConfig(path)
			if err != nil {
				return err
			}
			return repairJournal(cmd.OutOrStdout(), cfg)
		},
	}
	repair.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	c.AddCommand(repair)
	return c
}

// repairJournal salvages the journal into a new directory, accounts for
// the envelopes it lost, then swaps the directories.
func repairJournal(w io.Writer, cfg Config) error {
	dir := cfg.JournalDir()
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(w, "no journal in %s: nothing to repair\n", dir)
		return nil
	}
	problems, err := journalProblems(dir)
	if errors.Is(err, journal.ErrLocked) {
		return fmt.Errorf("the server holds the journal: stop it before `mta journal repair`")
	}
	if err == nil && problems == 0 {
		fmt.Fprintln(w, "the journal is sound: nothing to repair")
		return nil
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	tmp, saved := dir+".repair-"+stamp, dir+".damaged-"+stamp
	bar := newProgress("salvaging", 0)
	rep, err := journal.Salvage(dir, tmp, func(seq, total uint64) { bar.total = total; bar.n = seq - 1; bar.add() })
	bar.done()
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("repair: %w", err)
	}
	lost, err := accountForLost(tmp, cfg.Hostname, rep)
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("repair: %w", err)
	}
	if err := os.Rename(dir, saved); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("repair: keep the damaged journal: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("repair: install the repaired journal (the damaged one is in %s, the repaired one in %s): %w", saved, tmp, err)
	}
	seqs := make([]uint64, 0, len(rep.Unreadable))
	for s := range rep.Unreadable {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	for i, s := range seqs {
		if i == 20 {
			fmt.Fprintf(w, "... and %d more unreadable records\n", len(seqs)-20)
			break
		}
		fmt.Fprintf(w, "record %d unreadable: %s\n", s, rep.Unreadable[s])
	}
	for _, l := range lost {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintf(w, "repaired: %d records kept, %d unreadable, %d bodies kept, %d envelopes lost; the damaged journal is kept in %s\n",
		rep.Records, len(rep.Unreadable), rep.Bodies, len(lost), saved)
	return nil
}

// journalProblems counts what a verifying read finds (0: sound).
func journalProblems(dir string) (int, error) {
	j, err := journal.Open(journal.Options{Dir: dir, ReadOnly: true, AllowLost: true})
	if err != nil {
		if errors.Is(err, journal.ErrLocked) {
			return 0, err
		}
		return 1, err
	}
	defer j.Close()
	n := 0
	err = j.ScanTolerant(1, func(events.Event) error { return nil }, func(*journal.CorruptError) error { n++; return nil })
	if err != nil {
		n++
	}
	return n, nil
}

// accountForLost journals, in the repaired journal, a Lost event (and a
// DSN to the sender) for every live envelope that lost a record or its
// body, and returns one line for each.
func accountForLost(dir, hostname string, rep journal.SalvageReport) ([]string, error) {
	j, err := journal.Open(journal.Options{Dir: dir})
	if err != nil {
		return nil, err
	}
	defer j.Close()
	q := projections.NewQueue()
	batch := make([]events.Event, 0, 1024)
	err = j.Scan(1, func(e events.Event) error {
		if batch = append(batch, e); len(batch) == cap(batch) {
			q.Apply(batch)
			batch = batch[:0]
		}
		return nil
	})
	q.Apply(batch)
	if err != nil {
		return nil, err
	}
	why := func(e *projections.Envelope) string {
		for id := e.ID; ; {
			if r, ok := rep.Affected[id]; ok {
				return r
			}
			i := strings.LastIndexByte(id, '.')
			if i < 0 {
				break
			}
			id = id[:i]
		}
		return rep.MissingBodies[e.BodyKey]
	}
	victims := q.Select(func(e *projections.Envelope) bool { return why(e) != "" })
	sort.Slice(victims, func(a, b int) bool { return victims[a].ID < victims[b].ID })
	var lines []string
	// Envelopes whose Received record itself is unreadable are not in the
	// fold: their sender is unknown, so no DSN can go; the Lost event still
	// records them.
	for id, r := range rep.Affected {
		if id == "-" || strings.Contains(id, ".") || q.Select(func(e *projections.Envelope) bool { return e.ID == id || strings.HasPrefix(e.ID, id+".") }) != nil {
			continue
		}
		if evs, err := j.EnvelopeEvents(id, false); err == nil && hasReceived(evs) {
			continue // it reached a final state: nothing to account for
		}
		if _, err := j.Append(journal.Write{Events: []events.Event{{Envelope: id, Payload: events.Lost{Reason: "lost to storage damage: " + r}}}}); err != nil {
			return lines, err
		}
		lines = append(lines, fmt.Sprintf("envelope %s lost (%s); its sender is unknown, so no DSN could be sent", id, r))
	}
	now := time.Now().UTC()
	for _, e := range victims {
		reason := "lost to storage damage: " + why(e)
		wr := journal.Write{}
		var dsnID string
		if e.Sender != "" && len(e.Pending) > 0 {
			dsnID = events.NewID()
			var rcpts []policy.DSNRecipient
			for _, r := range e.Pending {
				rcpts = append(rcpts, policy.DSNRecipient{Recipient: r, Status: "5.3.0",
					Diagnostic: fmt.Sprintf("554 5.3.0 the message was lost to storage damage at %s (%s)", hostname, why(e))})
			}
			msg := policy.BuildDSN(policy.DSN{ID: dsnID, Hostname: hostname, Envelope: e.ID, Sender: e.Sender,
				Arrived: e.Arrived, Now: now, Recipients: rcpts})
			wr.Bodies = append(wr.Bodies, journal.Body{Key: dsnID, Data: msg})
			wr.Events = append(wr.Events, events.Event{Envelope: dsnID, Payload: events.Received{
				Recipients: []string{e.Sender}, BodyKey: dsnID, Size: int64(len(msg)), Listener: events.ListenerLocal, Parent: e.ID}})
		}
		wr.Events = append([]events.Event{{Envelope: e.ID, Payload: events.Lost{Recipients: e.Pending, Reason: reason, DSN: dsnID}}}, wr.Events...)
		if _, err := j.Append(wr); err != nil {
			return lines, err
		}
		line := fmt.Sprintf("envelope %s lost (%s)", e.ID, why(e))
		if dsnID != "" {
			line += fmt.Sprintf("; DSN %s to <%s>", dsnID, e.Sender)
		}
		lines = append(lines, line)
	}
	return lines, nil
}

func hasReceived(evs []events.Event) bool {
	for _, e := range evs {
		if e.Type() == events.TypeReceived {
			return true
		}
	}
	return false
}
