package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
	_ "github.com/ctagent/ctagent/pkg/tracer/netlinktracer"
)

// labSource names the lab namespaces for the API.
type labSource struct{ nss []*labnet.NS }

func (s labSource) Namespaces() []netns.Namespace {
	var out []netns.Namespace
	for _, n := range s.nss {
		out = append(out, tracertest.Namespace(n))
	}
	return out
}

func (s labSource) Lookup(inode uint32) (netns.Identity, bool) {
	for _, n := range s.nss {
		if n.Inode == inode {
			return netns.Identity{Inode: inode, Name: n.Name}, true
		}
	}
	return netns.Identity{}, false
}

// /api/v1/events on a real tracer (the netlink backend, real namespaces):
// a client gets the events of its filter with their owner from the moment
// it listens; events made while nobody listens are not queued for later
// (the stream was off), the tracer still counts them; a bad filter is 400.
func TestEventsStream(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	a, b := labnet.New(t), labnet.New(t)
	src := labSource{nss: []*labnet.NS{a, b}}
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendNetlink, DisableEvents: true,
		Logger: zaptest.NewLogger(t), Namespaces: func() ([]tracer.Namespace, error) { return src.Namespaces(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rec := &recordingTracer{Tracer: tr}
	hub, err := NewEventHub(rec, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { hub.Run(ctx) })
	h := NewHandler(zaptest.NewLogger(t))
	h.SetSource(Source{Namespaces: src, Table: tr, Events: hub})
	c := serve(t, h)

	insert := func(n *labnet.NS, port uint16) {
		t.Helper()
		if err := n.CTInsert(labnet.InsertArgs("udp", netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port), netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	// While nobody listens: counted, not streamed.
	insert(a, 1000)
	if !labnet.WaitFor(5*time.Second, func() bool { return tracertest.CreatedIn(t, tr, a.Inode) == 1 }) {
		t.Fatal("the tracer did not count the insert made while nobody listened")
	}

	lines := make(chan eventjson.Event, 16)
	cctx, stop := context.WithCancel(ctx)
	var clientErr error
	var cwg sync.WaitGroup
	cwg.Go(func() {
		clientErr = c.Events(cctx, EventFilter{Filter: Filter{NetNS: a.Name}, Types: []string{"created"}}, func(line []byte) error {
			var ev eventjson.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			lines <- ev
			return nil
		})
	})
	if !labnet.WaitFor(5*time.Second, func() bool { return hub.listening() == 1 }) {
		t.Fatal("the client is not listening")
	}
	insert(b, 2000) // another namespace: filtered out
	insert(a, 1001)
	select {
	case ev := <-lines:
		if ev.NetNS != a.Inode || ev.NetNSName != a.Name || ev.Type != "created" || ev.Original.SrcPort != 1001 {
			t.Errorf("first event: %+v, want the insert of port 1001 in %s (not the one made before, not %s's)", ev, a.Name, b.Name)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	stop()
	cwg.Wait()
	if clientErr != nil && !errors.Is(clientErr, context.Canceled) {
		t.Errorf("client: %v", clientErr)
	}
	if !labnet.WaitFor(5*time.Second, func() bool { return hub.listening() == 0 }) {
		t.Fatal("the hub still counts the client that left")
	}
	select {
	case ev := <-lines:
		t.Errorf("an event after the client left: %+v", ev)
	default:
	}
	if got := rec.switched(); len(got) != 3 || got[0] || !got[1] || got[2] {
		t.Errorf("SetEvents calls %v, want [false true false]: off at start, on for the client, off when it left", got)
	}
	if err := c.Events(ctx, EventFilter{Types: []string{"bogus"}}, func([]byte) error { return nil }); err == nil {
		t.Error("a bad type filter was accepted")
	}
}

// recordingTracer records the SetEvents calls of the hub.
type recordingTracer struct {
	tracer.Tracer
	mu    sync.Mutex
	calls []bool
}

func (r *recordingTracer) SetEvents(on bool) error {
	r.mu.Lock()
	r.calls = append(r.calls, on)
	r.mu.Unlock()
	return r.Tracer.SetEvents(on)
}

func (r *recordingTracer) switched() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.calls...)
}
