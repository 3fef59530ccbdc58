package main

import (
	"bufio"
	"fmt"
	"sort"

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
			mode := readOnly
			if verify {
				mode = verifyOnly
			}
			return withSource(path, mode, func(src source) error {
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
// the queue from scratch and compares it, at the same sequence number,
// with a record kept independently of this fold: the queue snapshot the
// server saved (offline) or the server's live projection (online).
func verifyJournal(cmd *cobra.Command, src source) error {
	out := cmd.OutOrStdout()
	ref, what, haveRef, err := src.Reference()
	if err != nil {
		fmt.Fprintf(out, "the reference state cannot be read: %v\n", err)
		haveRef = false
	}
	q := projections.NewQueue()
	var bad, n int
	var rebuiltAtRef *projections.Snapshot
	var batch []events.Event
	flush := func() {
		q.Apply(batch)
		batch = batch[:0]
	}
	bar := newProgress("verifying", src.Total())
	err = src.Scan(projections.Filter{}, func(e events.Event) error {
		n++
		bar.add()
		batch = append(batch, e)
		if haveRef && e.Seq == ref.Seq {
			flush()
			s := q.Snapshot()
			rebuiltAtRef = &s
		}
		if len(batch) == 1024 {
			flush()
		}
		return nil
	}, func(seq uint64, reason string) error {
		bad++
		fmt.Fprintf(out, "corrupt record at sequence %d: %s\n", seq, reason)
		return nil
	})
	flush()
	bar.done()
	if err != nil {
		fmt.Fprintf(out, "journal unreadable: %v\n", err)
		return fmt.Errorf("journal verification failed: %w", err)
	}
	var mismatch []string
	switch {
	case !haveRef:
		fmt.Fprintln(out, "no independent record of the queue to compare with (no snapshot saved yet)")
	case ref.Seq == 0:
		rebuilt := projections.NewQueue().Snapshot()
		mismatch = compareSnapshots(rebuilt, ref)
	case rebuiltAtRef == nil:
		mismatch = []string{fmt.Sprintf("%s is past the end of the readable journal", what)}
	default:
		mismatch = compareSnapshots(*rebuiltAtRef, ref)
	}
	for _, m := range mismatch {
		fmt.Fprintln(out, "mismatch: "+m)
	}
	rebuilt := q.Snapshot()
	compared := "not compared"
	if haveRef {
		compared = "compared with " + what
	}
	fmt.Fprintf(out, "%d records read, %d corrupt, %d live envelopes rebuilt (%s), %s, %d mismatches\n",
		n, bad, len(rebuilt.Envelopes), src.Describe(), compared, len(mismatch))
	if bad > 0 || len(mismatch) > 0 {
		return fmt.Errorf("journal verification failed")
	}
	return nil
}

// compareSnapshots lists the differences between the queue rebuilt from
// the journal and a reference taken at the same sequence number.
func compareSnapshots(rebuilt, ref projections.Snapshot) []string {
	var out []string
	want := map[string]*projections.Envelope{}
	for _, e := range ref.Envelopes {
		want[e.ID] = e
	}
	for _, e := range rebuilt.Envelopes {
		l, ok := want[e.ID]
		if !ok {
			out = append(out, fmt.Sprintf("envelope %s is live in the journal but not in the reference", e.ID))
			continue
		}
		if l.State != e.State || l.Attempts != e.Attempts {
			out = append(out, fmt.Sprintf("envelope %s: journal says %s after %d attempts, reference %s after %d", e.ID, e.State, e.Attempts, l.State, l.Attempts))
		}
		delete(want, e.ID)
	}
	for id := range want {
		out = append(out, fmt.Sprintf("envelope %s is in the reference but not live in the journal", id))
	}
	sort.Strings(out)
	return out
}
