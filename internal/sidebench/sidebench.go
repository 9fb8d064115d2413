// Package sidebench is the JSON of the side-by-side benchmark
// (TestVMSideBySide in cmd/ctagent, make bench-side), which writes it, and
// internal/benchreport, which reads it.
package sidebench

import "github.com/ctagent/ctagent/internal/workload"

// Params is the workload of every run and the configurations run.
type Params struct {
	Namespaces int             `json:"namespaces"`
	Events     int             `json:"events_per_run"`
	Rates      []float64       `json:"rates"` // events/s; 0: as fast as possible
	Modes      []workload.Mode `json:"modes"`
	Configs    []string        `json:"configs"`
}

// NSResult compares one namespace's counters with the ground truth.
type NSResult struct {
	NetNS         uint32  `json:"netns"`
	Created       uint64  `json:"created"`
	Destroyed     uint64  `json:"destroyed"`
	GotCreated    float64 `json:"got_created"`
	GotDestroyed  float64 `json:"got_destroyed"`
	ConsumerLines uint64  `json:"consumer_events"`
}

// BPF is one eBPF program's kernel statistics over a run.
type BPF struct {
	Program  string  `json:"program"`
	Hook     string  `json:"hook"`
	Runs     float64 `json:"runs"`
	NsPerRun float64 `json:"ns_per_run"`
}

// Result is what one configuration measured at one mode and rate.
type Result struct {
	Config       string  `json:"config"`
	Mode         string  `json:"mode"`
	TargetRate   float64 `json:"target_rate"`
	Events       uint64  `json:"events"`
	WallSeconds  float64 `json:"wall_seconds"`
	AchievedRate float64 `json:"achieved_rate"`
	// WallRatio is WallSeconds over the no-agent run's at the same mode
	// and rate.
	WallRatio float64 `json:"wall_ratio"`
	// AgentCPU: the daemon's utime+stime over the run and until it was
	// idle again; ConsumerCPU: the event consumers' (ctagent events,
	// conntrack -E).
	AgentCPU    float64 `json:"agent_cpu_seconds"`
	ConsumerCPU float64 `json:"consumer_cpu_seconds"`
	CPUPer1M    float64 `json:"cpu_seconds_per_1m_events"`
	// Seen: events the consumer printed (configurations with one), else
	// the daemon's created+destroyed counters of the workload's
	// namespaces; Lost: Events - Seen, at least 0.
	Seen uint64 `json:"seen"`
	Lost uint64 `json:"lost"`
	// DaemonLost: ctagent_events_lost_total (all reasons);
	// ConsumerDropped: what the daemon's event stream said it dropped for
	// the client, or the ENOBUFS warnings of conntrack -E.
	DaemonLost      float64 `json:"daemon_lost"`
	ConsumerDropped uint64  `json:"consumer_dropped"`
	// CounterError: the sum over namespaces of |counter - truth| of
	// ctagent_conntrack_created_total and _destroyed_total.
	CounterError float64 `json:"counter_error"`
	// AgentHWM: the daemon's VmHWM; ConsumerHWM: the sum of the
	// consumers'.
	AgentHWM      uint64     `json:"agent_peak_rss_bytes"`
	ConsumerHWM   uint64     `json:"consumer_peak_rss_bytes"`
	BPF           []BPF      `json:"bpf,omitempty"`
	PerNS         []NSResult `json:"per_netns"`
	SettleSeconds float64    `json:"settle_seconds"`
	Note          string     `json:"note,omitempty"`
}

// Report is the JSON the benchmark prints: the guest, the workload, and
// one Result per configuration, workload mode and rate.
type Report struct {
	Kernel  string   `json:"kernel"`
	Release string   `json:"release"`
	CPUs    int      `json:"cpus"`
	Params  Params   `json:"params"`
	Results []Result `json:"results"`
}
