// Package tracertest adapts internal/labnet, which makes the tests'
// namespaces, traffic and ground truth, to the tracer's types, and collects
// a tracer's events. For the tests of pkg/tracer's backends only.
package tracertest

import (
	"net/netip"
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

// CheckEventSwitch proves Tracer.SetEvents on tr, opened with
// DisableEvents and counting namespace n: entries made while the stream is
// off are counted and never streamed, those made while it is on are
// streamed, and off again stops the stream while counting goes on.
func CheckEventSwitch(t *testing.T, tr tracer.Tracer, n *labnet.NS) {
	t.Helper()
	log := CollectEvents(tr)
	streamed := func() int { return len(log.Matching(n.Inode, func(tracer.Event) bool { return true })) }
	destroyed := func() uint64 {
		c, err := tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var d uint64
		for k, v := range c {
			if k.NetNS == n.Inode {
				d += v.Destroyed
			}
		}
		return d
	}
	insert := func(from, count int) {
		t.Helper()
		for i := range count {
			src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(from+i))
			if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
				t.Fatal(err)
			}
		}
	}
	insert(1000, 3)
	if !labnet.WaitFor(10*time.Second, func() bool { return CreatedIn(t, tr, n.Inode) == 3 }) {
		t.Fatalf("stream off: created %d, want 3 (counting must not stop)", CreatedIn(t, tr, n.Inode))
	}
	time.Sleep(200 * time.Millisecond)
	if got := streamed(); got != 0 {
		t.Fatalf("stream off: %d events streamed, want 0", got)
	}
	if err := tr.SetEvents(true); err != nil {
		t.Fatal(err)
	}
	insert(2000, 2)
	if !log.WaitFor(10*time.Second, func([]tracer.Event) bool { return streamed() == 2 }) {
		t.Fatalf("stream on: %d events streamed, want 2", streamed())
	}
	if err := tr.SetEvents(false); err != nil {
		t.Fatal(err)
	}
	n.CTFlush()
	if !labnet.WaitFor(10*time.Second, func() bool { return destroyed() == 5 }) {
		t.Fatalf("stream off again: destroyed %d, want 5", destroyed())
	}
	time.Sleep(200 * time.Millisecond)
	if got := streamed(); got != 2 {
		t.Errorf("stream off again: %d events streamed, want still 2", got)
	}
}
