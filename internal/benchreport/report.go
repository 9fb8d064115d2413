package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ctagent/ctagent/internal/sidebench"
)

// Parse reads a Report.
func Parse(r io.Reader) (sidebench.Report, error) {
	var rep sidebench.Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return rep, fmt.Errorf("benchreport: %w", err)
	}
	if len(rep.Results) == 0 {
		return rep, fmt.Errorf("benchreport: no results")
	}
	return rep, nil
}

// Point is one configuration at one target rate, all workload modes
// together: what the plot shows.
type Point struct {
	Config     string
	TargetRate float64
	Rate       float64 // events over wall time, all modes
	CPUPer1M   float64 // agent and consumer CPU seconds per 1M events
	LostPct    float64 // events lost, % of the events made
}

// Points sums the modes of each configuration and target rate, in the
// order of the configurations in the report, rates ascending (0, as fast
// as possible, last).
func Points(rep sidebench.Report) []Point {
	type key struct {
		config string
		rate   float64
	}
	sums := map[key]*struct{ events, wall, cpu, lost float64 }{}
	var order []key
	for _, r := range rep.Results {
		k := key{r.Config, r.TargetRate}
		s, ok := sums[k]
		if !ok {
			s = &struct{ events, wall, cpu, lost float64 }{}
			sums[k] = s
			order = append(order, k)
		}
		s.events += float64(r.Events)
		s.wall += r.WallSeconds
		s.cpu += r.AgentCPU + r.ConsumerCPU
		s.lost += float64(r.Lost)
	}
	rank := map[string]int{}
	for _, k := range order {
		if _, ok := rank[k.config]; !ok {
			rank[k.config] = len(rank)
		}
	}
	slices.SortStableFunc(order, func(a, b key) int {
		if c := cmp.Compare(rank[a.config], rank[b.config]); c != 0 {
			return c
		}
		return cmp.Compare(rateOrder(a.rate), rateOrder(b.rate))
	})
	var out []Point
	for _, k := range order {
		s := sums[k]
		if s.events == 0 || s.wall == 0 {
			continue
		}
		out = append(out, Point{Config: k.config, TargetRate: k.rate, Rate: s.events / s.wall,
			CPUPer1M: s.cpu / s.events * 1e6, LostPct: s.lost / s.events * 100})
	}
	return out
}

// noAgent reports whether config is a run of the workload alone ("none",
// and "none (end)", the same at the end of the benchmark).
func noAgent(config string) bool { return strings.HasPrefix(config, "none") }

// rateOrder sorts "as fast as possible" (0) after every fixed rate.
func rateOrder(r float64) float64 {
	if r == 0 {
		return 1e300
	}
	return r
}

func rateName(r float64) string {
	if r == 0 {
		return "max"
	}
	return fmt.Sprintf("%g/s", r)
}

