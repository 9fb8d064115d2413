package metrics

import (
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The module gauge is served from the daemon's start, alone, and then
// beside the Exporter on the same registry: the Exporter does not
// describe it too (a registry refuses a descriptor twice).
func TestModuleCollector(t *testing.T) {
	var loaded atomic.Bool
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewModuleCollector(loaded.Load))
	const name = "ctagent_conntrack_module_loaded"
	check := func(what string, want float64) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				n++
				if got := m.GetGauge().GetValue(); got != want || len(m.GetLabel()) != 0 {
					t.Errorf("%s: %s%v = %v, want %v without labels", what, name, m.GetLabel(), got, want)
				}
			}
		}
		if n != 1 {
			t.Errorf("%s: %d series of %s, want 1", what, n, name)
		}
	}
	check("waiting", 0)
	e, err := New(Options{Tracer: &fakeTracer{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(e); err != nil {
		t.Fatalf("the Exporter beside the module collector: %v", err)
	}
	loaded.Store(true)
	check("loaded", 1)
}
