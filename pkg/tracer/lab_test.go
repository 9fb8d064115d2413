package tracer

// The tests make their namespaces, traffic and ground truth with
// internal/labnet; this file adapts it to the tracer's types and collects
// a tracer's events.

import (
	"slices"
	"sync"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
)

// labNamespace is n as the tracer names namespaces.
func labNamespace(n *labnet.NS) Namespace { return Namespace{Inode: n.Inode, Path: n.Path} }

// eventLog collects a tracer's events until its channel closes (done).
type eventLog struct {
	mu   sync.Mutex
	evs  []Event
	done chan struct{}
}

func collectEvents(tr Tracer) *eventLog {
	l := &eventLog{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ev := range tr.Events() {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *eventLog) snapshot() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

// waitFor polls until cond holds for the events so far, or timeout.
func (l *eventLog) waitFor(timeout time.Duration, cond func([]Event) bool) bool {
	return labnet.WaitFor(timeout, func() bool { return cond(l.snapshot()) })
}

// matching returns the events of netns ns that satisfy keep.
func (l *eventLog) matching(ns uint32, keep func(Event) bool) []Event {
	var out []Event
	for _, ev := range l.snapshot() {
		if ev.NetNS == ns && keep(ev) {
			out = append(out, ev)
		}
	}
	return out
}
