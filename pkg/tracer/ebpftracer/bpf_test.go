package ebpftracer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ctagent/ctagent/pkg/tracer"

	"github.com/cilium/ebpf"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
)

// TestEventLayout pins the decoder's offsets to the generated struct.
func TestEventLayout(t *testing.T) {
	var ev conntrackCtEvent
	if got := int(unsafe.Sizeof(ev)); got != eventSize {
		t.Fatalf("sizeof(struct ct_event) = %d, decoder assumes %d", got, eventSize)
	}
	if got := int(unsafe.Sizeof(conntrackCtTuple{})); got != tupleSize {
		t.Fatalf("sizeof(struct ct_tuple) = %d, decoder assumes %d", got, tupleSize)
	}
	offsets := map[string][2]uintptr{
		"netns":    {unsafe.Offsetof(ev.Netns), 24},
		"zone":     {unsafe.Offsetof(ev.Zone), 40},
		"type":     {unsafe.Offsetof(ev.Type), 42},
		"flags":    {unsafe.Offsetof(ev.Flags), 47},
		"original": {unsafe.Offsetof(ev.Original), 48},
		"reply":    {unsafe.Offsetof(ev.Reply), 48 + tupleSize},
	}
	for name, o := range offsets {
		if o[0] != o[1] {
			t.Errorf("offset of %s = %d, decoder assumes %d", name, o[0], o[1])
		}
	}
}

// TestDecodeEvent encodes events with the generated Go type, the same layout
// the kernel writes, and decodes them.
func TestDecodeEvent(t *testing.T) {
	raw := conntrackCtEvent{
		TimestampNs: 5e9, LifetimeNs: 1500e6, Cookie: 0xffff8880deadbeef,
		Netns: 4026531840, Mark: 7, Status: 0x18e, Error: 0, Zone: 3,
		Type: 2, Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP, TcpState: 3, Flags: 1,
	}
	src := netip.MustParseAddr("fd00::1").As16()
	dst := netip.MustParseAddr("fd00::2").As16()
	raw.Original = conntrackCtTuple{SrcAddr: src, DstAddr: dst, SrcPort: 40000, DstPort: 80}
	raw.Reply = conntrackCtTuple{SrcAddr: dst, DstAddr: src, SrcPort: 80, DstPort: 40000}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, raw); err != nil {
		t.Fatal(err)
	}
	ev, err := decodeEvent(buf.Bytes(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != tracer.EventDestroyed || !ev.LifetimeKnown || ev.Lifetime != 1500*time.Millisecond {
		t.Errorf("type/lifetime: %+v", ev)
	}
	if ev.Time != time.Unix(6, 0) {
		t.Errorf("time = %v, want 6s after the epoch", ev.Time)
	}
	if ev.NetNS != 4026531840 || ev.Zone != 3 || ev.Mark != 7 || ev.TCPState != 3 {
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
	raw.Family, raw.Protocol, raw.Type, raw.Flags = unix.AF_INET, unix.IPPROTO_ICMP, 1, 0
	raw.Original = conntrackCtTuple{SrcPort: 0x1234, DstPort: 8 << 8}
	copy(raw.Original.SrcAddr[:], []byte{10, 0, 0, 1})
	buf.Reset()
	binary.Write(&buf, binary.LittleEndian, raw)
	ev, err = decodeEvent(buf.Bytes(), 0)
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
}

// TestDecodeEventRejectsGarbage: short records and unknown enums are errors.
func TestDecodeEventRejectsGarbage(t *testing.T) {
	if _, err := decodeEvent(make([]byte, eventSize-1), 0); err == nil {
		t.Error("short record accepted")
	}
	bad := make([]byte, eventSize)
	bad[42] = 9
	if _, err := decodeEvent(bad, 0); err == nil {
		t.Error("unknown type accepted")
	}
	bad[42], bad[43] = 1, 200
	if _, err := decodeEvent(bad, 0); err == nil {
		t.Error("unknown reason accepted")
	}
}

// FuzzDecodeEvent: any input is decoded or rejected, never a panic.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, eventSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw, 0)
		if err == nil && (ev.Type < tracer.EventCreated || ev.Type > tracer.EventFailed) {
			t.Fatalf("accepted type %d", ev.Type)
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
	tr := &bpfTracer{log: zaptest.NewLogger(t), coll: coll, done: make(chan struct{})}
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
