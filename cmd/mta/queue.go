package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/projections"
)

func newQueueCmd() *cobra.Command {
	var path string
	var asJSON bool
	c := &cobra.Command{
		Use:   "queue [-c FILE] [--json]",
		Short: "queue status (like mailq): counts by state, then one line per live envelope",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withSource(path, readOnly, func(src source) error {
				snap, err := src.Queue()
				if err != nil {
					return err
				}
				if asJSON {
					return writeQueueJSON(cmd.OutOrStdout(), snap)
				}
				return writeMailq(cmd.OutOrStdout(), snap)
			})
		},
	}
	c.PersistentFlags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var showJSON bool
	show := &cobra.Command{
		Use:   "show ID [--json]",
		Short: "one envelope: its current state and its whole event history (children included)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSource(path, readOnly, func(src source) error { return showEnvelope(cmd.OutOrStdout(), src, args[0], showJSON) })
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")

	var all bool
	retry := &cobra.Command{
		Use:   "retry ID|--all",
		Short: "retry now (a RetryRequested event is journaled)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := "all"
			if len(args) == 1 {
				if all {
					return usageError{fmt.Errorf("give an envelope ID or --all, not both")}
				}
				id = args[0]
			} else if !all {
				return usageError{fmt.Errorf("queue retry needs an envelope ID or --all")}
			}
			return operator(cmd.OutOrStdout(), path, "retry", id)
		},
	}
	retry.Flags().BoolVar(&all, "all", false, "retry every live envelope")
	del := &cobra.Command{
		Use:   "delete ID",
		Short: "drop an envelope (a Deleted event is journaled; no bounce)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return operator(cmd.OutOrStdout(), path, "delete", args[0])
		},
	}
	var forDur time.Duration
	suspend := &cobra.Command{
		Use:   "suspend DOMAIN [--for 2h]",
		Short: "stop deliveries to DOMAIN (a Suspended event is journaled; survives a restart; expiry still applies)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if forDur < 0 {
				return usageError{fmt.Errorf("--for must not be negative")}
			}
			var until time.Time
			if forDur > 0 {
				until = time.Now().Add(forDur)
			}
			return withSource(path, readWrite, func(src source) error {
				if err := src.Suspend(args[0], until); err != nil {
					return err
				}
				if until.IsZero() {
					fmt.Fprintf(cmd.OutOrStdout(), "suspended: %s until resumed\n", args[0])
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "suspended: %s until %s\n", args[0], until.UTC().Format(time.RFC3339))
				}
				return nil
			})
		},
	}
	suspend.Flags().DurationVar(&forDur, "for", 0, "resume by itself after this long (e.g. 2h); default: until `mta queue resume`")
	resume := &cobra.Command{
		Use:   "resume DOMAIN",
		Short: "deliver to DOMAIN again (a Resumed event is journaled; its envelopes are retried now)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSource(path, readWrite, func(src source) error {
				n, err := src.Resume(args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "resumed: %s, %d envelope(s) retried\n", args[0], n)
				return nil
			})
		},
	}
	c.AddCommand(show, retry, del, suspend, resume)
	return c
}

func withSource(path string, mode access, fn func(source) error) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	src, err := openSource(cfg, mode)
	if err != nil {
		return err
	}
	defer src.Close()
	return fn(src)
}

