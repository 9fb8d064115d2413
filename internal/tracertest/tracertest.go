// Package tracertest adapts internal/labnet, which makes the tests'
// namespaces, traffic and ground truth, to the tracer's types, and collects
// a tracer's events. For the tests of pkg/tracer's backends only.
package tracertest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// Namespace is n as the tracer names namespaces.
func Namespace(n *labnet.NS) tracer.Namespace { return tracer.Namespace{Inode: n.Inode, Path: n.Path} }

// EventLog collects a tracer's events until its channel closes (Done).
type EventLog struct {
	mu   sync.Mutex
	evs  []tracer.Event
	Done chan struct{} // closed when the tracer's event channel is
}

// CollectEvents collects the events of tr until its channel closes.
func CollectEvents(tr tracer.Tracer) *EventLog {
	l := &EventLog{Done: make(chan struct{})}
	go func() {
		defer close(l.Done)
		for ev := range tr.Events() {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

// Snapshot returns the events so far.
func (l *EventLog) Snapshot() []tracer.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

// WaitFor polls until cond holds for the events so far, or timeout.
func (l *EventLog) WaitFor(timeout time.Duration, cond func([]tracer.Event) bool) bool {
	return labnet.WaitFor(timeout, func() bool { return cond(l.Snapshot()) })
}

// Matching returns the events of netns ns that satisfy keep.
func (l *EventLog) Matching(ns uint32, keep func(tracer.Event) bool) []tracer.Event {
	var out []tracer.Event
	for _, ev := range l.Snapshot() {
		if ev.NetNS == ns && keep(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// CreatedIn sums the created counters of namespace inode; a counter read
// error fails t.
func CreatedIn(t testing.TB, tr tracer.Tracer, inode uint32) uint64 {
	t.Helper()
	c, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for k, v := range c {
		if k.NetNS == inode {
			n += v.Created
		}
	}
	return n
}
