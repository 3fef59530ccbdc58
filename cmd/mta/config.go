package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/smtpedge"
)

// Config is the whole TOML configuration (docs/CONFIG.md). Every
// key is optional; Defaults() holds the embedded defaults.
type Config struct {
	Hostname string `toml:"hostname"`
	DataDir  string `toml:"data_dir"`
	// ShutdownGrace bounds a graceful stop: SMTP sessions and deliveries in
	// flight finish within it (and journal their outcomes), then the rest
	// are cut.
	ShutdownGrace Duration          `toml:"shutdown_grace"`
	Submission    SubmissionConfig  `toml:"submission"`
	Submissions   SubmissionsConfig `toml:"submissions"`
	TLS           TLSConfig         `toml:"tls"`
	Auth          AuthConfig        `toml:"auth"`
	Limits        LimitsConfig      `toml:"limits"`
	Relay         RelayConfig       `toml:"relay"`
	Queue         QueueConfig       `toml:"queue"`
	Journal       JournalConfig     `toml:"journal"`
	Sendmail      SendmailConfig    `toml:"sendmail"`
	HTTP          HTTPConfig        `toml:"http"`
	Webhooks      []WebhookConfig   `toml:"webhooks"`
	Policies      PoliciesConfig    `toml:"policies"`
	Admin         AdminConfig       `toml:"admin"`
	Log           LogConfig         `toml:"log"`
	Cluster       ClusterConfig     `toml:"cluster"`
}

// ClusterConfig joins several nodes into one cluster (docs/SCALING.md).
// Without etcd endpoints the node runs alone and no cluster code runs.
type ClusterConfig struct {
	Name      string   `toml:"name"`      // unique; default: hostname
	Etcd      []string `toml:"etcd"`      // etcd endpoints; empty: a single node
	Advertise string   `toml:"advertise"` // host:port of this node's cluster endpoint (also bound)
	// LeaseTTL is how long a destination's connection lease lasts unless
	// renewed (every third of it); a grain that moves waits this long
	// before it grants new leases.
	LeaseTTL Duration `toml:"lease_ttl"`
}

type SubmissionConfig struct {
	Listen          []string `toml:"listen"`
	TrustedNetworks []string `toml:"trusted_networks"`
}

type SubmissionsConfig struct {
	Listen []string `toml:"listen"`
}

type TLSConfig struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

type AuthConfig struct {
	UsersFile              string `toml:"users_file"`
	AllowInsecureAuth      bool   `toml:"allow_insecure_auth"`
	RequireSenderOwnership bool   `toml:"require_sender_ownership"`
	// CacheTTL keeps a successful authentication (an HMAC of the password
	// under a per-process key) so that the client's next sessions skip
	// bcrypt; "0" turns it off.
	CacheTTL Duration `toml:"cache_ttl"`
}

type LimitsConfig struct {
	MaxMessageBytes      int64    `toml:"max_message_bytes"`
	MaxRecipients        int      `toml:"max_recipients"`
	MaxConnections       int      `toml:"max_connections"`
	MaxAuthFailuresPerIP int      `toml:"max_auth_failures_per_ip"`
	CommandTimeout       Duration `toml:"command_timeout"`
	DataTimeout          Duration `toml:"data_timeout"`
	// TLSHandshakeTimeout bounds a TLS handshake (STARTTLS or implicit).
	TLSHandshakeTimeout Duration `toml:"tls_handshake_timeout"`
	// BodyMemory caps the memory of all message bodies being received at
	// once; a session that would exceed it waits briefly, then gets 452.
	BodyMemory ByteSize `toml:"body_memory"`
	// MemoryLimit is the Go runtime's soft memory limit for the whole
	// process (0: none, or GOMEMLIMIT from the environment).
	MemoryLimit ByteSize `toml:"memory_limit"`
}