func operator(w io.Writer, path, action, id string) error {
	return withSource(path, readWrite, func(src source) error {
		n, err := src.Operator(action, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s: %d envelope(s)\n", action, n)
		return nil
	})
}

// queueJSON is the `mta queue --json` object (docs/CLI.md).
type queueJSON struct {
	Counts    map[projections.State]int `json:"counts"`
	Envelopes []envelopeJSON            `json:"envelopes"`
	// Suspended destination domains: until when (null: until resumed).
	Suspended map[string]*time.Time `json:"suspended"`
}

type envelopeJSON struct {
	ID          string   `json:"id"`
	Parent      string   `json:"parent"`
	State       string   `json:"state"`
	Sender      string   `json:"sender"`
	Recipients  []string `json:"recipients"`
	Size        int64    `json:"size"`
	Arrived     string   `json:"arrived"`
	Attempts    int      `json:"attempts"`
	NextAttempt *string  `json:"next_attempt"`
	LastError   string   `json:"last_error"`
	// HeldFor is set with state "held": what the scheduler waits for
	// ("connections", "rate").
	HeldFor string `json:"held_for,omitempty"`
}

func toJSON(e *projections.Envelope) envelopeJSON {
	out := envelopeJSON{ID: e.ID, Parent: e.Parent, State: string(e.State), Sender: e.Sender, Recipients: e.Recipients,
		Size: e.Size, Arrived: e.Arrived.UTC().Format(time.RFC3339), Attempts: e.Attempts, LastError: e.LastError}
	if out.Recipients == nil {
		out.Recipients = []string{}
	}
	if !e.NextAttempt.IsZero() && e.State == projections.StateDeferred {
		s := e.NextAttempt.UTC().Format(time.RFC3339)
		out.NextAttempt = &s
	}
	return out
}

func writeQueueJSON(w io.Writer, s projections.Snapshot) error {
	out := queueJSON{Counts: s.Counts, Envelopes: []envelopeJSON{}, Suspended: map[string]*time.Time{}}
	for d, until := range s.Suspended {
		if !until.IsZero() {
			u := until
			out.Suspended[d] = &u
		} else {
			out.Suspended[d] = nil
		}
	}
	for _, e := range s.Envelopes {
		ej := toJSON(e)
		if why, ok := s.Held[e.ID]; ok {
			ej.State, ej.HeldFor = "held", why
		}
		out.Envelopes = append(out.Envelopes, ej)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// writeMailq prints counts, then the live envelopes like Postfix's mailq.
func writeMailq(w io.Writer, s projections.Snapshot) error {
	var counts []string
	for _, st := range []projections.State{projections.StateReceived, projections.StateQueued, projections.StateActive,
		projections.StateDeferred, projections.StateDelivered, projections.StateBounced, projections.StateExpired, projections.StateDeleted, projections.StateLost} {
		counts = append(counts, fmt.Sprintf("%s=%d", st, s.Counts[st]))
	}
	for _, st := range []projections.State{projections.StateTransferring, projections.StateTransferred} {
		if s.Counts[st] > 0 { // only on the nodes of a cluster that drained
			counts = append(counts, fmt.Sprintf("%s=%d", st, s.Counts[st]))
		}
	}
	fmt.Fprintln(w, strings.Join(counts, " "))
	domains := make([]string, 0, len(s.Suspended))
	for d := range s.Suspended {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	for _, d := range domains {
		if until := s.Suspended[d]; until.IsZero() {
			fmt.Fprintf(w, "suspended: %s until resumed\n", d)
		} else {
			fmt.Fprintf(w, "suspended: %s until %s\n", d, until.UTC().Format(time.RFC3339))
		}
	}
	if len(s.Envelopes) == 0 {
		fmt.Fprintln(w, "Mail queue is empty")
		return nil
	}
	fmt.Fprintf(w, "%-26s %-9s %8s %-20s %s\n", "-Queue ID-", "-State-", "-Size-", "----Arrival Time----", "-Sender/Recipient-------")
	for _, e := range s.Envelopes {
		state := string(e.State)
		if _, ok := s.Held[e.ID]; ok {
			state = "held" // waiting for its destination's budget, not for a retry
		}
		fmt.Fprintf(w, "%-26s %-9s %8d %-20s %s\n", e.ID, state, e.Size, e.Arrived.UTC().Format("Mon Jan _2 15:04:05"), e.Sender)
		if e.LastError != "" {
			fmt.Fprintf(w, "%48s(%s)\n", "", e.LastError)
		}
		for _, r := range e.Recipients {
			fmt.Fprintf(w, "%48s%s\n", "", r)
		}
	}
	fmt.Fprintf(w, "-- %d envelope(s) in the queue\n", len(s.Envelopes))
	return nil
}

func showEnvelope(w io.Writer, src source, id string, asJSON bool) error {
	set := map[string]*projections.Envelope{}
	var evs []events.Event
	err := src.Scan(projections.Filter{Envelope: id}, func(e events.Event) error {
		projections.Fold(set, e)
		evs = append(evs, e)
		return nil
	}, nil)
	if err != nil {
		return err
	}
	env := set[id]
	if env == nil {
		return fmt.Errorf("no envelope %s in the journal", id)
	}
	if asJSON {
		out := struct {
			Envelope envelopeJSON      `json:"envelope"`
			Children []envelopeJSON    `json:"children"`
			Events   []json.RawMessage `json:"events"`
		}{Envelope: toJSON(env), Children: []envelopeJSON{}}
		for _, e := range evs {
			b, err := projections.JSONLine(e)
			if err != nil {
				return err
			}
			out.Events = append(out.Events, b)
		}
		for k, c := range set {
			if k != id {
				out.Children = append(out.Children, toJSON(c))
			}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(w, "envelope %s: %s, from <%s>, %d bytes, arrived %s\n", id, env.State, env.Sender, env.Size, env.Arrived.UTC().Format(time.RFC3339))
	for k, c := range set {
		if k != id {
			fmt.Fprintf(w, "  child %s: %s, attempts %d, to %s", k, c.State, c.Attempts, strings.Join(c.Recipients, ", "))
			if c.LastError != "" {
				fmt.Fprintf(w, ", last error: %s", c.LastError)
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintln(w, "history:")
	for _, e := range evs {
		if err := projections.WriteText(w, e); err != nil {
			return err
		}
	}
	return nil
}
