package smtpedge

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ledgermail/ledgermail/journal"
)

// Identity is an authenticated user and the sender addresses it may use
// ("*@domain" allows a whole domain).
type Identity struct {
	Name      string
	Addresses []string
}

// Owns reports whether the identity may send as addr.
func (id Identity) Owns(addr string) bool {
	addr = strings.ToLower(addr)
	for _, a := range id.Addresses {
		a = strings.ToLower(a)
		if a == addr {
			return true
		}
		if strings.HasPrefix(a, "*@") && strings.HasSuffix(addr, a[1:]) {
			return true
		}
	}
	return false
}

// ErrBadCredentials is returned by Authenticate for a wrong name or password.
var ErrBadCredentials = errors.New("bad credentials")

// Authenticator verifies a username and password.
type Authenticator interface {
	Authenticate(username, password string) (Identity, error)
}

// User is one line of the users file: name:bcrypt-hash:addr1,addr2.
type User struct {
	Name      string
	Hash      string
	Addresses []string
}

// UsersFile is the default Authenticator: a bcrypt users file, re-read by
// Reload. It is safe for concurrent use.
type UsersFile struct {
	path  string
	mu    sync.RWMutex
	users map[string]User
	// dummy is checked for an unknown user, at the cost of the file's
	// hashes, so that a wrong name takes as long as a wrong password.
	dummy []byte

	// The cache of successful authentications (like Dovecot's auth
	// cache): per user, an HMAC of the password under a key drawn at
	// start (never the password), the hash it was checked against and
	// until when it stands. A wrong password is never cached and always
	// costs a bcrypt comparison; a changed hash (Reload) misses.
	cacheTTL time.Duration
	cacheKey [32]byte
	cacheMu  sync.Mutex
	cache    map[string]cachedAuth
	// compare is bcrypt.CompareHashAndPassword (tests count its calls).
	compare func(hash, password []byte) error
}

type cachedAuth struct {
	mac   [sha256.Size]byte
	hash  string
	until time.Time
}

// OpenUsersFile reads path; a missing file is an empty user list.
// Successful authentications are cached for cacheTTL (0: not at all), so
// that a client's next session skips the bcrypt comparison.
func OpenUsersFile(path string, cacheTTL time.Duration) (*UsersFile, error) {
	u := &UsersFile{path: path, cacheTTL: cacheTTL, cache: map[string]cachedAuth{}, compare: bcrypt.CompareHashAndPassword}
	if _, err := rand.Read(u.cacheKey[:]); err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	return u, u.Reload()
}

func (u *UsersFile) mac(username, password string) [sha256.Size]byte {
	h := hmac.New(sha256.New, u.cacheKey[:])
	h.Write([]byte(username))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// cached reports whether this user authenticated with this password
// against hash within the cache's TTL.
func (u *UsersFile) cached(username, password, hash string) bool {
	if u.cacheTTL <= 0 {
		return false
	}
	u.cacheMu.Lock()
	c, ok := u.cache[username]
	u.cacheMu.Unlock()
	if !ok || c.hash != hash || time.Now().After(c.until) {
		return false
	}
	m := u.mac(username, password)
	return hmac.Equal(m[:], c.mac[:])
}

func (u *UsersFile) remember(username, password, hash string) {
	if u.cacheTTL <= 0 {
		return
	}
	c := cachedAuth{mac: u.mac(username, password), hash: hash, until: time.Now().Add(u.cacheTTL)}
	u.cacheMu.Lock()
	u.cache[username] = c
	u.cacheMu.Unlock()
}

// Reload re-reads the file. A user whose hash changed (or who is gone)
// misses the cache from then on.
func (u *UsersFile) Reload() error {
	users, err := ReadUsers(u.path)
	if err != nil {
		return err
	}
	m := make(map[string]User, len(users))
	cost := 0
	for _, x := range users {
		m[x.Name] = x
		if c, err := bcrypt.Cost([]byte(x.Hash)); err == nil && c > cost {
			cost = c
		}
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	u.mu.RLock()
	dummy := u.dummy
	u.mu.RUnlock()
	if c, err := bcrypt.Cost(dummy); err != nil || c != cost {
		if dummy, err = bcrypt.GenerateFromPassword([]byte("ledgermail-dummy"), cost); err != nil {
			return fmt.Errorf("users file: %w", err)
		}
	}
	u.mu.Lock()
	u.users, u.dummy = m, dummy
	u.mu.Unlock()
	u.cacheMu.Lock()
	for name := range u.cache {
		if _, ok := m[name]; !ok {
			delete(u.cache, name)
		}
	}
	u.cacheMu.Unlock()
	return nil
}

// Authenticate checks the password against the user's bcrypt hash.
func (u *UsersFile) Authenticate(username, password string) (Identity, error) {
	u.mu.RLock()
	x, ok := u.users[username]
	dummy := u.dummy
	u.mu.RUnlock()
	compare := u.compare
	if compare == nil {
		compare = bcrypt.CompareHashAndPassword
	}
	if !ok {
		compare(dummy, []byte(password))
		return Identity{}, ErrBadCredentials
	}
	if !u.cached(username, password, x.Hash) {
		if compare([]byte(x.Hash), []byte(password)) != nil {
			return Identity{}, ErrBadCredentials
		}
		u.remember(username, password, x.Hash)
	}
	return Identity{Name: x.Name, Addresses: x.Addresses}, nil
}

// ModeError refuses a users file that group or others may read: it holds
// password hashes.
type ModeError struct {
	Path string
	Mode os.FileMode
}

func (e *ModeError) Error() string {
	return fmt.Sprintf("users file %s is readable by group or others (mode %04o): chmod 600 it", e.Path, e.Mode.Perm())
}

// ReadUsers parses a users file; a missing file has no users. A file that
// group or others may read is refused (*ModeError).
func ReadUsers(path string) ([]User, error) {
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, &ModeError{Path: path, Mode: st.Mode()}
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read users file: %w", err)
	}
	var out []User
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) < 2 || parts[0] == "" || !strings.HasPrefix(parts[1], "$2") {
			return nil, fmt.Errorf("users file %s line %d: want name:bcrypt-hash:addr1,addr2", path, n)
		}
		x := User{Name: parts[0], Hash: parts[1]}
		if len(parts) == 3 && parts[2] != "" {
			for _, a := range strings.Split(parts[2], ",") {
				if a = strings.TrimSpace(a); a != "" {
					x.Addresses = append(x.Addresses, a)
				}
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// WriteUsers replaces the users file atomically (mode 0600).
func WriteUsers(path string, users []User) error {
	sort.Slice(users, func(i, j int) bool { return users[i].Name < users[j].Name })
	var b strings.Builder
	for _, x := range users {
		if strings.ContainsAny(x.Name, ":\n") {
			return fmt.Errorf("user name %q may not contain ':' or a newline", x.Name)
		}
		fmt.Fprintf(&b, "%s:%s:%s\n", x.Name, x.Hash, strings.Join(x.Addresses, ","))
	}
	return journal.WriteFile(path, []byte(b.String()), 0o600)
}

// HashPassword returns a bcrypt hash of password at the given cost
// (bcrypt.DefaultCost when 0).
func HashPassword(password string, cost int) (string, error) {
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}
