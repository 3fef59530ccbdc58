package smtpedge

import (
	"path/filepath"
	"testing"
	"time"
)

// A successful AUTH is remembered: the next one with the same password
// skips bcrypt; a wrong password, a changed password, an expired entry or
// a disabled cache always costs a bcrypt comparison.
func TestAuthCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	write := func(pw string) {
		h, err := HashPassword(pw, 4)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteUsers(path, []User{{Name: "bob", Hash: h, Addresses: []string{"bob@x.test"}}}); err != nil {
			t.Fatal(err)
		}
	}
	open := func(ttl time.Duration) (*UsersFile, *int) {
		u, err := OpenUsersFile(path, ttl)
		if err != nil {
			t.Fatal(err)
		}
		calls := new(int)
		inner := u.compare
		u.compare = func(h, p []byte) error { *calls++; return inner(h, p) }
		return u, calls
	}
	auth := func(u *UsersFile, pw string, ok bool) {
		t.Helper()
		id, err := u.Authenticate("bob", pw)
		if ok != (err == nil) || ok && (id.Name != "bob" || len(id.Addresses) != 1) {
			t.Fatalf("password %q: %+v, %v (want success %v)", pw, id, err, ok)
		}
	}
	write("pw1")
	u, calls := open(time.Hour)
	auth(u, "pw1", true)
	auth(u, "pw1", true)
	auth(u, "pw1", true)
	if *calls != 1 {
		t.Fatalf("%d bcrypt comparisons for three AUTHs with the cache on, want 1", *calls)
	}
	auth(u, "wrong", false)
	auth(u, "wrong", false)
	if *calls != 3 {
		t.Fatalf("wrong passwords: %d comparisons in all, want 3 (never cached)", *calls)
	}
	auth(u, "pw1", true) // still cached after the failures
	write("pw2")
	if err := u.Reload(); err != nil {
		t.Fatal(err)
	}
	auth(u, "pw1", false) // the old password no longer passes
	auth(u, "pw2", true)
	if *calls != 5 {
		t.Fatalf("after a password change: %d comparisons in all, want 5", *calls)
	}

	u, calls = open(time.Nanosecond) // every entry has expired when read
	auth(u, "pw2", true)
	auth(u, "pw2", true)
	if *calls != 2 {
		t.Fatalf("expired entries: %d comparisons, want 2", *calls)
	}
	u, calls = open(0)
	auth(u, "pw2", true)
	auth(u, "pw2", true)
	if *calls != 2 {
		t.Fatalf("cache off: %d comparisons, want 2", *calls)
	}
	if len(u.cache) != 0 {
		t.Fatalf("cache off but %d entries kept", len(u.cache))
	}
}