type RelayConfig struct {
	Mode                    string   `toml:"mode"`
	Smarthost               string   `toml:"smarthost"`
	Username                string   `toml:"username"`
	Password                string   `toml:"password"`
	DNSServers              []string `toml:"dns_servers"`
	MXPort                  int      `toml:"mx_port"`
	TLS                     string   `toml:"tls"`
	TLSFallbackPlaintext    bool     `toml:"tls_fallback_plaintext"`
	TLSVerify               bool     `toml:"tls_verify"`
	TLSCAFile               string   `toml:"tls_ca_file"`
	MTASTS                  bool     `toml:"mta_sts"`
	MTASTSPort              int      `toml:"mta_sts_port"`
	DNSSEC                  bool     `toml:"dnssec"`
	ConnectTimeout          Duration `toml:"connect_timeout"`
	CommandTimeout          Duration `toml:"command_timeout"`
	DataTimeout             Duration `toml:"data_timeout"`
	IdleTimeout             Duration `toml:"idle_timeout"`
	MaxConnectionsPerDomain int      `toml:"max_connections_per_domain"`
	// Destinations shape the traffic to one domain ("*": the default).
	Destinations []DestinationConfig `toml:"destinations"`
}

// DestinationConfig is one [[relay.destinations]] entry.
type DestinationConfig struct {
	Domain         string `toml:"domain"`
	MaxConnections int    `toml:"max_connections"` // overrides max_connections_per_domain
	Rate           string `toml:"rate"`            // "100/m": messages per period (s, m, h)
	// MaxMessagesPerConnection closes a connection after this many
	// messages; 0: no limit.
	MaxMessagesPerConnection int `toml:"max_messages_per_connection"`
}

// parseRate reads "100/m" into messages per second.
func parseRate(s string) (float64, bool) {
	n, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
	if err != nil || v <= 0 {
		return 0, false
	}
	switch strings.TrimSpace(unit) {
	case "s":
		return v, true
	case "m":
		return v / 60, true
	case "h":
		return v / 3600, true
	}
	return 0, false
}

type QueueConfig struct {
	Retry  []Duration `toml:"retry"`
	MaxAge Duration   `toml:"max_age"`
	// DelayWarning: one delay warning DSN to the sender of an envelope
	// still deferred this long after arrival; "0" turns it off.
	DelayWarning Duration `toml:"delay_warning"`
	// KeepBodies keeps message bodies after delivery, so that replay can
	// show what was relayed; false deletes them as Postfix does.
	KeepBodies bool `toml:"keep_bodies"`
}

// WebhookConfig is one [[webhooks]] entry.
type WebhookConfig struct {
	URL    string   `toml:"url"`
	Events []string `toml:"events"` // default: Delivered, Bounced, Deferred, Expired
	Secret string   `toml:"secret"`
}

// HTTPConfig is the [http] section: the HTTP submission edge.
type HTTPConfig struct {
	Listen string `toml:"listen"` // "" turns it off
	// TLS serves it with the [tls] certificate; required beyond loopback.
	TLS bool `toml:"tls"`
}

// SendmailConfig is the [sendmail] section.
type SendmailConfig struct {
	// Group may write into the maildrop directory (mode 1730, like
	// Postfix's postdrop group); empty: only the server's user may.
	Group string `toml:"group"`
}

// JournalConfig is the [journal] section.
type JournalConfig struct {
	// MinFree is kept free on the journal's filesystem for the events of
	// delivering what was already accepted: below it MAIL FROM (and the end
	// of DATA when the message would not fit) answers 452 4.3.1, like
	// Postfix's queue_minfree.
	MinFree ByteSize `toml:"min_free"`
	// Retention is how long the history of an envelope stays in the hot
	// journal after it reached a final state; "0" keeps it for ever.
	Retention Duration `toml:"retention"`
	// Archive keeps what leaves the hot journal in compressed archive
	// segments under <data_dir>/archive; false drops it.
	Archive bool `toml:"archive"`
	// CommitWindow: under load (the last group commit carried more than
	// one write), the journal waits up to this long for more writes
	// before the next fsync; "0" commits at once.
	CommitWindow Duration `toml:"commit_window"`
}

// ByteSize is a TOML size: an integer number of bytes or a string like
// "256MiB", "1GiB", "500MB", "64KiB".
type ByteSize struct {
	Bytes int64
	bad   string
}

var sizeUnits = map[string]int64{"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 * 1000,
	"mib": 1 << 20, "g": 1 << 30, "gb": 1000 * 1000 * 1000, "gib": 1 << 30}