// Markdown writes the full table (one row per configuration, mode and
// rate) and the ns per run of each eBPF program.
func Markdown(w io.Writer, rep sidebench.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Kernel %s (%s), %d CPUs; %d namespaces, %d events per run.\n\n",
		rep.Kernel, rep.Release, rep.CPUs, rep.Params.Namespaces, rep.Params.Events)
	writeSummary(&b, rep)
	b.WriteString("\nEvery run:\n\n")
	b.WriteString("| mode | rate (target → reached, events/s) | configuration | workload time vs none | CPU s per 1M events (agent + consumer) | events lost | daemon's lost counter, consumer drops | counter error | peak RSS (daemon + consumer) |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	rows := slices.Clone(rep.Results)
	order := map[string]int{}
	for _, r := range rep.Results {
		if _, ok := order[r.Config]; !ok {
			order[r.Config] = len(order)
		}
	}
	slices.SortStableFunc(rows, func(a, b sidebench.Result) int {
		return cmp.Or(strings.Compare(a.Mode, b.Mode), cmp.Compare(rateOrder(a.TargetRate), rateOrder(b.TargetRate)), cmp.Compare(order[a.Config], order[b.Config]))
	})
	for _, r := range rows {
		cpu, lost, counters, rss := "–", "–", "–", "–"
		if !noAgent(r.Config) {
			a, c := r.AgentCPU/float64(r.Events)*1e6, r.ConsumerCPU/float64(r.Events)*1e6
			cpu = fmt.Sprintf("%.1f (%.1f + %.1f)", a+c, a, c)
			lost = fmt.Sprintf("%d of %d", r.Lost, r.Events)
			counters = fmt.Sprintf("%g, %d", r.DaemonLost, r.ConsumerDropped)
		}
		errs := "–"
		if r.AgentHWM > 0 {
			errs = fmt.Sprintf("%g", r.CounterError)
			rss = fmt.Sprintf("%.1f MiB", float64(r.AgentHWM)/(1<<20))
		}
		switch {
		case r.ConsumerHWM > 0 && r.AgentHWM > 0:
			rss += fmt.Sprintf(" + %.1f MiB", float64(r.ConsumerHWM)/(1<<20))
		case r.ConsumerHWM > 0:
			rss = fmt.Sprintf("%.1f MiB", float64(r.ConsumerHWM)/(1<<20))
		}
		fmt.Fprintf(&b, "| %s | %s → %.0f | %s | %.2f× | %s | %s | %s | %s | %s |\n",
			r.Mode, rateName(r.TargetRate), r.AchievedRate, r.Config, r.WallRatio, cpu, lost, counters, errs, rss)
	}
	progs := bpfSummary(rep)
	if len(progs) > 0 {
		b.WriteString("\nKernel BPF statistics (`ctagent_bpf_program_run_*`), all runs of a configuration:\n\n")
		b.WriteString("| configuration | program | hook | runs | ns per run |\n| --- | --- | --- | --- | --- |\n")
		for _, p := range progs {
			fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.0f |\n", p.config, p.Program, p.Hook, p.Runs, p.NsPerRun)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeSummary writes one row per configuration with an agent: CPU
// seconds per 1M events and events lost at each target rate, all modes
// together (Points), and the daemon's peak RSS.
func writeSummary(b *strings.Builder, rep sidebench.Report) {
	pts := Points(rep)
	var rates []float64
	for _, p := range pts {
		if !slices.Contains(rates, p.TargetRate) {
			rates = append(rates, p.TargetRate)
		}
	}
	slices.SortFunc(rates, func(a, b float64) int { return cmp.Compare(rateOrder(a), rateOrder(b)) })
	hwm := map[string]uint64{}
	for _, r := range rep.Results {
		hwm[r.Config] = max(hwm[r.Config], r.AgentHWM+r.ConsumerHWM)
	}
	b.WriteString("CPU seconds (agent + consumer) per 1M events, and events lost, at each target rate (all workload modes together):\n\n| configuration |")
	for _, r := range rates {
		fmt.Fprintf(b, " %s |", rateName(r))
	}
	b.WriteString(" peak RSS (daemon + consumers) |\n| --- |")
	b.WriteString(strings.Repeat(" --- |", len(rates)+1))
	b.WriteString("\n")
	var row string
	last := ""
	for _, p := range pts {
		if noAgent(p.Config) {
			continue
		}
		if p.Config != last {
			if last != "" {
				fmt.Fprintf(b, "%s %.1f MiB |\n", row, float64(hwm[last])/(1<<20))
			}
			row, last = "| "+p.Config+" |", p.Config
		}
		row += fmt.Sprintf(" %.0f s, %.1f %% lost (%.0f/s) |", p.CPUPer1M, p.LostPct, p.Rate)
	}
	if last != "" {
		fmt.Fprintf(b, "%s %.1f MiB |\n", row, float64(hwm[last])/(1<<20))
	}
}

type bpfRow struct {
	config string
	sidebench.BPF
}

// bpfSummary is the run-weighted ns per run of each program, per
// configuration.
func bpfSummary(rep sidebench.Report) []bpfRow {
	type key struct{ config, program, hook string }
	sums := map[key]*[2]float64{} // runs, ns
	var order []key
	for _, r := range rep.Results {
		for _, p := range r.BPF {
			k := key{r.Config, p.Program, p.Hook}
			if sums[k] == nil {
				sums[k] = &[2]float64{}
				order = append(order, k)
			}
			sums[k][0] += p.Runs
			sums[k][1] += p.Runs * p.NsPerRun
		}
	}
	rank := map[string]int{}
	for _, k := range order {
		if _, ok := rank[k.config]; !ok {
			rank[k.config] = len(rank)
		}
	}
	slices.SortStableFunc(order, func(a, b key) int {
		return cmp.Or(cmp.Compare(rank[a.config], rank[b.config]), strings.Compare(a.hook, b.hook))
	})
	var out []bpfRow
	for _, k := range order {
		s := sums[k]
		out = append(out, bpfRow{config: k.config, BPF: sidebench.BPF{Program: k.program, Hook: k.hook, Runs: s[0], NsPerRun: s[1] / s[0]}})
	}
	return out
}
