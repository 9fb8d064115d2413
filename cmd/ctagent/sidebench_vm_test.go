package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/sidebench"
	"github.com/ctagent/ctagent/internal/workload"
)

// sideBenchEnv turns TestVMSideBySide on (make bench-side sets it); the
// CI's vmtest runs skip it.
const sideBenchEnv = "CTAGENT_SIDEBENCH"

// Markers around the JSON the benchmark prints; make bench-side extracts
// what is between them from the guest's output.
const (
	sideJSONBegin = "=== SIDEBENCH JSON BEGIN ==="
	sideJSONEnd   = "=== SIDEBENCH JSON END ==="
)

// sideConfig is one consumer of conntrack events the benchmark compares.
type sideConfig struct {
	name string
	// daemon: the flags of `ctagent run` (besides the listen address and
	// pin path); nil: no daemon.
	daemon []string
	// consumer: "events" (ctagent events --server, the daemon's event
	// stream), "conntrack" (conntrack -E in each namespace), or none.
	consumer string
}

var sideConfigs = []sideConfig{
	{name: "none"},
	{name: "fentry", daemon: []string{"--tracer.backend=fentry"}},
	{name: "kprobe", daemon: []string{"--tracer.backend=kprobe"}},
	{name: "fentry+events(ringbuf)", daemon: []string{"--tracer.backend=fentry"}, consumer: "events"},
	{name: "fentry+events(perfbuf)", daemon: []string{"--tracer.backend=fentry", "--tracer.perf-buffer"}, consumer: "events"},
	{name: "netlink", daemon: []string{"--tracer.backend=netlink"}},
	{name: "conntrack -E", consumer: "conntrack"},
	// The workload alone again: the wall time ratios are against the
	// mean of both runs without an agent (the machine's load drifts).
	{name: "none (end)"},
}

func sideParamsFromEnv(t *testing.T) sidebench.Params {
	p := sidebench.Params{Namespaces: 4, Events: 8000, Rates: []float64{1000, 3000, 0}, Modes: []workload.Mode{workload.ModeCtnetlink, workload.ModeUDP, workload.ModeTCP}}
	if v := os.Getenv("CTAGENT_SIDEBENCH_NETNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CTAGENT_SIDEBENCH_NETNS=%q: want a positive number", v)
		}
		p.Namespaces = n
	}
	if v := os.Getenv("CTAGENT_SIDEBENCH_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			t.Fatalf("CTAGENT_SIDEBENCH_EVENTS=%q: want a number of at least 2", v)
		}
		p.Events = n
	}
	if v := os.Getenv("CTAGENT_SIDEBENCH_RATES"); v != "" {
		p.Rates = nil
		for _, f := range strings.Split(v, ",") {
			r, err := strconv.ParseFloat(f, 64)
			if err != nil || r < 0 {
				t.Fatalf("CTAGENT_SIDEBENCH_RATES=%q: want comma-separated events/s (0: as fast as possible)", v)
			}
			p.Rates = append(p.Rates, r)
		}
	}
	if v := os.Getenv("CTAGENT_SIDEBENCH_MODES"); v != "" {
		p.Modes = nil
		for _, m := range strings.Split(v, ",") {
			p.Modes = append(p.Modes, workload.Mode(m))
		}
	}
	for _, c := range sideConfigs {
		p.Configs = append(p.Configs, c.name)
	}
	if v := os.Getenv("CTAGENT_SIDEBENCH_CONFIGS"); v != "" {
		p.Configs = strings.Split(v, ",")
	}
	return p
}