var sizeRE = regexp.MustCompile(`^\s*([0-9]+)\s*([A-Za-z]*)\s*$`)

// ParseByteSize reads "256MiB" and the like.
func ParseByteSize(s string) (int64, bool) {
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	unit, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, false
	}
	var n int64
	if _, err := fmt.Sscan(m[1], &n); err != nil || n > (1<<62)/unit {
		return 0, false
	}
	return n * unit, true
}

func (b *ByteSize) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			b.bad = fmt.Sprint(x)
			return nil
		}
		b.Bytes, b.bad = x, ""
	case string:
		n, ok := ParseByteSize(x)
		if !ok {
			b.bad = x
			return nil
		}
		b.Bytes, b.bad = n, ""
	default:
		b.bad = fmt.Sprint(v)
	}
	return nil
}

func (b ByteSize) check(key string) error {
	if b.bad != "" {
		return configErrorf("%s: %q is not a size like \"256MiB\" or a number of bytes", key, b.bad)
	}
	return nil
}

func (b ByteSize) MarshalText() ([]byte, error) {
	for _, u := range []struct {
		n    int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if b.Bytes >= u.n && b.Bytes%u.n == 0 {
			return []byte(fmt.Sprintf("%d%s", b.Bytes/u.n, u.name)), nil
		}
	}
	return []byte(fmt.Sprint(b.Bytes)), nil
}

type ForwardRule struct {
	Pattern string `toml:"pattern"`
	Replace string `toml:"replace"`
}

type DKIMKey struct {
	Domain   string `toml:"domain"`
	Selector string `toml:"selector"`
	KeyFile  string `toml:"key_file"`
}

type PoliciesConfig struct {
	AddDateHeader      bool `toml:"add_date_header"`
	AddMessageIDHeader bool `toml:"add_message_id_header"`
	AddReceivedHeader  bool `toml:"add_received_header"`
	// ReceivedAuthUser names the AUTH login in the Received header
	// ("(authenticated sender: LOGIN)"); off by default, as Postfix's
	// smtpd_sasl_authenticated_header = no: it leaks login names.
	ReceivedAuthUser bool `toml:"received_auth_user"`
	// Postmaster receives mail to the bare "postmaster" recipient (RFC 5321
	// §4.5.1); default postmaster@<hostname>.
	Postmaster   string        `toml:"postmaster"`
	Split        string        `toml:"split"`
	Forward      []ForwardRule `toml:"forward"`
	SpamAssassin string        `toml:"spamassassin"`
	SpamAction   string        `toml:"spamassassin_action"`
	SpamTimeout  Duration      `toml:"spamassassin_timeout"`
	DKIM         []DKIMKey     `toml:"dkim"`
}

type AdminConfig struct {
	Listen string `toml:"listen"`
	// Token is the admin API's bearer token; empty: the one generated into
	// <data_dir>/admin-token on the first start.
	Token string `toml:"token"`
	// MetricsPublic leaves /metrics, /healthz and /readyz open without the
	// token (a Prometheus scraper needs no secret).
	MetricsPublic bool `toml:"metrics_public"`
	// Pprof serves Go's profiler at /debug/pprof/ on the admin listener
	// (behind the token, like every admin request).
	Pprof bool `toml:"pprof"`
}

type LogConfig struct {
	Format string `toml:"format"` // "console" or "json"
	Level  string `toml:"level"`  // debug, info, warn, error
}

// Duration is a TOML string like "1m30s". A bad value is kept and reported
// by Validate, which knows the key's name (the TOML decoder does not say it).
type Duration struct {
	time.Duration
	bad string
}

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		d.bad = string(b)
		return nil
	}
	d.Duration, d.bad = v, ""
	return nil
}

