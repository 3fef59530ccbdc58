package main

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// account is the user and group to run as after binding the listeners.
type account struct {
	uid, gid   int
	user, grup string
}

// lookupAccount resolves --user and --group (the group defaults to the
// user's primary group).
func lookupAccount(userName, groupName string) (*account, error) {
	if userName == "" {
		if groupName != "" {
			return nil, usageError{fmt.Errorf("--group needs --user")}
		}
		return nil, nil
	}
	u, err := user.Lookup(userName)
	if err != nil {
		return nil, usageError{fmt.Errorf("--user %s: no such user", userName)}
	}
	a := &account{user: userName}
	a.uid, _ = strconv.Atoi(u.Uid)
	a.gid, _ = strconv.Atoi(u.Gid)
	a.grup = u.Gid
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			return nil, usageError{fmt.Errorf("--group %s: no such group", groupName)}
		}
		a.gid, _ = strconv.Atoi(g.Gid)
		a.grup = groupName
	}
	if os.Geteuid() != 0 && os.Geteuid() != a.uid {
		return nil, fmt.Errorf("--user %s needs root to switch to", userName)
	}
	return a, nil
}

// handOver gives the data directory (created by root) to the account.
func (a *account) handOver(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, a.uid, a.gid); err != nil {
			return fmt.Errorf("hand %s to %s: %w", p, a.user, err)
		}
		return nil
	})
}

// drop switches every thread to the account (Go's syscall.Setuid and
// friends apply to all threads on Linux) and checks that root is gone.
func (a *account) drop() error {
	if err := syscall.Setgroups([]int{a.gid}); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(a.gid); err != nil {
		return fmt.Errorf("setgid %d: %w", a.gid, err)
	}
	if err := syscall.Setuid(a.uid); err != nil {
		return fmt.Errorf("setuid %d: %w", a.uid, err)
	}
	if os.Getuid() != a.uid || os.Geteuid() != a.uid || os.Getgid() != a.gid || (a.uid != 0 && syscall.Setuid(0) == nil) {
		return fmt.Errorf("still privileged after switching to %s; refusing to run", a.user)
	}
	return nil
}
