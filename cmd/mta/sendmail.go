package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ledgermail/ledgermail/maildrop"
)

// sysexits(3) codes, which scripts that call sendmail check.
const (
	exUsage    = 64
	exDataErr  = 65
	exNoUser   = 67
	exTempFail = 75
)

// exitError ends the program with its own exit code.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }

const sendmailUsage = `usage: mta sendmail [-t] [-i|-oi] [-f FROM] [-F NAME] [-c FILE] [RECIPIENT...] < message

The sendmail(8) interface: the message is read from standard input and
written, fsynced, into <data_dir>/maildrop/, from which the server queues it
(also when it starts later: mail is kept while the server is down).
  -t        also send to the To:, Cc: and Bcc: addresses (Bcc: is removed)
  -i, -oi   a line with a single "." does not end the message
  -f FROM   envelope sender (default: the invoking user at the hostname)
  -F NAME   full name for a From: header added when the message has none
  -c FILE   config file (TOML); default: embedded defaults
Other -o and -b options are accepted and ignored. Exit codes: 0 ok, 64 usage,
65 bad message, 67 bad address, 75 the maildrop could not be written.`

func newSendmailCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "sendmail [-t] [-i] [-f FROM] [-F NAME] [-c FILE] [RECIPIENT...]",
		Short:              "the sendmail(8) interface: queue a message from standard input (also as a symlink named sendmail)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return sendmail(args, os.Stdin, cmd.OutOrStdout())
		},
	}
}

type sendmailOpts struct {
	extract, dotOK bool
	from, name     string
	config         string
	rcpts          []string
}

func parseSendmailArgs(args []string) (sendmailOpts, error) {
	var o sendmailOpts
	for i := 0; i < len(args); i++ {
		a := args[i]
		value := func(flag string) (string, error) {
			if len(a) > len(flag) {
				return a[len(flag):], nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", flag)
			}
			i++
			return args[i], nil
		}
		var err error
		switch {
		case a == "--":
			o.rcpts = append(o.rcpts, args[i+1:]...)
			return o, nil
		case a == "-h" || a == "--help":
			return o, errHelp
		case a == "-t":
			o.extract = true
		case a == "-i" || a == "-oi":
			o.dotOK = true
		case strings.HasPrefix(a, "-f"):
			o.from, err = value("-f")
		case strings.HasPrefix(a, "-F"):
			o.name, err = value("-F")
		case a == "-c" || a == "--config":
			o.config, err = value(a)
		case strings.HasPrefix(a, "-o") || strings.HasPrefix(a, "-b"):
			// sendmail options that do not apply here (-oem, -odi, -bm).
		case strings.HasPrefix(a, "-"):
			return o, fmt.Errorf("unknown option %s", a)
		default:
			o.rcpts = append(o.rcpts, a)
		}
		if err != nil {
			return o, err
		}
	}
	return o, nil
}

var errHelp = errors.New("help")

func sendmail(args []string, stdin io.Reader, out io.Writer) error {
	o, err := parseSendmailArgs(args)
	if errors.Is(err, errHelp) {
		fmt.Fprintln(out, sendmailUsage)
		return nil
	}
	if err != nil {
		return exitError{exUsage, fmt.Errorf("sendmail: %v", err)}
	}
	cfg, err := LoadConfig(o.config)
	if err != nil {
		return err
	}
	msg, err := readMessage(stdin, o.dotOK)
	if err != nil {
		return exitError{exDataErr, fmt.Errorf("sendmail: read the message: %v", err)}
	}
	login := "unknown"
	if u, err := user.Current(); err == nil {
		login = u.Username
	}
	sender := o.from
	if sender == "" {
		sender = login + "@" + cfg.Hostname
	}
	rcpts := o.rcpts
	if o.extract {
		var more []string
		if msg, more, err = extractRecipients(msg); err != nil {
			return exitError{exDataErr, fmt.Errorf("sendmail: %v", err)}
		}
		rcpts = append(rcpts, more...)
	}
	if len(rcpts) == 0 {
		return exitError{exUsage, errors.New("sendmail: no recipients (name them, or use -t)")}
	}
	for _, a := range append([]string{sender}, rcpts...) {
		if !plausibleAddress(a) {
			return exitError{exNoUser, fmt.Errorf("sendmail: %q is not an address", a)}
		}
	}
	if !hasHeader(msg, "From") {
		from := "From: " + (&mail.Address{Name: o.name, Address: sender}).String() + "\r\n"
		msg = append([]byte(from), msg...)
	}
	dir := cfg.MaildropDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return exitError{exTempFail, fmt.Errorf("sendmail: %v", unwrapPathErr(err))}
	}
	_, err = maildrop.Drop(dir, maildrop.Envelope{Sender: sender, Recipients: rcpts, User: login}, bytes.NewReader(msg))
	if err != nil {
		return exitError{exTempFail, fmt.Errorf("sendmail: %v", err)}
	}
	return nil
}

