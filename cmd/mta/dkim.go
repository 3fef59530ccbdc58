package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/policy"
)

func newDKIMCmd() *cobra.Command {
	c := &cobra.Command{Use: "dkim keygen", Short: "DKIM key management"}
	var path, kind, out string
	keygen := &cobra.Command{
		Use:   "keygen DOMAIN SELECTOR [--type rsa|ed25519] [--out FILE]",
		Short: "make a signing key and print the DNS TXT record that publishes it",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := LoadConfig(path)
			if err != nil {
				return err
			}
			domain, selector := strings.ToLower(args[0]), args[1]
			if !hostnameRE.MatchString(domain) || !hostnameRE.MatchString(selector) {
				return usageError{fmt.Errorf("%q / %q is not a domain and a selector", domain, selector)}
			}
			pemBytes, txt, err := policy.GenerateDKIMKey(kind)
			if err != nil {
				return usageError{err}
			}
			if out == "" {
				out = filepath.Join(cfg.DataDir, "dkim", selector+"._domainkey."+domain+".pem")
			}
			if err := journal.WriteFile(out, pemBytes, 0o600); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "; private key written to %s\n", out)
			fmt.Fprintf(w, "%s._domainkey.%s. IN TXT %s\n", selector, domain, txtStrings(txt))
			fmt.Fprintf(w, "; and in the config:\n; [[policies.dkim]]\n; domain = %q\n; selector = %q\n; key_file = %q\n", domain, selector, out)
			return nil
		},
	}
	keygen.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	keygen.Flags().StringVar(&kind, "type", "rsa", "key type: rsa (2048 bits) or ed25519")
	keygen.Flags().StringVar(&out, "out", "", "key file (default <data_dir>/dkim/SELECTOR._domainkey.DOMAIN.pem)")
	c.AddCommand(keygen)
	return c
}

// txtStrings splits a TXT value into quoted strings of at most 255 bytes.
func txtStrings(v string) string {
	var parts []string
	for len(v) > 255 {
		parts = append(parts, `"`+v[:255]+`"`)
		v = v[255:]
	}
	parts = append(parts, `"`+v+`"`)
	return strings.Join(parts, " ")
}
