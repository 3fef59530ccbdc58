package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsMatchSpec(t *testing.T) {
	c, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "./mta-data" || c.Submission.Listen[0] != "127.0.0.1:2587" || c.Submissions.Listen[0] != "127.0.0.1:2465" ||
		c.Admin.Listen != "127.0.0.1:8025" || c.Relay.Mode != "mx" || c.Relay.MXPort != 25 || c.Relay.TLS != "opportunistic" ||
		c.Limits.MaxMessageBytes != 26214400 || c.Limits.MaxRecipients != 100 || c.Limits.MaxConnections != 1000 ||
		c.Limits.MaxAuthFailuresPerIP != 10 || c.Queue.MaxAge.Duration != 120*time.Hour || len(c.Queue.Retry) != 7 ||
		c.Queue.Retry[0].Duration != time.Minute || c.Policies.Split != "domain" || !c.Auth.RequireSenderOwnership ||
		c.Journal.MinFree.Bytes != 256<<20 || c.ShutdownGrace.Duration != 30*time.Second || c.Queue.DelayWarning.Duration != 4*time.Hour ||
		c.Relay.ConnectTimeout.Duration != 20*time.Second || c.Relay.IdleTimeout.Duration != 30*time.Second || c.Hostname == "" ||
		c.Limits.MemoryLimit.Bytes != 0 || c.Limits.BodyMemory.Bytes != 256<<20 ||
		len(c.Cluster.Etcd) != 0 || c.Cluster.Name != c.Hostname || c.Cluster.Advertise != "" || c.Cluster.LeaseTTL.Duration != 10*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	if c.UsersFile() != filepath.Join("./mta-data", "users") {
		t.Errorf("users file %s", c.UsersFile())
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		"[queue]\nretry = [\"1m\", \"often\"]\n":                              "queue.retry",
		"[queue]\nmax_age = \"-1h\"\n":                                        "queue.max_age",
		"[submission]\ntrusted_networks = [\"10.0.0.0/33\"]\n":                "submission.trusted_networks",
		"[tls]\ncert = \"/x.pem\"\n":                                          "tls.cert and tls.key",
		"[policies]\nsplit = \"sender\"\n":                                    "policies.split",
		"[[policies.forward]]\npattern = \"(\"\nreplace = \"x\"\n":            "policies.forward[0].pattern",
		"[[policies.dkim]]\ndomain = \"x.test\"\n":                            "policies.dkim[0]",
		"[policies]\nspamassassin_action = \"quarantine\"\n":                  "policies.spamassassin_action",
		"[log]\nformat = \"xml\"\n":                                           "log.format",
		"hostname = \"bad host\"\n":                                           "hostname",
		"[admin]\nlisten = \"8025\"\n":                                        "admin.listen",
		"[relay]\nmx_port = 70000\n":                                          "relay.mx_port",
		"[limits]\nmax_recipients = 0\n":                                      "limits.max_recipients",
		"[relay]\ntls = \"sometimes\"\n":                                      "relay.tls",
		"[relay]\ndns_servers = [\"8.8.8.8\"]\n":                              "relay.dns_servers",
		"[unknown_section]\nx = 1\n":                                          "unknown key",
		"[journal]\nmin_free = \"lots\"\n":                                    "journal.min_free",
		"[journal]\nmin_free = -5\n":                                          "journal.min_free",
		"[cluster]\netcd = [\"127.0.0.1:2379\"]\n":                            "cluster.advertise",
		"[cluster]\netcd = [\"localhost\"]\nadvertise = \"127.0.0.1:7000\"\n": "cluster.etcd[0]",
		"[cluster]\nlease_ttl = \"soon\"\n":                                   "cluster.lease_ttl",
		"[limits]\nmemory_limit = \"lots\"\n":                                 "limits.memory_limit",
		"[limits]\nmemory_limit = \"1MiB\"\n":                                 "limits.memory_limit",
	} {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(body), 0o644)
		_, err := LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to name %q", body, err, want)
		}
		if _, ok := err.(*ConfigError); !ok {
			t.Errorf("%q: %T is not a ConfigError (exit 2)", body, err)
		}
	}
}

func TestByteSizes(t *testing.T) {
	for in, want := range map[string]int64{"256MiB": 256 << 20, "1GiB": 1 << 30, "500MB": 500e6, "64KiB": 64 << 10, "1024": 1024, "0": 0} {
		if got, ok := ParseByteSize(in); !ok || got != want {
			t.Errorf("%q = %d, %v; want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "MiB", "1 parsec", "-1", "1.5GiB"} {
		if _, ok := ParseByteSize(in); ok {
			t.Errorf("%q parsed", in)
		}
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("[journal]\nmin_free = 1048576\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil || c.Journal.MinFree.Bytes != 1<<20 {
		t.Fatalf("integer min_free: %v %+v", err, c.Journal)
	}
}