// readMessage reads standard input; without dotOK a line with a single
// "." ends it (sendmail's default).
func readMessage(r io.Reader, dotOK bool) ([]byte, error) {
	if dotOK {
		return io.ReadAll(r)
	}
	var b bytes.Buffer
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if t := bytes.TrimRight(line, "\r\n"); len(t) == 1 && t[0] == '.' {
			return b.Bytes(), nil
		}
		b.Write(line)
		if err == io.EOF {
			return b.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// extractRecipients returns the To:, Cc: and Bcc: addresses and the message
// without its Bcc: fields.
func extractRecipients(msg []byte) ([]byte, []string, error) {
	header, body := splitHeader(msg)
	m, err := mail.ReadMessage(bytes.NewReader(append(append([]byte(nil), header...), '\n')))
	if err != nil {
		return nil, nil, fmt.Errorf("the header cannot be parsed: %v", err)
	}
	var out []string
	for _, f := range []string{"To", "Cc", "Bcc"} {
		for _, v := range m.Header[f] {
			list, err := mail.ParseAddressList(v)
			if err != nil {
				return nil, nil, fmt.Errorf("the %s: field cannot be parsed", f)
			}
			for _, a := range list {
				out = append(out, a.Address)
			}
		}
	}
	return append(dropField(header, "Bcc"), body...), out, nil
}

// splitHeader splits at the first empty line (the header keeps its
// trailing newline; the body starts with the empty line).
func splitHeader(msg []byte) ([]byte, []byte) {
	for i := 0; i < len(msg); {
		j := bytes.IndexByte(msg[i:], '\n')
		if j < 0 {
			return msg, nil
		}
		if len(bytes.TrimRight(msg[i:i+j], "\r")) == 0 {
			return msg[:i], msg[i:]
		}
		i += j + 1
	}
	return msg, nil
}

// dropField removes a header field and its continuation lines.
func dropField(header []byte, name string) []byte {
	var out []byte
	skipping := false
	for _, line := range bytes.SplitAfter(header, []byte("\n")) {
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			if !skipping {
				out = append(out, line...)
			}
			continue
		}
		skipping = len(line) > len(name) && line[len(name)] == ':' && strings.EqualFold(string(line[:len(name)]), name)
		if !skipping {
			out = append(out, line...)
		}
	}
	return out
}

func hasHeader(msg []byte, name string) bool {
	header, _ := splitHeader(msg)
	for _, line := range bytes.Split(header, []byte("\n")) {
		if len(line) > len(name) && line[len(name)] == ':' && strings.EqualFold(string(line[:len(name)]), name) {
			return true
		}
	}
	return false
}

func plausibleAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	return at > 0 && at < len(a)-1 && !strings.ContainsAny(a, " \t<>\r\n")
}

// MaildropDir is where `mta sendmail` drops messages.
func (c *Config) MaildropDir() string { return filepath.Join(c.DataDir, "maildrop") }
