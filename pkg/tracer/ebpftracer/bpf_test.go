package ebpftracer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
)

// TestEventLayout: the generated structs that decodeEvent reads in place
// have the size and member offsets of the C structs in the embedded
// object's BTF.
func TestEventLayout(t *testing.T) {
	spec, err := loadConntrack()
	if err != nil {
		t.Fatal(err)
	}
	for name, goType := range map[string]reflect.Type{
		"ct_event": reflect.TypeFor[conntrackCtEvent](),
		"ct_tuple": reflect.TypeFor[conntrackCtTuple](),
	} {
		var st *btf.Struct
		if err := spec.Types.TypeByName(name, &st); err != nil {
			t.Fatal(err)
		}
		if goType.Size() != uintptr(st.Size) {
			t.Errorf("sizeof(struct %s) = %d, the Go type has %d", name, st.Size, goType.Size())
		}
		var fields []reflect.StructField
		for i := range goType.NumField() {
			if f := goType.Field(i); f.Name != "_" {
				fields = append(fields, f)
			}
		}
		if len(fields) != len(st.Members) {
			t.Fatalf("struct %s has %d members, the Go type %d", name, len(st.Members), len(fields))
		}
		for i, m := range st.Members {
			if off := m.Offset.Bytes(); fields[i].Offset != uintptr(off) {
				t.Errorf("%s.%s at %d, Go field %s at %d", name, m.Name, off, fields[i].Name, fields[i].Offset)
			}
		}
	}
}

// TestEnumsMatchC: every value of the C enums ct_event_type, ct_fail_reason
// and ct_lost_reason (from the embedded object's BTF) converts to the root
// package's constant of the same number and name, and the root has no
// constant more: a value added in C fails here until both sides have it.
func TestEnumsMatchC(t *testing.T) {
	spec, err := loadConntrack()
	if err != nil {
		t.Fatal(err)
	}
	// check compares the values of enum name, less the one named max,
	// with the root's constants: convert returns the root constant for a
	// C value and whether there is one; its String is the C name, lower
	// case, without prefix.
	check := func(name, prefix, max string, root int, convert func(uint64) (fmt.Stringer, uint64, bool)) {
		t.Helper()
		var enum *btf.Enum
		if err := spec.Types.TypeByName(name, &enum); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, v := range enum.Values {
			if v.Name == max {
				if v.Value != uint64(root) {
					t.Errorf("%s = %d, the root package has %d values", max, v.Value, root)
				}
				continue
			}
			n++
			got, num, ok := convert(v.Value)
			want := strings.ToLower(strings.TrimPrefix(v.Name, prefix))
			switch {
			case !ok:
				t.Errorf("%s (%d) converts to nothing", v.Name, v.Value)
			case num != v.Value || got.String() != want:
				t.Errorf("%s (%d) converts to %s (%d), want %s (%d)", v.Name, v.Value, got, num, want, v.Value)
			}
		}
		if n != root {
			t.Errorf("enum %s has %d values, the root package %d", name, n, root)
		}
	}
	rootTypes := []tracer.EventType{tracer.EventCreated, tracer.EventDestroyed, tracer.EventFailed}
	check("ct_event_type", "CT_EVENT_", "", len(rootTypes), func(v uint64) (fmt.Stringer, uint64, bool) {
		if v >= uint64(len(eventTypes)) || eventTypes[v] == 0 {
			return nil, 0, false
		}
		return eventTypes[v], uint64(eventTypes[v]), true
	})
	check("ct_fail_reason", "CT_FAIL_", "CT_FAIL_MAX", tracer.NumFailReasons, func(v uint64) (fmt.Stringer, uint64, bool) {
		if v >= uint64(len(failReasons)) {
			return nil, 0, false
		}
		return failReasons[v], uint64(failReasons[v]), true
	})
	// LostReason is a string; its number is its index in the lost map.
	rootLost := []tracer.LostReason{tracer.LostRingbufFull, tracer.LostPerfFull, tracer.LostCountersFull, tracer.LostInflightMiss}
	check("ct_lost_reason", "CT_LOST_", "CT_LOST_MAX", len(rootLost), func(v uint64) (fmt.Stringer, uint64, bool) {
		if v >= uint64(len(lostReasons)) || lostReasons[v] == "" {
			return nil, 0, false
		}
		return stringer(lostReasons[v]), v, true
	})
	for _, r := range rootLost {
		if !slices.Contains(lostReasons[:], r) {
			t.Errorf("lost reason %s has no enum ct_lost_reason value", r)
		}
	}
}

type stringer string

func (s stringer) String() string { return string(s) }

