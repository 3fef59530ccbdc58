package main

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/queue"
)

func newReplayCmd() *cobra.Command {
	var path, envelope, since string
	var asJSON, verify bool
	var anchor string
	c := &cobra.Command{
		Use:   "replay [-c FILE] [--envelope ID] [--since RFC3339] [--json] [--verify]",
		Short: "print the journal in order, for auditing; --verify checks every record and the rebuilt state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := projections.ParseFilter(envelope, since)
			if err != nil {
				return usageError{err}
			}
			mode := readOnly
			if verify {
				mode = verifyOnly
			}
			return withSource(path, mode, func(src source) error {
				if verify {
					return verifyJournal(cmd, src, anchor)
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
	c.Flags().StringVar(&anchor, "anchor", "", "with --verify: SEQ:SHA256, a head printed earlier by `mta journal head`; fail unless the journal still extends it")
	c.Flags().BoolVar(&verify, "verify", false, "check every record's checksum and chain, rebuild the state and compare with the live projection; exit 1 on any mismatch")
	return c
}

// verifyJournal reads every record, reporting each corrupt one, rebuilds
// the queue from scratch and compares it, at the same sequence number,
// with a record kept independently of this fold: the queue snapshot the
// server saved (offline) or the server's live projection (online).
func verifyJournal(cmd *cobra.Command, src source, anchor string) error {
	out := cmd.OutOrStdout()
	var anchorSeq uint64
	var anchorHash string
	if anchor != "" {
		s, h, ok := strings.Cut(anchor, ":")
		n, err := strconv.ParseUint(s, 10, 64)
		if !ok || err != nil || n == 0 || len(h) != 64 {
			return usageError{fmt.Errorf("--anchor must be SEQ:SHA256 as `mta journal head` prints it")}
		}
		anchorSeq, anchorHash = n, h
	}
	ref, what, haveRef, err := src.Reference()
	if err != nil {
		fmt.Fprintf(out, "the reference state cannot be read: %v\n", err)
		haveRef = false
	}
	var refp *projections.Snapshot
	if haveRef {
		refp = &ref
	}
	v := queue.NewVerifier(refp)
	bad := 0
	bar := newProgress("verifying", src.Total())
	bodies := 0
	err = src.Scan(projections.Filter{}, func(e events.Event) error {
		bar.add()
		v.Add(e)
		// Every retained body must still match its Received event's SHA-256.
		if rcv, ok := e.Payload.(events.Received); ok && rcv.BodySHA256 != "" {
			sum, present, err := src.BodySum(rcv.BodyKey)
			if err != nil {
				return err
			}
			if present {
				bodies++
				if sum != rcv.BodySHA256 {
					bad++
					fmt.Fprintf(out, "corrupt body %s of envelope %s (Received at sequence %d): SHA-256 %s, recorded %s\n", rcv.BodyKey, e.Envelope, e.Seq, sum, rcv.BodySHA256)
				}
			}
		}
		return nil
	}, func(seq uint64, reason string) error {
		bad++
		fmt.Fprintf(out, "corrupt record at sequence %d: %s\n", seq, reason)
		return nil
	})
	bar.done()
	if err != nil {
		fmt.Fprintf(out, "journal unreadable: %v\n", err)
		return fmt.Errorf("journal verification failed: %w", err)
	}
	rebuilt, mismatch := v.Finish()
	if !haveRef {
		fmt.Fprintln(out, "no independent record of the queue to compare with (no snapshot saved yet)")
	}
	for _, m := range mismatch {
		fmt.Fprintln(out, "mismatch: "+m)
	}
	compared := "not compared"
	if haveRef {
		compared = "compared with " + what
	}
	fmt.Fprintf(out, "%d records read, %d bodies checked, %d corrupt, %d live envelopes rebuilt (%s), %s, %d mismatches\n",
		v.Events, bodies, bad, len(rebuilt.Envelopes), src.Describe(), compared, len(mismatch))
	anchorFailed := false
	if anchorSeq != 0 {
		if err := src.Anchor(anchorSeq, anchorHash); err != nil {
			anchorFailed = true
			fmt.Fprintf(out, "anchor %d:%s: %v\n", anchorSeq, anchorHash, err)
		} else {
			fmt.Fprintf(out, "the journal extends anchor %d:%s\n", anchorSeq, anchorHash)
		}
	}
	if bad > 0 || len(mismatch) > 0 || anchorFailed {
		return fmt.Errorf("journal verification failed")
	}
	return nil
}
