package smtpedge

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
)

func TestNormalizeLineEndings(t *testing.T) {
	cases := map[string]string{
		"a\r\nb\r\n":               "a\r\nb\r\n",
		"a\nb\n":                   "a\r\nb\r\n",
		"a\rb":                     "a\r\nb\r\n",
		"smuggle\n.\r\nMAIL x\r\n": "smuggle\r\n.\r\nMAIL x\r\n",
		"x\r.\r\ny":                "x\r\n.\r\ny\r\n",
		"":                         "",
		"no newline":               "no newline\r\n",
	}
	for in, want := range cases {
		if got := string(NormalizeLineEndings([]byte(in))); got != want {
			t.Errorf("NormalizeLineEndings(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidAddress(t *testing.T) {
	for _, a := range []string{"a@b.test", "first.last+tag@sub.example.test", "x@[127.0.0.1]", "ü@例え.test"} {
		if !validAddress(a) {
			t.Errorf("%q rejected", a)
		}
	}
	for _, a := range []string{"", "plain", "@b.test", "a@", "a@b..test", "a@.b", "a b@c.test", "a@b.test."} {
		if validAddress(a) {
			t.Errorf("%q accepted", a)
		}
	}
}

func TestIdentityOwns(t *testing.T) {
	id := Identity{Name: "alice", Addresses: []string{"Alice@Example.test", "*@team.test"}}
	for addr, want := range map[string]bool{
		"alice@example.test": true, "bob@team.test": true, "bob@example.test": false, "x@evilteam.test": false, "x@sub.team.test": false,
	} {
		if got := id.Owns(addr); got != want {
			t.Errorf("Owns(%q) = %v", addr, got)
		}
	}
}

func TestUsersFileRoundTripAndAuth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	h, err := HashPassword("pw1", 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteUsers(path, []User{{Name: "bob", Hash: h, Addresses: []string{"bob@x.test", "*@y.test"}}}); err != nil {
		t.Fatal(err)
	}
	u, err := OpenUsersFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	id, err := u.Authenticate("bob", "pw1")
	if err != nil || id.Name != "bob" || len(id.Addresses) != 2 {
		t.Fatalf("authenticate: %+v %v", id, err)
	}
	if _, err := u.Authenticate("bob", "wrong"); err != ErrBadCredentials {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := u.Authenticate("nobody", "pw1"); err != ErrBadCredentials {
		t.Errorf("unknown user: %v", err)
	}
	if err := WriteUsers(path, []User{{Name: "a:b", Hash: h}}); err == nil {
		t.Error("name with ':' written")
	}
	missing, err := OpenUsersFile(filepath.Join(t.TempDir(), "none"), time.Hour)
	if err != nil {
		t.Fatalf("missing users file: %v", err)
	}
	if _, err := missing.Authenticate("bob", "pw1"); err != ErrBadCredentials {
		t.Errorf("empty user list authenticated: %v", err)
	}
}

func TestUsersFileBadLineNamesLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := WriteUsers(path, nil); err != nil {
		t.Fatal(err)
	}
	if err := journal.WriteFile(path, []byte("# comment\nbob:notahash:bob@x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadUsers(path)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("got %v", err)
	}
}

func TestLoginServer(t *testing.T) {
	var gotUser, gotPass string
	l := &loginServer{check: func(u, p string) error { gotUser, gotPass = u, p; return nil }}
	ch, done, err := l.Next(nil)
	if string(ch) != "Username:" || done || err != nil {
		t.Fatalf("step 1: %q %v %v", ch, done, err)
	}
	ch, done, _ = l.Next([]byte("alice"))
	if string(ch) != "Password:" || done {
		t.Fatalf("step 2: %q %v", ch, done)
	}
	if _, done, err = l.Next([]byte("secret")); !done || err != nil || gotUser != "alice" || gotPass != "secret" {
		t.Fatalf("step 3: %v %v %q %q", done, err, gotUser, gotPass)
	}
	// With an initial response the username comes with AUTH LOGIN.
	l = &loginServer{check: func(u, p string) error { gotUser = u; return nil }}
	if ch, _, _ := l.Next([]byte("carol")); string(ch) != "Password:" {
		t.Fatalf("initial response: %q", ch)
	}
	l.Next([]byte("pw"))
	if gotUser != "carol" {
		t.Errorf("user %q", gotUser)
	}
}

func TestNewIDSortsByTime(t *testing.T) {
	a := events.NewID()
	b := events.NewID()
	if len(a) != 20 || strings.ToUpper(a) != a || a[:8] > b[:8] {
		t.Errorf("ids %s %s", a, b)
	}
}
