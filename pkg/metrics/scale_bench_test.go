package metrics

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/ctagent/ctagent/internal/nsfarm"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// farmSource is the namespace source of the scale benchmark: the farm's
// namespaces, by path and inode.
type farmSource []netns.Namespace

func (s farmSource) Namespaces() []netns.Namespace           { return s }
func (s farmSource) Lookup(uint32) (netns.Identity, bool)    { return netns.Identity{}, false }
func (s farmSource) tracerList() ([]tracer.Namespace, error) { return s, nil }

// BenchmarkScrapeNetlink is one whole /metrics request (Collect, gathering
// and the text encoding) of the exporter on the real netlink backend, with
// 1,000 real network namespaces of one conntrack entry each: the kernel
// statistics of every namespace are read as the daemon reads them (in the
// background, every --tracer.netlink-stats-interval). It
// reports the body's size too.
func BenchmarkScrapeNetlink(b *testing.B) {
	for _, n := range []int{1000} {
		b.Run(fmt.Sprintf("netns=%d", n), func(b *testing.B) { benchScrape(b, n) })
	}
}

func benchScrape(b *testing.B, n int) {
	if os.Geteuid() != 0 {
		b.Skip("skipped: creating network namespaces needs root")
	}
	farm, err := nsfarm.Create("ctbench", n)
	b.Cleanup(func() {
		if err := farm.Delete(); err != nil {
			b.Error(err)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	var src farmSource
	for _, p := range farm.Paths() {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			b.Fatal(err)
		}
		src = append(src, netns.Namespace{Inode: uint32(st.Ino), Path: p})
	}
	ctx := context.Background()
	start := time.Now()
	tr, err := tracer.Open(ctx, tracer.Options{
		DisableEvents: true, // as the daemon runs
		Backend:       tracer.BackendNetlink,
		// As the daemon reads them (--tracer.netlink-stats-interval): in
		// the background, the scrape serving the last read.
		KernelStatsInterval: 15 * time.Second,
		Namespaces:          src.tracerList,
		Logger:              zap.NewNop(),
	})
	if err != nil {
		b.Fatalf("tracer.Open: %v", err)
	}
	b.Cleanup(func() { tr.Close() })
	opened := time.Now()
	e, err := New(Options{Tracer: tr, Namespaces: src, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	// Start may leave namespaces to Run, which does not run here: dump
	// them, so that every namespace has its entry series.
	if _, failed, err := e.baselinePass(ctx, true); failed > 0 {
		b.Fatal(err)
	}
	b.Logf("%d namespaces: tracer open %v, baseline %v", n, opened.Sub(start), time.Since(opened))
	reg := prometheus.NewRegistry()
	reg.MustRegister(e)
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	var size int
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("GET /metrics: %d", rec.Code)
		}
		size = rec.Body.Len()
	}
	b.ReportMetric(float64(size), "bytes/scrape")
	if got := e.scrapeErrs[sourceIndex(srcKernelStats)].Load(); got != 0 {
		b.Errorf("%d kernel statistics reads failed", got)
	}
}
