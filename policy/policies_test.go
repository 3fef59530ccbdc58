package policy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/ledgermail/ledgermail/events"
)

func TestForward(t *testing.T) {
	rules, err := CompileForward([][2]string{
		{`^postmaster@(.*)$`, "admin@$1"},
		{`@old\.test$`, "@new.test"},
		{`^admin@`, "never@applied"}, // first match wins: not chained
	})
	if err != nil {
		t.Fatal(err)
	}
	got := Forward(rules, []string{"postmaster@a.test", "bob@old.test", "carol@other.test", "bob@new.test"})
	if fmt.Sprint(got) != "[admin@a.test bob@new.test carol@other.test]" {
		t.Fatalf("got %v", got)
	}
	if _, err := CompileForward([][2]string{{"(", "x"}}); err == nil || !strings.Contains(err.Error(), "policies.forward[0].pattern") {
		t.Fatalf("bad pattern: %v", err)
	}
}

// Each testdata message gets the header policies without its bytes being
// touched, and a DKIM signature that go-msgauth's verifier accepts.
func TestPoliciesOnRealMessages(t *testing.T) {
	keys := map[string]DKIMKey{}
	txt := map[string]string{}
	for _, kind := range []string{"rsa", "ed25519"} {
		pemBytes, record, err := GenerateDKIMKey(kind)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), kind+".pem")
		os.WriteFile(path, pemBytes, 0o600)
		k, err := LoadDKIMKey("example.test", "sel-"+kind, path)
		if err != nil {
			t.Fatal(err)
		}
		keys[kind] = k
		txt["sel-"+kind+"._domainkey.example.test"] = record
	}
	files, _ := filepath.Glob("testdata/*.eml")
	if len(files) < 4 {
		t.Fatalf("testdata has %d messages", len(files))
	}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for kind, key := range keys {
			t.Run(filepath.Base(f)+"/"+kind, func(t *testing.T) {
				in := Input{ID: "ID1", Hostname: "mta.test", Arrived: time.Now(), Header: body, Body: readerOf(body),
					Received: events.Received{Sender: "alice@Example.test", Recipients: []string{"bob@dest.test"}, Helo: "c.test", ClientAddr: "127.0.0.1:1"}}
				pa, err := Apply(Options{AddDate: true, AddMessageID: true, AddReceived: true, DKIM: []DKIMKey{key}}, in)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(pa.Prepend, "DKIM-Signature:") || !strings.Contains(pa.Prepend, "d=example.test") {
					t.Fatalf("no DKIM signature first:\n%s", pa.Prepend)
				}
				if strings.Count(pa.Prepend, "\nReceived: ") != 1 || strings.Count(pa.Prepend, "\nDate: ") != 1 || strings.Count(pa.Prepend, "\nMessage-ID: ") != 1 {
					t.Fatalf("prepend:\n%s", pa.Prepend)
				}
				relayed := append([]byte(pa.Prepend), body...)
				vs, err := dkim.VerifyWithOptions(bytes.NewReader(relayed), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
					if r, ok := txt[name]; ok {
						return []string{r}, nil
					}
					return nil, fmt.Errorf("no TXT for %s", name)
				}})
				if err != nil || len(vs) != 1 || vs[0].Err != nil {
					t.Fatalf("verify: %v %+v", err, vs)
				}
				// A changed body breaks the signature.
				tampered := bytes.Replace(relayed, []byte("part"), []byte("PART"), 1)
				tampered = bytes.Replace(tampered, []byte("body"), []byte("BODY"), 1)
				tampered = bytes.Replace(tampered, []byte("line"), []byte("LINE"), 1)
				vs, _ = dkim.VerifyWithOptions(bytes.NewReader(tampered), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) { return []string{txt[name]}, nil }})
				if len(vs) == 1 && vs[0].Err == nil {
					t.Fatal("tampered message still verifies")
				}
			})
		}
	}
}

func TestNoDKIMKeyForOtherDomainsAndScanHeaders(t *testing.T) {
	pemBytes, _, _ := GenerateDKIMKey("ed25519")
	path := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(path, pemBytes, 0o600)
	k, _ := LoadDKIMKey("example.test", "s", path)
	pa, err := Apply(Options{DKIM: []DKIMKey{k}}, Input{Header: []byte("Subject: x\r\n\r\ny\r\n"), Body: readerOf([]byte("Subject: x\r\n\r\ny\r\n")),
		Received: events.Received{Sender: "bob@elsewhere.test", ScanHeaders: "X-Spam-Status: No, score=0.1\r\n"}})
	if err != nil || strings.Contains(pa.Prepend, "DKIM") || pa.Prepend != "X-Spam-Status: No, score=0.1\r\n" {
		t.Fatalf("%q %v", pa.Prepend, err)
	}
	if _, err := LoadDKIMKey("x.test", "s", filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Error("missing key file loaded")
	}
	if _, _, err := GenerateDKIMKey("dsa"); err == nil {
		t.Error("dsa accepted")
	}
}

// DKIM signs with the key of the From: header's domain (what the edge
// checked the user owns), not the envelope sender's.
func TestDKIMKeyFollowsHeaderFrom(t *testing.T) {
	pemBytes, _, _ := GenerateDKIMKey("ed25519")
	path := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(path, pemBytes, 0o600)
	k, _ := LoadDKIMKey("corp.test", "s", path)
	sign := func(envelope, from string) bool {
		pa, err := Apply(Options{DKIM: []DKIMKey{k}}, Input{Header: []byte("From: " + from + "\r\nSubject: x\r\n\r\ny\r\n"), Body: readerOf([]byte("From: " + from + "\r\nSubject: x\r\n\r\ny\r\n")),
			Received: events.Received{Sender: envelope}})
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(pa.Prepend, "DKIM-Signature:")
	}
	if !sign("bounce@other.test", "Alice <alice@corp.test>") {
		t.Error("From: corp.test not signed with corp.test's key")
	}
	if sign("alice@corp.test", "ceo@other.test") {
		t.Error("From: other.test signed with corp.test's key")
	}
}
