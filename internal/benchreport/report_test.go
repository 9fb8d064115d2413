package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `{"kernel": "debian-6.12", "release": "6.12.0", "cpus": 2,
 "params": {"namespaces": 2, "events_per_run": 100, "rates": [1000, 0]},
 "results": [
  {"config": "none", "mode": "ctnetlink", "target_rate": 1000, "events": 100, "wall_seconds": 0.1, "achieved_rate": 1000, "wall_ratio": 1},
  {"config": "none", "mode": "udp", "target_rate": 1000, "events": 100, "wall_seconds": 0.1, "achieved_rate": 1000, "wall_ratio": 1},
  {"config": "fentry", "mode": "ctnetlink", "target_rate": 0, "events": 100, "wall_seconds": 0.05, "achieved_rate": 2000, "wall_ratio": 1.2,
   "agent_cpu_seconds": 0.01, "cpu_seconds_per_1m_events": 100, "seen": 100, "agent_peak_rss_bytes": 41943040,
   "bpf": [{"program": "ct_insert", "hook": "fentry/nf_conntrack_hash_check_insert", "runs": 50, "ns_per_run": 300}]},
  {"config": "fentry", "mode": "udp", "target_rate": 0, "events": 100, "wall_seconds": 0.05, "achieved_rate": 2000, "wall_ratio": 1.1,
   "agent_cpu_seconds": 0.03, "cpu_seconds_per_1m_events": 300, "seen": 100, "agent_peak_rss_bytes": 41943040,
   "bpf": [{"program": "ct_insert", "hook": "fentry/nf_conntrack_hash_check_insert", "runs": 150, "ns_per_run": 500}]},
  {"config": "fentry", "mode": "udp", "target_rate": 1000, "events": 100, "wall_seconds": 0.1, "achieved_rate": 1000, "wall_ratio": 1,
   "agent_cpu_seconds": 0.02, "consumer_cpu_seconds": 0, "seen": 90, "lost": 10, "agent_peak_rss_bytes": 41943040},
  {"config": "fentry", "mode": "ctnetlink", "target_rate": 1000, "events": 100, "wall_seconds": 0.1, "achieved_rate": 1000, "wall_ratio": 1,
   "agent_cpu_seconds": 0.02, "seen": 100, "agent_peak_rss_bytes": 41943040}
 ]}`

func TestPointsSumModesAndOrderRates(t *testing.T) {
	rep, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	pts := Points(rep)
	if len(pts) != 3 {
		t.Fatalf("%d points, want 3 (none at 1000, fentry at 1000 and max): %+v", len(pts), pts)
	}
	f := pts[1]
	if f.Config != "fentry" || f.TargetRate != 1000 {
		t.Fatalf("second point %+v, want fentry at 1000/s (fixed rates before max)", f)
	}
	// 200 events in 0.2 s; 0.04 CPU seconds; 10 lost.
	if f.Rate != 1000 || f.CPUPer1M != 200 || f.LostPct != 5 {
		t.Errorf("fentry at 1000/s: %+v, want rate 1000, 200 CPU s per 1M, 5 %% lost", f)
	}
	if m := pts[2]; m.TargetRate != 0 || m.Rate != 2000 {
		t.Errorf("fentry at max: %+v, want 2000 events/s reached", m)
	}
}

func TestMarkdown(t *testing.T) {
	rep, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Markdown(&b, rep); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| udp | 1000/s → 1000 | fentry | 1.00× | 200.0 (200.0 + 0.0) | 10 of 100 |",
		"| ctnetlink | max → 2000 | fentry | 1.20× |",
		"| ctnetlink | 1000/s → 1000 | none | 1.00× | – |",
		// 50 runs at 300 ns and 150 at 500 ns.
		"| fentry | ct_insert | fentry/nf_conntrack_hash_check_insert | 200 | 450 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in\n%s", want, md)
		}
	}
	if strings.Index(md, "| ctnetlink | 1000/s") > strings.Index(md, "| ctnetlink | max") {
		t.Error("max rows before the 1000/s rows")
	}
}

func TestWritePlot(t *testing.T) {
	rep, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "side.png")
	if err := WritePlot(path, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 1000 {
		t.Errorf("%s: %d bytes, not a PNG image", path, len(b))
	}
}

func TestParseRejectsEmpty(t *testing.T) {
	if _, err := Parse(strings.NewReader(`{"results": []}`)); err == nil {
		t.Error("a report without results parsed")
	}
}