func (d Duration) check(key string) error {
	if d.bad != "" {
		return configErrorf("%s: %q is not a duration like \"30s\" or \"5m\"", key, d.bad)
	}
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Defaults returns the embedded defaults (docs/CONFIG.md, checked by a test).
func Defaults() Config {
	dur := func(s string) Duration { v, _ := time.ParseDuration(s); return Duration{Duration: v} }
	var retry []Duration
	for _, s := range []string{"1m", "5m", "15m", "30m", "1h", "2h", "4h"} {
		retry = append(retry, dur(s))
	}
	return Config{
		DataDir:       "./mta-data",
		ShutdownGrace: dur("30s"),
		Submission:    SubmissionConfig{Listen: []string{"127.0.0.1:2587"}, TrustedNetworks: []string{}},
		Submissions:   SubmissionsConfig{Listen: []string{"127.0.0.1:2465"}},
		Auth:          AuthConfig{RequireSenderOwnership: true, CacheTTL: dur("10m")},
		Limits: LimitsConfig{MaxMessageBytes: 26214400, MaxRecipients: 100, MaxConnections: 1000, MaxAuthFailuresPerIP: 10,
			CommandTimeout: dur("5m"), DataTimeout: dur("10m"), TLSHandshakeTimeout: dur("10s"), BodyMemory: ByteSize{Bytes: 256 << 20}},
		Relay: RelayConfig{Mode: "mx", MXPort: 25, TLS: "opportunistic", DNSServers: []string{}, Destinations: []DestinationConfig{}, MTASTS: true, MTASTSPort: 443,
			ConnectTimeout: dur("20s"), CommandTimeout: dur("10s"), DataTimeout: dur("20s"), IdleTimeout: dur("30s"),
			MaxConnectionsPerDomain: 20},
		Queue:   QueueConfig{Retry: retry, MaxAge: dur("120h"), DelayWarning: dur("4h"), KeepBodies: true},
		Journal: JournalConfig{MinFree: ByteSize{Bytes: 256 << 20}, Retention: dur("720h"), Archive: true, CommitWindow: dur("3ms")},
		Policies: PoliciesConfig{AddDateHeader: true, AddMessageIDHeader: true, AddReceivedHeader: true, Split: "domain", Forward: []ForwardRule{}, DKIM: []DKIMKey{},
			SpamAction: "tag", SpamTimeout: dur("10s")},
		Admin: AdminConfig{Listen: "127.0.0.1:8025", MetricsPublic: true},
		HTTP:  HTTPConfig{Listen: "127.0.0.1:2580"}, Webhooks: []WebhookConfig{},
		Log:     LogConfig{Format: "console", Level: "info"},
		Cluster: ClusterConfig{Etcd: []string{}, LeaseTTL: dur("10s")},
	}
}

// ConfigError is a configuration problem: exit code 2.
type ConfigError struct{ msg string }

func (e *ConfigError) Error() string { return e.msg }

func configErrorf(format string, args ...any) error {
	return &ConfigError{msg: fmt.Sprintf(format, args...)}
}

// LoadConfig reads path over the defaults ("" means defaults only) and
// validates the result.
func LoadConfig(path string) (Config, error) {
	c := Defaults()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return c, configErrorf("cannot read config file: %v", err)
		}
		md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
		if err != nil {
			// BurntSushi/toml names the line and the last key read.
			return c, configErrorf("%s: %s", path, strings.TrimPrefix(err.Error(), "toml: "))
		}
		if und := md.Undecoded(); len(und) > 0 {
			return c, configErrorf("%s: unknown key %q", path, und[0].String())
		}
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		c.Hostname = h
	}
	if c.Policies.Postmaster == "" {
		c.Policies.Postmaster = "postmaster@" + c.Hostname
	}
	if c.Cluster.Name == "" {
		c.Cluster.Name = c.Hostname
	}
	return c, c.Validate()
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// Validate checks every value and names the first bad key.
func (c *Config) Validate() error {
	for key, d := range map[string]Duration{
		"shutdown_grace": c.ShutdownGrace, "relay.connect_timeout": c.Relay.ConnectTimeout, "relay.command_timeout": c.Relay.CommandTimeout,
		"policies.spamassassin_timeout": c.Policies.SpamTimeout, "relay.data_timeout": c.Relay.DataTimeout, "limits.command_timeout": c.Limits.CommandTimeout, "limits.data_timeout": c.Limits.DataTimeout, "limits.tls_handshake_timeout": c.Limits.TLSHandshakeTimeout, "relay.idle_timeout": c.Relay.IdleTimeout, "queue.max_age": c.Queue.MaxAge, "queue.delay_warning": c.Queue.DelayWarning, "journal.retention": c.Journal.Retention, "journal.commit_window": c.Journal.CommitWindow,
	} {
		if err := d.check(key); err != nil {
			return err
		}
	}
	if err := c.Journal.MinFree.check("journal.min_free"); err != nil {
		return err
	}
	if err := c.Cluster.validate(); err != nil {
		return err
	}
	if err := c.Limits.BodyMemory.check("limits.body_memory"); err != nil {
		return err
	}
	if w := c.Journal.CommitWindow.Duration; w < 0 || w > 100*time.Millisecond {
		return configErrorf("journal.commit_window %s must be between 0 and 100ms", w)
	}
	if c.Auth.CacheTTL.Duration < 0 {
		return configErrorf("auth.cache_ttl must not be negative (\"0\" turns the cache off)")
	}
	if c.Journal.Retention.Duration < 0 {
		return configErrorf("journal.retention must not be negative (\"0\" keeps everything)")
	}
	if err := c.Limits.MemoryLimit.check("limits.memory_limit"); err != nil {
		return err
	}
	if m := c.Limits.MemoryLimit.Bytes; m != 0 && m < 64<<20 {
		return configErrorf("limits.memory_limit must be 0 (none) or at least 64MiB")
	}
	if c.Limits.BodyMemory.Bytes < 1<<20 {
		return configErrorf("limits.body_memory must be at least 1MiB (one message being received needs up to that)")
	}
	for _, d := range c.Queue.Retry {
		if err := d.check("queue.retry"); err != nil {
			return err
		}
	}
	if !hostnameRE.MatchString(c.Hostname) {
		return configErrorf("hostname %q is not a valid host name", c.Hostname)
	}
	if c.DataDir == "" {
		return configErrorf("data_dir must not be empty")
	}
	if at := strings.LastIndexByte(c.Policies.Postmaster, '@'); at <= 0 || at == len(c.Policies.Postmaster)-1 {
		return configErrorf("policies.postmaster %q is not an address like postmaster@example.com", c.Policies.Postmaster)
	}
	for _, a := range c.Submission.Listen {
		if err := checkListen(a); err != nil {
			return configErrorf("submission.listen: %v", err)
		}
	}
	for _, a := range c.Submissions.Listen {
		if err := checkListen(a); err != nil {
			return configErrorf("submissions.listen: %v", err)
		}
	}
	if _, err := c.TrustedNetworks(); err != nil {
		return err
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		return configErrorf("tls.cert and tls.key must be given together")
	}
	if c.Limits.MaxMessageBytes <= 0 {
		return configErrorf("limits.max_message_bytes must be positive")
	}
	if c.Limits.MaxRecipients <= 0 {
		return configErrorf("limits.max_recipients must be positive")
	}
	if c.Limits.MaxConnections <= 0 {
		return configErrorf("limits.max_connections must be positive")
	}
	switch c.Relay.Mode {
	case "mx":
	case "static":
		if err := checkHostPort(c.Relay.Smarthost); err != nil {
			return configErrorf("relay.smarthost: %v (required when relay.mode is \"static\")", err)
		}
	default:
		return configErrorf("relay.mode %q must be \"mx\" or \"static\"", c.Relay.Mode)
	}
	for i, d := range c.Relay.Destinations {
		if d.Domain == "" {
			return configErrorf("relay.destinations[%d].domain is required (\"*\" for the default)", i)
		}
		if d.MaxMessagesPerConnection < 0 {
			return configErrorf("relay.destinations[%d].max_messages_per_connection must not be negative", i)
		}
		if d.MaxConnections < 0 {
			return configErrorf("relay.destinations[%d].max_connections must not be negative", i)
		}
		if _, ok := parseRate(d.Rate); d.Rate != "" && !ok {
			return configErrorf("relay.destinations[%d].rate %q is not like \"100/m\" (per s, m or h)", i, d.Rate)
		}
	}
	for _, a := range c.Relay.DNSServers {
		if err := checkHostPort(a); err != nil {
			return configErrorf("relay.dns_servers: %v", err)
		}
	}
	switch c.Relay.TLS {
	case "opportunistic", "required", "none":
	default:
		return configErrorf("relay.tls %q must be \"opportunistic\", \"required\" or \"none\"", c.Relay.TLS)
	}
	if c.Relay.MTASTSPort <= 0 || c.Relay.MTASTSPort > 65535 {
		return configErrorf("relay.mta_sts_port %d is not a port", c.Relay.MTASTSPort)
	}
	if c.Relay.MXPort <= 0 || c.Relay.MXPort > 65535 {
		return configErrorf("relay.mx_port %d is not a port", c.Relay.MXPort)
	}
	if len(c.Queue.Retry) == 0 {
		return configErrorf("queue.retry must list at least one interval")
	}
	if err := c.Journal.MinFree.check("journal.min_free"); err != nil {
		return err
	}
	for _, d := range c.Queue.Retry {
		if d.Duration <= 0 {
			return configErrorf("queue.retry intervals must be positive")
		}
	}
	switch c.Policies.Split {
	case "domain", "recipient", "none":
	default:
		return configErrorf("policies.split %q must be \"domain\", \"recipient\" or \"none\"", c.Policies.Split)
	}
	if c.Policies.SpamAssassin != "" {
		if err := checkHostPort(c.Policies.SpamAssassin); err != nil {
			return configErrorf("policies.spamassassin: %v", err)
		}
	}
	switch c.Policies.SpamAction {
	case "tag", "reject":
	default:
		return configErrorf("policies.spamassassin_action %q must be \"tag\" or \"reject\"", c.Policies.SpamAction)
	}
	if _, err := c.ForwardRules(); err != nil {
		return err
	}
	for i, k := range c.Policies.DKIM {
		if k.Domain == "" || k.Selector == "" || k.KeyFile == "" {
			return configErrorf("policies.dkim[%d]: domain, selector and key_file are all required", i)
		}
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if !strings.HasPrefix(w.URL, "http://") && !strings.HasPrefix(w.URL, "https://") {
			return configErrorf("webhooks[%d].url %q must be an http:// or https:// URL", i, w.URL)
		}
		if w.Secret == "" {
			return configErrorf("webhooks[%d].secret must be set (it signs every request)", i)
		}
		if len(w.Events) == 0 {
			w.Events = []string{"Delivered", "Bounced", "Deferred", "Expired"}
		}
		for _, e := range w.Events {
			if !events.Known(events.Type(e)) {
				return configErrorf("webhooks[%d].events: %q is not an event type (Delivered, Bounced, Deferred, Expired, ...)", i, e)
			}
		}
	}
	if c.HTTP.Listen != "" {
		if err := checkListen(c.HTTP.Listen); err != nil {
			return configErrorf("http.listen: %v", err)
		}
		host, _, _ := net.SplitHostPort(c.HTTP.Listen)
		if ip := net.ParseIP(host); !c.HTTP.TLS && (ip == nil || !ip.IsLoopback()) && host != "localhost" {
			return configErrorf("http.listen %q is beyond loopback: set http.tls = true (credentials travel in every request)", c.HTTP.Listen)
		}
	}
	if c.Admin.Listen != "" {
		if err := checkListen(c.Admin.Listen); err != nil {
			return configErrorf("admin.listen: %v", err)
		}
	}
	switch c.Log.Format {
	case "console", "json":
	default:
		return configErrorf("log.format %q must be \"console\" or \"json\"", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return configErrorf("log.level %q must be debug, info, warn or error", c.Log.Level)
	}
	return nil
}

// checkHostPort checks a peer's host:port: a numeric port from 1 to 65535.
func checkHostPort(a string) error { return checkAddr(a, 1) }

// checkListen checks a listener's host:port: port 0 lets the system
// choose; an empty host listens on every address.
func checkListen(a string) error { return checkAddr(a, 0) }

func checkAddr(a string, minPort int) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not host:port", a)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return fmt.Errorf("%q: the port must be a number from %d to 65535", a, minPort)
	}
	return nil
}

