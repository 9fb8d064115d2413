package netlinktracer

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
)

// TestNetlinkFirstSeenBounded: with a conntrack template whose event mask
// lacks destroy (nft "ct event set new"), the kernel sends NEW but never
// DESTROY, with no overrun to tell. The listener's CTA_ID -> first-seen map
// must still shrink once those entries are gone from the table.
func TestNetlinkFirstSeenBounded(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	old := minResyncSize
	minResyncSize = 50
	t.Cleanup(func() { minResyncSize = old })

	n := labnet.New(t)
	n.NFT(`table inet evmask {
	chain out { type filter hook output priority filter; ct event set new; }
}
`)
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:       tracer.BackendNetlink,
		Logger:        zaptest.NewLogger(t),
		Namespaces:    func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(n)}, nil },
		DisableEvents: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	nt := tr.(*netlinkTracer)
	l := nt.listeners[n.Inode]

	dst := netip.MustParseAddrPort("127.0.0.1:9")
	for range 120 {
		n.UDPSend(dst) // a new source port, a new entry
	}
	if !labnet.WaitFor(3*time.Second, func() bool { return l.tracked.Load() >= 100 }) {
		t.Fatalf("%d entries tracked after 120 NEW", l.tracked.Load())
	}
	n.CTFlush() // no DESTROY events: the mask lacks them
	// A trickle of new entries (the listener acts on receipt); the flushed
	// ones must be forgotten within a resync and its grace period.
	var live uint64
	for deadline := time.Now().Add(25 * time.Second); time.Now().Before(deadline); {
		n.UDPSend(dst)
		time.Sleep(200 * time.Millisecond)
		if live = n.CTCount(); l.tracked.Load() <= int64(live) {
			break
		}
	}
	t.Logf("tracked %d, table %d", l.tracked.Load(), live)
	if got := l.tracked.Load(); got > int64(live) {
		t.Errorf("%d entries tracked, %d in the table: the first-seen map keeps entries that are gone", got, live)
	}
}
