package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ledgermail/ledgermail/smtpedge"
)

func newUsersCmd() *cobra.Command {
	var path string
	c := &cobra.Command{
		Use:   "users add|del|list",
		Short: "manage the bcrypt users file (name:bcrypt-hash:addr1,addr2)",
	}
	c.PersistentFlags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")

	var addrs []string
	var fromStdin bool
	var cost int
	add := &cobra.Command{
		Use:   "add NAME [--address ADDR]... [--password-stdin]",
		Short: "add a user or replace its password and addresses (signal the server with SIGHUP to reload)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, users, err := loadUsers(path)
			if err != nil {
				return err
			}
			name := args[0]
			if name == "" || strings.ContainsAny(name, ": \t\n") {
				return usageError{fmt.Errorf("user name %q may not be empty or contain ':' or spaces", name)}
			}
			for _, a := range addrs {
				if !strings.Contains(a, "@") || strings.ContainsAny(a, ", :") {
					return usageError{fmt.Errorf("--address %q is not an address (user@domain or *@domain)", a)}
				}
			}
			if cost < 4 || cost > 31 {
				return usageError{fmt.Errorf("--bcrypt-cost %d is outside 4-31", cost)}
			}
			pw, err := readPassword(cmd.InOrStdin(), fromStdin)
			if err != nil {
				return err
			}
			hash, err := smtpedge.HashPassword(pw, cost)
			if err != nil {
				return err
			}
			out := append(withoutUser(users, name), smtpedge.User{Name: name, Hash: hash, Addresses: addrs})
			if err := smtpedge.WriteUsers(file, out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s saved in %s\n", name, file)
			return nil
		},
	}
	add.Flags().StringArrayVar(&addrs, "address", nil, "a sender address the user owns (repeatable; *@domain for a whole domain)")
	add.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from standard input (first line)")
	add.Flags().IntVar(&cost, "bcrypt-cost", 10, "bcrypt cost (4-31); each step doubles the time of every AUTH")

	del := &cobra.Command{
		Use:   "del NAME",
		Short: "remove a user",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, users, err := loadUsers(path)
			if err != nil {
				return err
			}
			out := withoutUser(users, args[0])
			if len(out) == len(users) {
				return fmt.Errorf("no user %s in %s", args[0], file)
			}
			if err := smtpedge.WriteUsers(file, out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s removed\n", args[0])
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "list users and their addresses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, users, err := loadUsers(path)
			if err != nil {
				return err
			}
			for _, u := range users {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", u.Name, strings.Join(u.Addresses, ","))
			}
			return nil
		},
	}
	c.AddCommand(add, del, list)
	return c
}

// loadUsers reads the config's users file: its path and its users.
func loadUsers(configPath string) (string, []smtpedge.User, error) {
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return "", nil, err
	}
	users, err := smtpedge.ReadUsers(cfg.UsersFile())
	return cfg.UsersFile(), users, err
}

func withoutUser(users []smtpedge.User, name string) []smtpedge.User {
	out := make([]smtpedge.User, 0, len(users))
	for _, u := range users {
		if u.Name != name {
			out = append(out, u)
		}
	}
	return out
}

func readPassword(in io.Reader, fromStdin bool) (string, error) {
	if !fromStdin {
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			return "", usageError{errors.New("no terminal to ask for the password: use --password-stdin")}
		}
		fmt.Fprint(os.Stderr, "Password: ")
		b, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		if len(b) == 0 {
			return "", usageError{errors.New("empty password")}
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", usageError{errors.New("empty password on standard input")}
	}
	return line, nil
}