// CheckFiles checks what Validate cannot from the values alone: that the
// files the config names exist and load (certificate and key, DKIM keys,
// the users file and its mode). serve and check-config both run it, so
// check-config fails on what serve would; it binds no port.
func (c *Config) CheckFiles() error {
	if c.TLS.Cert != "" {
		if _, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key); err != nil {
			return configErrorf("tls.cert and tls.key: %v", unwrapPathErr(err))
		}
	}
	if _, err := c.RelayRoots(); err != nil {
		return err
	}
	if _, err := c.DKIMKeys(); err != nil {
		return err
	}
	if _, err := smtpedge.ReadUsers(c.UsersFile()); err != nil {
		var me *smtpedge.ModeError
		if errors.As(err, &me) {
			return err
		}
		return configErrorf("auth.users_file: %v", err)
	}
	return nil
}

// RelayRoots are the roots the relay verifies certificates with: the
// system's, plus the certificates of relay.tls_ca_file.
func (c *Config) RelayRoots() (*x509.CertPool, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if c.Relay.TLSCAFile == "" {
		return roots, nil
	}
	pem, err := os.ReadFile(c.Relay.TLSCAFile)
	if err != nil {
		return nil, configErrorf("relay.tls_ca_file: %v", unwrapPathErr(err))
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, configErrorf("relay.tls_ca_file: %s holds no PEM certificate", c.Relay.TLSCAFile)
	}
	return roots, nil
}

