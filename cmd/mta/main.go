// Command mta is ledgermail: an authenticated mail submission agent and
// outbound MTA with a durable, replayable event journal.
//
// Exit codes: 0 ok, 1 operational failure, 2 bad usage or bad config.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/smtpedge"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError is bad usage: exit code 2.
type usageError struct{ error }

func main() {
	root := newRoot()
	// Invoked through a symlink named sendmail: the sendmail(8) interface.
	if filepath.Base(os.Args[0]) == "sendmail" {
		root.SetArgs(append([]string{"sendmail"}, os.Args[1:]...))
	}
	err := root.Execute()
	if err == nil {
		return
	}
	var xe exitError
	if errors.As(err, &xe) {
		fmt.Fprintln(os.Stderr, xe.Error())
		os.Exit(xe.code)
	}
	fmt.Fprintln(os.Stderr, "mta: "+err.Error())
	var ce *ConfigError
	var ue usageError
	var me *smtpedge.ModeError
	switch {
	case errors.As(err, &ce), errors.As(err, &ue), errors.As(err, &me):
		os.Exit(2)
	case isCobraUsage(err):
		os.Exit(2)
	}
	os.Exit(1)
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "mta",
		Short:         "ledgermail: authenticated submission and outbound MTA with an auditable journal",
		SilenceErrors: true,
		SilenceUsage:  true,
		Version:       version,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(), newQueueCmd(), newReplayCmd(), newUsersCmd(), newCheckConfigCmd(), newVersionCmd(), newDKIMCmd(), newJournalCmd(), newSendmailCmd(), newClusterCmd(), newDrainCmd())
	return root
}

func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires ", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func newVersionCmd() *cobra.Command {
	var path string
	c := &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "mta (ledgermail) "+version)
			return nil
		},
	}
	// Every subcommand takes -c (docs/CLI.md); the version does not depend on it.
	c.Flags().StringVarP(&path, "config", "c", "", "config file (accepted for uniformity; unused)")
	return c
}

func newCheckConfigCmd() *cobra.Command {
	var path string
	c := &cobra.Command{
		Use:   "check-config [-c FILE]",
		Short: "validate a config and print the effective configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := LoadConfig(path)
			if err != nil {
				return err
			}
			if err := cfg.CheckFiles(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "# configuration is valid; effective values:")
			return tomlEncode(cmd.OutOrStdout(), cfg)
		},
	}
	c.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	return c
}