// rawEvent is e as the kernel writes it.
func rawEvent(t testing.TB, e conntrackCtEvent) []byte {
	raw, err := binary.Append(nil, binary.NativeEndian, e)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestDecodeEvent encodes events with the generated Go type, the same layout
// the kernel writes, and decodes them.
func TestDecodeEvent(t *testing.T) {
	raw := conntrackCtEvent{
		TimestampNs: 5e9, LifetimeNs: 1500e6, Cookie: 0xffff8880deadbeef,
		Netns: 4026531840, Mark: 7, Status: 0x18e, Error: 0, Zone: 3,
		Type: uint8(conntrackCtEventTypeCT_EVENT_DESTROYED), Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP, TcpState: 3,
		Flags: uint8(conntrackCtEventFlagCT_FLAG_LIFETIME_KNOWN),
	}
	src := netip.MustParseAddr("fd00::1").As16()
	dst := netip.MustParseAddr("fd00::2").As16()
	raw.Original = conntrackCtTuple{SrcAddr: src, DstAddr: dst, SrcPort: 40000, DstPort: 80}
	raw.Reply = conntrackCtTuple{SrcAddr: dst, DstAddr: src, SrcPort: 80, DstPort: 40000}
	ev, err := decodeEvent(rawEvent(t, raw), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != tracer.EventDestroyed || !ev.LifetimeKnown || ev.Lifetime != 1500*time.Millisecond {
		t.Errorf("type/lifetime: %+v", ev)
	}
	if ev.Time != time.Unix(6, 0) {
		t.Errorf("time = %v, want 6s after the epoch", ev.Time)
	}
	if ev.NetNS != 4026531840 || ev.Zone != 3 || ev.Mark != 7 || ev.TCPState != 3 || ev.Status != 0x18e || ev.Cookie != 0xffff8880deadbeef {
		t.Errorf("scalars: %+v", ev)
	}
	want := tracer.Tuple{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), SrcPort: 40000, DstPort: 80}
	if ev.Original != want {
		t.Errorf("original = %+v, want %+v", ev.Original, want)
	}
	if ev.Reply.Src != want.Dst || ev.Reply.DstPort != 40000 {
		t.Errorf("reply = %+v", ev.Reply)
	}

	// IPv4 and ICMP: 4-byte addresses, id and type/code.
	raw.Family, raw.Protocol, raw.Type, raw.Flags = unix.AF_INET, unix.IPPROTO_ICMP, uint8(conntrackCtEventTypeCT_EVENT_CREATED), 0
	raw.Original = conntrackCtTuple{SrcPort: 0x1234, DstPort: 8 << 8}
	copy(raw.Original.SrcAddr[:], []byte{10, 0, 0, 1})
	ev, err = decodeEvent(rawEvent(t, raw), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !ev.Original.Src.Is4() || ev.Original.Src.String() != "10.0.0.1" {
		t.Errorf("IPv4 source = %v", ev.Original.Src)
	}
	if ev.Original.ICMPType() != 8 || ev.Original.ICMPCode() != 0 || ev.Original.SrcPort != 0x1234 {
		t.Errorf("icmp: %+v", ev.Original)
	}
	if ev.LifetimeKnown || ev.Lifetime != 0 {
		t.Errorf("created event has a lifetime: %+v", ev)
	}

	// A failed insert, in a record that is longer (perf pads samples) and
	// not aligned.
	raw.Type, raw.Reason, raw.Error = uint8(conntrackCtEventTypeCT_EVENT_FAILED), uint8(conntrackCtFailReasonCT_FAIL_EXISTS), -int32(unix.EEXIST)
	padded := append([]byte{0}, rawEvent(t, raw)...)
	padded = append(padded, 0, 0, 0, 0)
	ev, err = decodeEvent(padded[1:], 0)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != tracer.EventFailed || ev.Reason != tracer.ReasonExists || ev.Error != -int32(unix.EEXIST) || ev.Original.Src.String() != "10.0.0.1" {
		t.Errorf("failed event: %+v", ev)
	}
}

// TestDecodeEventRejectsGarbage: short records and unknown enums are errors.
func TestDecodeEventRejectsGarbage(t *testing.T) {
	good := conntrackCtEvent{Type: uint8(conntrackCtEventTypeCT_EVENT_CREATED)}
	if _, err := decodeEvent(rawEvent(t, good), 0); err != nil {
		t.Fatalf("a good record was rejected: %v", err)
	}
	if _, err := decodeEvent(rawEvent(t, good)[:eventSize-1], 0); err == nil {
		t.Error("short record accepted")
	}
	if _, err := decodeEvent(nil, 0); err == nil {
		t.Error("empty record accepted")
	}
	for _, typ := range []uint8{0, uint8(len(eventTypes)), 255} {
		if _, err := decodeEvent(rawEvent(t, conntrackCtEvent{Type: typ}), 0); err == nil {
			t.Errorf("unknown type %d accepted", typ)
		}
	}
	for _, reason := range []uint8{uint8(conntrackCtFailReasonCT_FAIL_MAX), 200} {
		bad := good
		bad.Reason = reason
		if _, err := decodeEvent(rawEvent(t, bad), 0); err == nil {
			t.Errorf("unknown reason %d accepted", reason)
		}
	}
}

// FuzzDecodeEvent: any input is decoded or rejected, never a panic.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, eventSize))
	f.Add([]byte{1, 2, 3})
	f.Add(rawEvent(f, conntrackCtEvent{Type: uint8(conntrackCtEventTypeCT_EVENT_CREATED), Family: unix.AF_INET}))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw, 0)
		if err != nil {
			return
		}
		if len(raw) < eventSize || ev.Type < tracer.EventCreated || ev.Type > tracer.EventFailed || int(ev.Reason) >= tracer.NumFailReasons {
			t.Fatalf("accepted %d bytes: type %d, reason %d", len(raw), ev.Type, ev.Reason)
		}
	})
}

