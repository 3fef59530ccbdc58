package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// readyEnv names the file descriptor on which a daemon child reports
// "ok" or its error to the parent that is waiting for it.
const readyEnv = "LEDGERMAIL_READY_FD"

// daemonize re-executes mta in a new session with stdio on /dev/null and
// returns once the child reports that its listeners are bound and its
// pidfile written (nil), or why it failed.
func daemonize(args []string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var childArgs []string
	for _, a := range args {
		if a != "--daemon" && a != "--daemon=true" {
			childArgs = append(childArgs, a)
		}
	}
	cmd := exec.Command(self, childArgs...)
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ok" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if line == "" {
		return errors.New("the daemon exited before it was ready (see its log)")
	}
	return errors.New(line)
}

// readyNotifier reports readiness (or a start-up error) to a waiting
// daemon parent; without one it does nothing.
type readyNotifier struct{ f *os.File }

func newReadyNotifier() *readyNotifier {
	fd, err := strconv.Atoi(os.Getenv(readyEnv))
	if err != nil || fd < 3 {
		return &readyNotifier{}
	}
	os.Unsetenv(readyEnv)
	return &readyNotifier{f: os.NewFile(uintptr(fd), "ready")}
}

func (n *readyNotifier) ready() { n.send("ok") }

func (n *readyNotifier) failed(err error) { n.send(err.Error()) }

func (n *readyNotifier) send(s string) {
	if n.f == nil {
		return
	}
	fmt.Fprintln(n.f, s)
	n.f.Close()
	n.f = nil
}

// checkPidfile refuses to start when the pidfile names a live process.
func checkPidfile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil
	}
	if syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM) {
		return fmt.Errorf("already running as pid %d (pidfile %s)", pid, path)
	}
	return nil
}