// TrustedNetworks parses submission.trusted_networks.
func (c *Config) TrustedNetworks() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.Submission.TrustedNetworks {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, configErrorf("submission.trusted_networks: %q is not a CIDR", s)
		}
		out = append(out, p)
	}
	return out, nil
}

// ForwardRules compiles policies.forward.
func (c *Config) ForwardRules() ([]policy.ForwardRule, error) {
	var raw [][2]string
	for _, r := range c.Policies.Forward {
		raw = append(raw, [2]string{r.Pattern, r.Replace})
	}
	rules, err := policy.CompileForward(raw)
	if err != nil {
		return nil, configErrorf("%v", err)
	}
	return rules, nil
}

// DKIMKeys loads policies.dkim's keys (at start-up, before any privilege
// drop: key files may be root-only).
func (c *Config) DKIMKeys() ([]policy.DKIMKey, error) {
	var keys []policy.DKIMKey
	for i, k := range c.Policies.DKIM {
		key, err := policy.LoadDKIMKey(k.Domain, k.Selector, k.KeyFile)
		if err != nil {
			return nil, configErrorf("policies.dkim[%d]: %v", i, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// Paths derived from data_dir.
func (c *Config) JournalDir() string { return filepath.Join(c.DataDir, "journal") }

// ArchiveDir is where the journal's archive segments are kept.
func (c *Config) ArchiveDir() string { return filepath.Join(c.DataDir, "archive") }
func (c *Config) UsersFile() string {
	if c.Auth.UsersFile != "" {
		return c.Auth.UsersFile
	}
	return filepath.Join(c.DataDir, "users")
}
func (c *Config) CertFiles() (cert, key string, generated bool) {
	if c.TLS.Cert != "" {
		return c.TLS.Cert, c.TLS.Key, false
	}
	return filepath.Join(c.DataDir, "tls", "cert.pem"), filepath.Join(c.DataDir, "tls", "key.pem"), true
}

func durations(ds []Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Duration
	}
	return out
}

func (c ClusterConfig) validate() error {
	if err := c.LeaseTTL.check("cluster.lease_ttl"); err != nil {
		return err
	}
	if len(c.Etcd) == 0 {
		return nil
	}
	if c.LeaseTTL.Duration < time.Second {
		return configErrorf("cluster.lease_ttl must be at least 1s")
	}
	if !hostnameRE.MatchString(c.Name) || strings.Contains(c.Name, "@") {
		return configErrorf("cluster.name %q must be a host-name-like word, unique in the cluster", c.Name)
	}
	for i, e := range c.Etcd {
		if _, _, err := net.SplitHostPort(e); err != nil {
			return configErrorf("cluster.etcd[%d] %q is not host:port", i, e)
		}
	}
	if c.Advertise == "" {
		return configErrorf("cluster.advertise is required with cluster.etcd (this node's host:port for the other nodes)")
	}
	if _, p, err := net.SplitHostPort(c.Advertise); err != nil || p == "0" {
		return configErrorf("cluster.advertise %q is not host:port with a fixed port", c.Advertise)
	}
	return nil
}