// TestProgramsLoad runs the programs of both eBPF backends through the
// verifier with CO-RE relocation against this kernel's BTF, without attach:
// every kprobe program, and the fentry programs whose function this
// kernel's BTF has.
func TestProgramsLoad(t *testing.T) {
	labnet.Require(t)
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		for _, perfBuf := range []bool{false, true} {
			name := string(b) + map[bool]string{false: "/ringbuf", true: "/perf"}[perfBuf]
			t.Run(name, func(t *testing.T) {
				if b == tracer.BackendFentry && newLiveKernel(b).noModBTF {
					t.Skip("skipped: nf_conntrack is a module without BTF here (Debian 11's 5.10): no fentry program can load; TestVMExactness checks that the backend says so")
				}
				plan, err := planHooks(b, newLiveKernel(b), nil)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]bool{}
				for _, group := range plan {
					for _, p := range group {
						if !p.usable() {
							t.Logf("%s: %s %s", p.name(), p.status.State, p.status.Detail)
							continue
						}
						for _, a := range []attachment{p.entry, p.exit} {
							if a.prog != "" {
								want[a.prog] = true
							}
						}
					}
				}
				if b == tracer.BackendKprobe {
					// kprobe programs load whatever the kernel has: all of them.
					plan, want = nil, programsFor(b)
				}
				coll, err := loadCollection(tracer.Options{ForcePerfBuffer: perfBuf, Logger: zaptest.NewLogger(t)}, b, true, plan)
				if b == tracer.BackendFentry && errors.Is(err, unix.EPERM) && !labnet.InVM() {
					t.Skipf("skipped: this kernel refuses to load tracing programs (%v); the VM matrix loads them", err)
				}
				if err != nil {
					var verr *ebpf.VerifierError
					if errors.As(err, &verr) {
						t.Fatalf("verifier: %+v", verr)
					}
					t.Fatal(err)
				}
				defer coll.Close()
				if got := len(coll.Programs); got != len(want) || got == 0 {
					t.Fatalf("%d programs loaded, want %d", got, len(want))
				}
				for name := range want {
					if coll.Programs[name] == nil {
						t.Errorf("program %s not loaded", name)
					}
				}
			})
		}
	}
}

// TestUserBTFPath relocates against a user-given BTF file (the host's own
// vmlinux BTF copied elsewhere) and rejects a file that is not BTF.
func TestUserBTFPath(t *testing.T) {
	labnet.Require(t)
	raw, err := os.ReadFile("/sys/kernel/btf/vmlinux")
	if err != nil {
		t.Skipf("skipped: no kernel BTF to copy: %v", err)
	}
	dir := t.TempDir()
	good := dir + "/vmlinux.btf"
	os.WriteFile(good, raw, 0o600)
	opts := tracer.Options{BTFPath: good}
	co, err := collectionOptions(opts)
	if err != nil {
		t.Fatal(err)
	}
	if co.Programs.KernelTypes == nil {
		t.Fatal("KernelTypes not set from --btf.path")
	}
	opts.Logger = zaptest.NewLogger(t)
	coll, err := loadCollection(opts, tracer.BackendKprobe, true, nil)
	if err != nil {
		t.Fatalf("load with user BTF: %v", err)
	}
	coll.Close()

	bad := dir + "/not-btf"
	os.WriteFile(bad, []byte("this is not BTF"), 0o600)
	if err := ValidateBTF(bad); err == nil {
		t.Error("a text file was accepted as BTF")
	}
	if err := ValidateBTF(dir + "/missing"); err == nil {
		t.Error("a missing file was accepted as BTF")
	}
}

