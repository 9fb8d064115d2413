package metrics

import "github.com/prometheus/client_golang/prometheus"

// ModuleCollector exports ctagent_conntrack_module_loaded: whether the
// kernel's conntrack module is there. The daemon registers it at its start,
// before any tracer runs: while nf_conntrack is not loaded, no tracer can
// attach (the eBPF hooks and ctnetlink live in its modules), the daemon
// waits for it, and this is the metric that says so.
type ModuleCollector struct {
	loaded func() bool
	desc   *prometheus.Desc
}

// NewModuleCollector returns a collector that calls loaded at each scrape
// (it must be cheap: a stat of /sys/module/nf_conntrack).
func NewModuleCollector(loaded func() bool) *ModuleCollector {
	d := defs[mConntrackModule]
	return &ModuleCollector{loaded: loaded, desc: prometheus.NewDesc(d.name, d.help, nil, nil)}
}

// Describe sends the one descriptor.
func (c *ModuleCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends 1 if the module is loaded, else 0.
func (c *ModuleCollector) Collect(ch chan<- prometheus.Metric) {
	v := 0.0
	if c.loaded() {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.desc, defs[mConntrackModule].kind.valueType(), v)
}
