package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/admin"
	"github.com/ledgermail/ledgermail/projections"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/queue"
)

func newJournalCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "journal",
		Short: "journal maintenance (repair, head, prune)",
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
	var headPath string
	head := &cobra.Command{
		Use:   "head [-c FILE]",
		Short: "print the journal's head (SEQ:SHA256) to keep elsewhere; `replay --verify --anchor` proves the journal still extends it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withSource(headPath, readOnly, func(src source) error {
				seq, hash, err := src.Head()
				if err != nil {
					return err
				}
				if seq == 0 {
					return fmt.Errorf("the journal is empty: no head yet")
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d:%s\n", seq, hash)
				return nil
			})
		},
	}
	head.Flags().StringVarP(&headPath, "config", "c", "", "config file (TOML); default: embedded defaults")
	var prunePath string
	var pruneAsJSON bool
	prune := &cobra.Command{
		Use:   "prune [-c FILE] [--json]",
		Short: "run the retention sweep now: history older than [journal] retention leaves the hot journal (archived or dropped)",
		Long: `prune moves the history of every envelope that reached a final state more
than [journal] retention ago out of the hot journal: into a compressed,
read-only archive segment under <data_dir>/archive (archive = true; replay
reads it transparently), or away for good (archive = false). The server runs
the same sweep periodically; with the server running this asks it through the
admin API.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := LoadConfig(prunePath)
			if err != nil {
				return err
			}
			res, err := pruneJournal(cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if pruneAsJSON {
				return json.NewEncoder(out).Encode(res)
			}
			if res.Records == 0 {
				fmt.Fprintf(out, "nothing to prune: the hot journal starts at %d\n", res.FirstSeq)
				return nil
			}
			where := "dropped"
			if res.Segment != "" {
				where = "archived in " + res.Segment
			}
			fmt.Fprintf(out, "records %d to %d %s (%d bodies); %d bytes of body segments freed; the hot journal starts at %d\n",
				res.From, res.To, where, res.Bodies, res.FreedBody, res.FirstSeq)
			return nil
		},
	}
	prune.Flags().StringVarP(&prunePath, "config", "c", "", "config file (TOML); default: embedded defaults")
	prune.Flags().BoolVar(&pruneAsJSON, "json", false, "print the result as JSON")
	c.AddCommand(repair, head, prune)
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
	lost, err := queue.AccountForLost(tmp, cfg.Hostname, rep)
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

// pruneJournal runs the retention sweep: offline on the journal, or
// through the running server's admin API.
func pruneJournal(cfg Config) (admin.PruneJSON, error) {
	if cfg.Journal.Retention.Duration == 0 {
		return admin.PruneJSON{}, fmt.Errorf("journal.retention is \"0\": nothing is ever pruned")
	}
	src, err := openSource(cfg, readWrite)
	if err != nil {
		return admin.PruneJSON{}, err
	}
	defer src.Close()
	switch s := src.(type) {
	case emptySource:
		return admin.PruneJSON{FirstSeq: 1}, nil
	case *adminSource:
		resp, err := s.do("POST", "/journal/prune")
		if err != nil {
			return admin.PruneJSON{}, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return admin.PruneJSON{}, errors.New(strings.TrimSpace(string(b)))
		}
		var res admin.PruneJSON
		return res, json.NewDecoder(resp.Body).Decode(&res)
	case *offlineSource:
		q := projections.NewQueue()
		log := zap.NewNop()
		if err := queue.Rebuild(s.j, q, log, false); err != nil {
			return admin.PruneJSON{}, err
		}
		r := &queue.Retention{Journal: s.j, Queue: q, Period: cfg.Journal.Retention.Duration, Archive: cfg.Journal.Archive, Bodies: cfg.Queue.KeepBodies, Log: log}
		res, err := r.Sweep()
		return admin.PruneResult(res), err
	}
	return admin.PruneJSON{}, fmt.Errorf("cannot prune through %s", src.Describe())
}
