package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/term"
)

// progress draws "label: n/total (p%)" on stderr when it is a terminal, at
// most five times a second, and erases it when done. When stderr is not a
// terminal (piped, logged) it prints nothing.
type progress struct {
	w     io.Writer
	label string
	total uint64
	n     uint64
	last  time.Time
	shown bool
}

func newProgress(label string, total uint64) *progress {
	p := &progress{label: label, total: total}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		p.w = os.Stderr
	}
	return p
}

func (p *progress) add() {
	p.n++
	if p.w == nil || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.shown = true
	if p.total > 0 {
		fmt.Fprintf(p.w, "\r%s: %d/%d events (%d%%)", p.label, p.n, p.total, p.n*100/p.total)
	} else {
		fmt.Fprintf(p.w, "\r%s: %d events", p.label, p.n)
	}
}

func (p *progress) done() {
	if p.w != nil && p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
