package ebpftracer

import (
	"encoding/binary"
	"fmt"
	"net"
	"testing"

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
	type variant struct {
		backend tracer.Backend
		events  bool
	}
	variants := []variant{{"baseline", false}, {tracer.BackendFentry, true}, {tracer.BackendFentry, false}, {tracer.BackendKprobe, true}, {tracer.BackendKprobe, false}}
	for _, v := range variants {
		name := fmt.Sprintf("backend=%s", v.backend)
		if v.backend != "baseline" {
			name += map[bool]string{true: ",events=on", false: ",events=off"}[v.events]
		}
		b.Run(name, func(b *testing.B) {
			if v.backend != "baseline" {
				tr, err := tracer.Open(b.Context(), tracer.Options{Backend: v.backend, DisableEvents: !v.events})
				if err != nil {
					b.Fatal(err)
				}
				defer tr.Close()
				go func() {
					for range tr.Events() {
					}
				}()
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
