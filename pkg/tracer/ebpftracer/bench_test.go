package ebpftracer

import (
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
)

// BenchmarkDecode compares the event decoder with a reflection-based
// binary.Decode of the generated struct (the baseline), which decodeEvent
// does not use for its cost.
func BenchmarkDecode(b *testing.B) {
	raw := rawEvent(b, conntrackCtEvent{Type: uint8(conntrackCtEventTypeCT_EVENT_CREATED), Family: unix.AF_INET})
	b.Run("baseline=binary.Decode", func(b *testing.B) {
		var ev conntrackCtEvent
		for b.Loop() {
			if _, err := binary.Decode(raw, binary.NativeEndian, &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decodeEvent", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeEvent(raw, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkConntrackOverhead measures what the programs add to the creation
// and destruction of a conntrack entry: every iteration sends one UDP packet
// to a new port on loopback in a namespace with a ct rule (one new entry),
// and every 4096 packets the table is flushed. baseline runs with no tracer;
// events=off measures the in-kernel part alone (counters, no event stream).
// Needs attach, so it runs in the VM matrix (make bench).
func BenchmarkConntrackOverhead(b *testing.B) {
	if !labnet.InVM() {
		b.Skip("skipped: attaches eBPF programs; runs in the qemu kernel matrix (make bench)")
	}
	labnet.Require(b, "ip", "nft", "conntrack")
	ns := labnet.New(b)
	ns.EnableConntrack()
	var conn net.PacketConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", "127.0.0.1:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	payload := []byte("x")
	// stats: the kernel's BPF run-time accounting is on (it adds two clock
	// reads per program run, so it has variants of its own), and each
	// program's ns per run is reported beside the wall time.
	type variant struct {
		backend tracer.Backend
		events  bool
		stats   bool
	}
	variants := []variant{
		{backend: "baseline"},
		{backend: tracer.BackendFentry, events: true}, {backend: tracer.BackendFentry},
		{backend: tracer.BackendKprobe, events: true}, {backend: tracer.BackendKprobe},
		{backend: tracer.BackendFentry, stats: true}, {backend: tracer.BackendKprobe, stats: true},
	}
	for _, v := range variants {
		name := fmt.Sprintf("backend=%s", v.backend)
		if v.backend != "baseline" {
			name += map[bool]string{true: ",events=on", false: ",events=off"}[v.events]
		}
		if v.stats {
			name += ",bpfstats"
		}
		b.Run(name, func(b *testing.B) {
			var tr tracer.Tracer
			if v.backend != "baseline" {
				var err error
				tr, err = tracer.Open(b.Context(), tracer.Options{Backend: v.backend, DisableEvents: !v.events, BPFStats: v.stats})
				if err != nil {
					b.Fatal(err)
				}
				defer tr.Close()
				go func() {
					for range tr.Events() {
					}
				}()
			}
			if v.stats {
				defer reportProgramCost(b, tr)
			}
			ns.CTFlush()
			port := 1
			for b.Loop() {
				conn.WriteTo(payload, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
				port++
				if port == 4096 {
					b.StopTimer()
					ns.CTFlush()
					port = 1
					b.StartTimer()
				}
			}
		})
	}
}

// reportProgramCost reports the kernel's mean run time of each of tr's
// programs that ran ("<program>-ns/run"), and their total per iteration
// ("bpf-ns/op"); tr was opened with BPFStats. The self-test's runs at start
// are in the totals too: a few dozen against b.N.
func reportProgramCost(b *testing.B, tr tracer.Tracer) {
	progs, err := tr.Programs()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, p := range progs {
		if p.RunCount == 0 {
			continue
		}
		total += p.RunTime
		b.ReportMetric(float64(p.RunTime.Nanoseconds())/float64(p.RunCount), p.Name+"-ns/run")
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "bpf-ns/op")
}
