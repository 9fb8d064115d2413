package metrics

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// hasBaseline reports whether the namespace has been dumped: its entry
// gauges are exported.
func (e *Exporter) hasBaseline(inode uint32) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.ns[inode]
	return st != nil && st.base != nil
}

// sumSeries sums the series of name of a namespace.
func sumSeries(m map[string]map[string]float64, name string, inode uint32) float64 {
	return sum(series(m, name, inode))
}

// TestBaselineDumpRaces: an entry made while a namespace's table is dumped
// is either in the dump or not, and the counters read before or after the
// dump either count it or not; a baseline taken then is off by one, for
// good (until the next reconciliation). The exporter sees the counters
// move during the dump and dumps again. The races are made certain here: a
// real entry is inserted right after the dump (the netlink backend reads
// the counters after its dumps) or right before it (the eBPF backends read
// them before), and counted by the real netlink tracer before the dump
// function returns.
func TestBaselineDumpRaces(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	for _, tc := range []struct {
		name       string
		readBefore bool // counters snapshot before the dump (eBPF), not after it (netlink)
		racing     int  // dumps that race an insert
		wantDumps  int
		wantOff    float64 // entries exported minus conntrack -C, after the pass
	}{
		{name: "insert after dump, counters read after", racing: 1, wantDumps: 2},
		{name: "insert before dump, counters read before", readBefore: true, racing: 1, wantDumps: 2},
		// Every dump races: the last one is used, and off by one; the next
		// quiet dump corrects that and says so.
		{name: "every dump races", racing: maxDumpTries, wantDumps: maxDumpTries, wantOff: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := labnet.New(t)
			const preexisting = 5
			var lines []string
			for i := range preexisting {
				lines = append(lines, fmt.Sprintf("-I -s 192.0.2.1 -d 192.0.2.2 -p udp --sport %d --dport 53 -t 600", 1000+i))
			}
			n.CTLoad(lines)
			src := &labSource{nss: []*labnet.NS{n}}
			tr := openNetlink(t, ctx, src)
			e, url := serveExporter(t, Options{Tracer: tr, Namespaces: src, ReconcileInterval: -1, RescanInterval: time.Hour,
				Logger: zaptest.NewLogger(t)})
			if tc.readBefore {
				e.settle = 0
			}
			var dumps atomic.Int32
			made := uint64(0)
			insert := func() {
				made++
				src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(2000+made))
				if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
					t.Error(err)
					return
				}
				if !labnet.WaitFor(10*time.Second, func() bool { return tracertest.CreatedIn(t, tr, n.Inode) == made }) {
					t.Errorf("the tracer did not count insert %d", made)
				}
			}
			e.dump = func(ns tracer.Namespace, fn func(tracer.Entry)) error {
				race := int(dumps.Add(1)) <= tc.racing
				if race && tc.readBefore {
					insert()
				}
				err := tr.DumpTable(ns, fn)
				if race && !tc.readBefore {
					insert()
				}
				return err
			}
			if err := e.Start(ctx); err != nil {
				t.Fatal(err)
			}
			m := scrapeHTTP(t, url)
			got, kernel := sumSeries(m, "ctagent_conntrack_entries", n.Inode), float64(n.CTCount())
			t.Logf("%d dumps; entries %v, conntrack -C %v", dumps.Load(), got, kernel)
			if int(dumps.Load()) != tc.wantDumps {
				t.Errorf("%d dumps, want %d", dumps.Load(), tc.wantDumps)
			}
			if got-kernel != tc.wantOff {
				t.Errorf("entries %v, conntrack -C %v: off by %v, want %v", got, kernel, got-kernel, tc.wantOff)
			}
			if pending := e.rebasePending(); pending != (tc.wantOff != 0) {
				t.Errorf("another dump pending: %v, want %v", pending, tc.wantOff != 0)
			}
			if tc.wantOff == 0 {
				return
			}
			// The baseline is provisional: Run dumps it again soon (here, by
			// hand), and that quiet dump corrects it and exports the
			// correction.
			if _, failed, err := e.baselinePass(ctx, true); failed > 0 {
				t.Fatal(err)
			}
			if e.rebasePending() {
				t.Error("another dump still pending after a quiet one")
			}
			m = scrapeHTTP(t, url)
			l := canon(fmt.Sprintf("netns=%d", n.Inode))
			if got := sumSeries(m, "ctagent_conntrack_entries", n.Inode); got != float64(n.CTCount()) {
				t.Errorf("after a quiet dump: entries %v, conntrack -C %d", got, n.CTCount())
			}
			if c := m["ctagent_reconcile_last_correction"][l]; c != -tc.wantOff {
				t.Errorf("ctagent_reconcile_last_correction %v, want %v", c, -tc.wantOff)
			}
		})
	}
}

// settled reports whether the namespace has a baseline that no dump is
// about to replace.
func (e *Exporter) settled(inode uint32) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.ns[inode]
	return st != nil && st.base != nil && !st.rebase && !st.dumping
}