// TestBackendFailover: where eBPF cannot attach (this host: no kprobes,
// fentry attach refused), auto mode ends on netlink and says why the others
// were refused; forcing an eBPF backend is a clear error naming the symbol.
func TestBackendFailover(t *testing.T) {
	labnet.Require(t)
	if labnet.InVM() {
		t.Skip("skipped: in the VM eBPF attaches; failover is a host test")
	}
	log := zaptest.NewLogger(t)
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendKprobe, Logger: log})
	if err == nil {
		tr.Close()
		t.Skip("skipped: kprobes attach on this kernel, nothing to fail over from")
	}
	if !bytes.Contains([]byte(err.Error()), []byte("__nf_conntrack_confirm")) {
		t.Errorf("kprobe error does not name the symbol: %v", err)
	}
	tr, err = tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendAuto, Logger: log})
	if err != nil {
		t.Fatalf("auto: %v", err)
	}
	defer tr.Close()
	info := tr.Info()
	if info.Backend != tracer.BackendNetlink {
		t.Fatalf("auto chose %s, want netlink", info.Backend)
	}
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		if info.Refused[b] == "" || info.RefusedReason[b] == "" || info.RefusedReason[b] == "error" {
			t.Errorf("no classified refusal recorded for %s: %v %v", b, info.Refused, info.RefusedReason)
		}
	}
	if err := tr.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestBadBTFFallsBack: with --btf.path at a missing, empty, cut or foreign
// BTF file, auto mode refuses fentry and kprobe as no_btf, says which file
// and what is wrong with it, and runs on netlink.
func TestBadBTFFallsBack(t *testing.T) {
	labnet.Require(t)
	for path, want := range badBTFFiles(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendAuto, BTFPath: path, Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatalf("auto: %v", err)
			}
			defer tr.Close()
			info := tr.Info()
			if info.Backend != tracer.BackendNetlink {
				t.Fatalf("auto chose %s, want netlink", info.Backend)
			}
			for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
				if info.RefusedReason[b] != "no_btf" || !strings.Contains(info.Refused[b], "btf "+path+": ") || !strings.Contains(info.Refused[b], want) {
					t.Errorf("%s refused as %q: %s; want no_btf and %q", b, info.RefusedReason[b], info.Refused[b], want)
				}
			}
		})
	}
}

// TestLifetimeBucketBounds: bucket bounds are 2^i ms.
func TestLifetimeBucketBounds(t *testing.T) {
	if tracer.LifetimeBucketBound(0) != 0.001 || tracer.LifetimeBucketBound(10) != 1.024 {
		t.Errorf("bounds: %v %v", tracer.LifetimeBucketBound(0), tracer.LifetimeBucketBound(10))
	}
}

// TestStartsCapacity: the creation-time LRU holds twice nf_conntrack_max
// (a per-namespace limit), within bounds.
func TestStartsCapacity(t *testing.T) {
	for _, c := range []struct {
		max  uint64
		want uint32
	}{{0, 1 << 16}, {262144, 524288}, {1 << 30, 1 << 20}} {
		if got := startsCapacity(c.max); got != c.want {
			t.Errorf("startsCapacity(%d) = %d, want %d", c.max, got, c.want)
		}
	}
}

// TestHideAddress: cookies keep entries apart but do not show addresses.
func TestHideAddress(t *testing.T) {
	const salt = 0x1234
	a, b := uint64(0xffff888012345678), uint64(0xffff888012345680)
	if hideAddress(a, salt) == a || hideAddress(a, salt) == hideAddress(b, salt) {
		t.Errorf("cookies %x %x for %x %x", hideAddress(a, salt), hideAddress(b, salt), a, b)
	}
	if again := hideAddress(a, salt); again != hideAddress(a, salt) || hideAddress(0, salt) != 0 {
		t.Error("cookie not stable, or 0 not kept")
	}
}

// TestCloseAfterReaderFailure: when the event buffer cannot be opened (here a
// per-CPU perf buffer far too large to map, as --tracer.perf-buffer-size
// allows), openBPF closes the half-built tracer; Close must return, so that
// auto mode goes on to the next backend instead of hanging.
func TestCloseAfterReaderFailure(t *testing.T) {
	labnet.Require(t)
	opts := tracer.Options{ForcePerfBuffer: true, PerfBufferSize: 1 << 50, Logger: zaptest.NewLogger(t)}
	coll, err := loadCollection(opts, tracer.BackendKprobe, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &bpfTracer{log: zaptest.NewLogger(t), coll: coll, maps: coll.Maps, done: make(chan struct{})}
	if err := tr.startReader(opts); err == nil {
		tr.Close()
		t.Fatal("a perf buffer of 1 PiB per CPU was opened")
	} else {
		t.Logf("startReader: %v", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- tr.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs after the event reader failed to open")
	}
}