// TestVMSideBySide runs one workload (internal/workload: entries created
// and destroyed over ctnetlink, and real UDP and TCP flows over veth, in several
// namespaces, at several rates) under each configuration of sideConfigs in
// turn, and measures, against the workload's ground truth: the workload's
// wall time relative to no agent, the CPU of the agent and of the event
// consumer per 1M events, events lost, the accuracy of the per-namespace
// counters, peak RSS, and the kernel's run time per program. It prints the
// results as JSON between sideJSONBegin and sideJSONEnd. Only with
// CTAGENT_SIDEBENCH=1 (make bench-side); CTAGENT_SIDEBENCH_EVENTS,
// _RATES, _MODES (ctnetlink, udp, tcp) and _NETNS change the workload,
// _CONFIGS (comma-separated names) picks configurations.
func TestVMSideBySide(t *testing.T) {
	if os.Getenv(sideBenchEnv) != "1" {
		t.Skipf("skipped: the side-by-side benchmark runs only with %s=1 (make bench-side)", sideBenchEnv)
	}
	labnet.RequireVM(t, "ip", "nft", "conntrack")
	p := sideParamsFromEnv(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	targets, spaces := workload.LabTargets(t, p.Namespaces)
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	rep := sidebench.Report{Kernel: os.Getenv("CTAGENT_KERNEL"), Release: unix.ByteSliceToString(uts.Release[:]), CPUs: runtime.NumCPU(), Params: p}
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	for _, c := range sideConfigs {
		if !slices.Contains(p.Configs, c.name) {
			continue
		}
		rs, err := runSideConfig(t, self, c, p, targets, spaces)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		rep.Results = append(rep.Results, rs...)
	}
	base, runs := map[string]float64{}, map[string]float64{}
	for _, r := range rep.Results {
		if strings.HasPrefix(r.Config, "none") {
			base[fmt.Sprintf("%s/%g", r.Mode, r.TargetRate)] += r.WallSeconds
			runs[fmt.Sprintf("%s/%g", r.Mode, r.TargetRate)]++
		}
	}
	for i, r := range rep.Results {
		k := fmt.Sprintf("%s/%g", r.Mode, r.TargetRate)
		if b := base[k]; b > 0 {
			rep.Results[i].WallRatio = r.WallSeconds / (b / runs[k])
		}
	}
	out, err := json.MarshalIndent(rep, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s\n%s\n%s\n", sideJSONBegin, out, sideJSONEnd)
	for _, r := range rep.Results {
		t.Logf("%-24s %-9s rate %6g: %6d events in %6.2fs (x%.2f), cpu %.2fs+%.2fs = %.1f s/1M, lost %d, counter error %g, rss %.1f MiB",
			r.Config, r.Mode, r.TargetRate, r.Events, r.WallSeconds, r.WallRatio, r.AgentCPU, r.ConsumerCPU, r.CPUPer1M, r.Lost, r.CounterError, float64(r.AgentHWM)/(1<<20))
	}
}

// sideProc is a process the benchmark runs: the daemon or a consumer.
type sideProc struct {
	cmd    *exec.Cmd
	stdout *eventCounter
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

func startSideProc(cmd *exec.Cmd, inode uint32) (*sideProc, error) {
	p := &sideProc{cmd: cmd, stdout: &eventCounter{only: inode, perNS: map[uint32]uint64{}}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *sideProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process with sig, then SIGKILL after 20 s.
func (p *sideProc) stop(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// eventCounter counts the lines a consumer prints: for ctagent events'
// JSON lines, by the "netns" field; for conntrack -E (one process per
// namespace), all under only.
type eventCounter struct {
	mu    sync.Mutex
	only  uint32
	part  []byte
	perNS map[uint32]uint64
}

var netnsField = regexp.MustCompile(`"netns":(\d+)`)

func (c *eventCounter) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.part = append(c.part, b...)
	for {
		i := bytes.IndexByte(c.part, '\n')
		if i < 0 {
			break
		}
		line := c.part[:i]
		if c.only != 0 {
			c.perNS[c.only]++
		} else if m := netnsField.FindSubmatch(line); m != nil {
			if n, err := strconv.ParseUint(string(m[1]), 10, 32); err == nil {
				c.perNS[uint32(n)]++
			}
		}
		c.part = c.part[i+1:]
	}
	return len(b), nil
}

func (c *eventCounter) counts() map[uint32]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[uint32]uint64, len(c.perNS))
	for k, v := range c.perNS {
		out[k] = v
	}
	return out
}

// procCPU is utime+stime of pid in clock ticks (USER_HZ, 100 a second).
func procCPU(pid int) (uint64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return uint64(st.UTime + st.STime), nil
}

// procHWM is VmHWM of pid in bytes; 0 if unreadable.
func procHWM(pid int) uint64 {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0
	}
	return st.VmHWM
}

const clockTicks = 100

// sideSnapshot is what is read before and after a run.
type sideSnapshot struct {
	agentCPU, consumerCPU uint64
	created, destroyed    map[string]float64 // by netns
	lost                  float64
	bpfRuns, bpfSecs      map[string]float64 // by program/hook
	lines                 map[uint32]uint64
}

func runSideConfig(t *testing.T, self string, c sideConfig, p sidebench.Params, targets []workload.Target, spaces []*labnet.NS) (results []sidebench.Result, err error) {
	for _, n := range spaces {
		n.CTFlush()
	}
	var daemon *sideProc
	var consumers []*sideProc
	base := ""
	defer func() {
		for _, cp := range consumers {
			cp.stop(syscall.SIGINT)
		}
		if daemon != nil {
			daemon.stop(syscall.SIGTERM)
		}
	}()
	if c.daemon != nil {
		base = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		args := append([]string{"run", "--web.listen-address=" + strings.TrimPrefix(base, "http://"), "--bpf.pin-path="}, c.daemon...)
		cmd := exec.Command(self, args...)
		cmd.Env = append(os.Environ(), daemonEnv+"=1")
		if daemon, err = startSideProc(cmd, 0); err != nil {
			return nil, err
		}
		if !labnet.WaitFor(180*time.Second, func() bool {
			code, _ := readyzGet(base + "/readyz")
			return code == http.StatusOK || daemon.exited()
		}) || daemon.exited() {
			return nil, fmt.Errorf("daemon not ready: %s", lastLines(daemon.stderr.String(), 5))
		}
	}
	switch c.consumer {
	case "events":
		cmd := exec.Command(self, "events", "--server", base, "-o", "json")
		cmd.Env = append(os.Environ(), daemonEnv+"=1")
		cp, err := startSideProc(cmd, 0)
		if err != nil {
			return nil, err
		}
		consumers = append(consumers, cp)
	case "conntrack":
		for _, n := range spaces {
			cp, err := startSideProc(n.Command("conntrack", "-E"), n.Inode)
			if err != nil {
				return nil, err
			}
			consumers = append(consumers, cp)
		}
	}
	// Prime: one entry made and deleted in each namespace, until every
	// consumer and the daemon's counters show it (the consumers are
	// connected, the daemon watches every namespace).
	primed := labnet.WaitFor(120*time.Second, func() bool {
		before := sideRead(t, base, daemon, consumers)
		if _, err := workload.Run(t.Context(), targets, workload.Spec{Mode: workload.ModeCtnetlink, Events: 2 * len(targets), Batch: 1}); err != nil {
			t.Logf("%s: prime: %v", c.name, err)
			return false
		}
		return labnet.WaitFor(5*time.Second, func() bool {
			after := sideRead(t, base, daemon, consumers)
			for _, tg := range targets {
				ns := strconv.FormatUint(uint64(tg.Inode), 10)
				if c.consumer != "" && after.lines[tg.Inode]-before.lines[tg.Inode] < 2 {
					return false
				}
				if daemon != nil && (after.created[ns]-before.created[ns] < 1 || after.destroyed[ns]-before.destroyed[ns] < 1) {
					return false
				}
			}
			return true
		})
	})
	if !primed {
		msg := ""
		if daemon != nil {
			msg = lastLines(daemon.stderr.String(), 5)
		}
		for _, cp := range consumers {
			msg += " | consumer: " + lastLines(cp.stderr.String(), 3)
		}
		return nil, fmt.Errorf("the consumers and the daemon did not see the priming entries: %s", msg)
	}
	for _, mode := range p.Modes {
		for _, rate := range p.Rates {
			r, err := sideRun(t, c, mode, rate, p, targets, base, daemon, consumers)
			if err != nil {
				return results, fmt.Errorf("%s at %g/s: %w", mode, rate, err)
			}
			t.Logf("%s, %s at %g/s: %d events in %.2fs, CPU %.2fs + %.2fs, %d lost, counter error %g",
				c.name, mode, rate, r.Events, r.WallSeconds, r.AgentCPU, r.ConsumerCPU, r.Lost, r.CounterError)
			results = append(results, r)
		}
	}
	return results, nil
}

// sideRead reads the CPU of the daemon and the consumers, the daemon's
// metrics and the consumers' counts.
func sideRead(t *testing.T, base string, daemon *sideProc, consumers []*sideProc) sideSnapshot {
	s := sideSnapshot{created: map[string]float64{}, destroyed: map[string]float64{}, bpfRuns: map[string]float64{}, bpfSecs: map[string]float64{}, lines: map[uint32]uint64{}}
	s.agentCPU, s.consumerCPU = sideCPU(daemon, consumers)
	for _, cp := range consumers {
		for k, v := range cp.stdout.counts() {
			s.lines[k] += v
		}
	}
	if daemon == nil {
		return s
	}
	fams, err := scrapeFamilies(base + "/metrics")
	if err != nil {
		t.Logf("scrape: %v", err)
		return s
	}
	sum := func(name string, key func(*dto.Metric) string, into map[string]float64) {
		for _, m := range fams[name].GetMetric() {
			into[key(m)] += m.GetCounter().GetValue()
		}
	}
	byNS := func(m *dto.Metric) string { return metricLabel(m, "netns") }
	byProg := func(m *dto.Metric) string { return metricLabel(m, "program") + "/" + metricLabel(m, "hook") }
	sum("ctagent_conntrack_created_total", byNS, s.created)
	sum("ctagent_conntrack_destroyed_total", byNS, s.destroyed)
	sum("ctagent_bpf_program_run_count_total", byProg, s.bpfRuns)
	sum("ctagent_bpf_program_run_seconds_total", byProg, s.bpfSecs)
	lost := map[string]float64{}
	sum("ctagent_events_lost_total", func(*dto.Metric) string { return "" }, lost)
	s.lost = lost[""]
	return s
}

func sideCPU(daemon *sideProc, consumers []*sideProc) (agent, consumer uint64) {
	if daemon != nil {
		agent, _ = procCPU(daemon.cmd.Process.Pid)
	}
	for _, cp := range consumers {
		v, _ := procCPU(cp.cmd.Process.Pid)
		consumer += v
	}
	return agent, consumer
}

var droppedField = regexp.MustCompile(`dropped=(\d+)`)

// consumerDropped is what the consumers said they lost: the drops the
// daemon's event stream reported to ctagent events, or the ENOBUFS
// warnings of conntrack -E (each one some events lost).
func consumerDropped(consumers []*sideProc) uint64 {
	var n uint64
	for _, cp := range consumers {
		log := cp.stderr.String()
		for _, m := range droppedField.FindAllStringSubmatch(log, -1) {
			v, _ := strconv.ParseUint(m[1], 10, 64)
			n += v
		}
		n += uint64(strings.Count(log, "ENOBUFS"))
	}
	return n
}

func sideRun(t *testing.T, c sideConfig, mode workload.Mode, rate float64, p sidebench.Params, targets []workload.Target, base string, daemon *sideProc, consumers []*sideProc) (sidebench.Result, error) {
	r := sidebench.Result{Config: c.name, Mode: string(mode), TargetRate: rate}
	before := sideRead(t, base, daemon, consumers)
	droppedBefore := consumerDropped(consumers)
	truth, err := workload.Run(t.Context(), targets, workload.Spec{Mode: mode, Events: p.Events, Rate: rate})
	if err != nil {
		return r, err
	}
	r.Events = truth.Events()
	r.WallSeconds = truth.Wall.Seconds()
	r.AchievedRate = float64(r.Events) / r.WallSeconds
	// Settle: until every consumer has printed every event, or stopped
	// printing, and the agent's and consumers' CPU stayed the same for
	// half a second (the daemon drained what it was sent).
	t0 := time.Now()
	var lastCPU uint64
	var lastCount uint64
	stable := 0
	labnet.WaitFor(60*time.Second, func() bool {
		time.Sleep(230 * time.Millisecond)
		a, cc := sideCPU(daemon, consumers)
		var lines uint64
		for _, cp := range consumers {
			for _, v := range cp.stdout.counts() {
				lines += v
			}
		}
		if a+cc == lastCPU && lines == lastCount {
			stable++
		} else {
			stable = 0
		}
		lastCPU, lastCount = a+cc, lines
		return stable >= 2
	})
	r.SettleSeconds = time.Since(t0).Seconds()
	after := sideRead(t, base, daemon, consumers)
	r.AgentCPU = float64(after.agentCPU-before.agentCPU) / clockTicks
	r.ConsumerCPU = float64(after.consumerCPU-before.consumerCPU) / clockTicks
	r.CPUPer1M = (r.AgentCPU + r.ConsumerCPU) / float64(r.Events) * 1e6
	r.DaemonLost = after.lost - before.lost
	r.ConsumerDropped = consumerDropped(consumers) - droppedBefore
	if daemon != nil {
		r.AgentHWM = procHWM(daemon.cmd.Process.Pid)
	}
	for _, cp := range consumers {
		r.ConsumerHWM += procHWM(cp.cmd.Process.Pid)
	}
	var seen uint64
	for _, tr := range truth.PerNS {
		ns := strconv.FormatUint(uint64(tr.Inode), 10)
		nr := sidebench.NSResult{NetNS: tr.Inode, Created: tr.Created, Destroyed: tr.Destroyed,
			ConsumerLines: after.lines[tr.Inode] - before.lines[tr.Inode]}
		if daemon != nil {
			nr.GotCreated = after.created[ns] - before.created[ns]
			nr.GotDestroyed = after.destroyed[ns] - before.destroyed[ns]
			r.CounterError += math.Abs(nr.GotCreated-float64(tr.Created)) + math.Abs(nr.GotDestroyed-float64(tr.Destroyed))
		}
		switch {
		case c.consumer != "":
			seen += nr.ConsumerLines
		case daemon != nil:
			seen += uint64(nr.GotCreated + nr.GotDestroyed)
		}
		r.PerNS = append(r.PerNS, nr)
	}
	if c.consumer != "" || daemon != nil {
		r.Seen = seen
		if seen < r.Events {
			r.Lost = r.Events - seen
		}
	}
	for k, runs := range after.bpfRuns {
		d := runs - before.bpfRuns[k]
		if d <= 0 {
			continue
		}
		prog, hook, _ := strings.Cut(k, "/")
		r.BPF = append(r.BPF, sidebench.BPF{Program: prog, Hook: hook, Runs: d, NsPerRun: (after.bpfSecs[k] - before.bpfSecs[k]) / d * 1e9})
	}
	slices.SortFunc(r.BPF, func(a, b sidebench.BPF) int { return strings.Compare(a.Hook, b.Hook) })
	return r, nil
}
