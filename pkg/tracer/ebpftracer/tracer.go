package ebpftracer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ctnetlink"
)

// programsFor returns the names of every program of backend b.
func programsFor(b tracer.Backend) map[string]bool {
	names := map[string]bool{}
	for _, g := range hookGroups {
		for _, c := range g.candidates {
			entry, exit := c.programs(b)
			for _, a := range []attachment{entry, exit} {
				if a.prog != "" {
					names[a.prog] = true
				}
			}
		}
	}
	return names
}

// bpfTracer is the fentry or kprobe backend.
type bpfTracer struct {
	*ctnetlink.Table
	log     *zap.Logger
	coll    *ebpf.Collection // loaded here; nil when adopted from pins
	maps    map[string]*ebpf.Map
	byProg  map[string]*ebpf.Program // every loaded or adopted program
	vars    map[string]*ebpf.VariableSpec
	owned   []io.Closer      // adopted maps and programs, closed by Close
	pins    *pinning         // nil: not pinned
	adopted bool             // the programs were adopted from pins, not attached here
	plan    [][]*plannedHook // candidates per hook group; the active one has links
	info    tracer.Info
	progs   []tracer.ProgramStats // Name and Hook of each attached program
	byName  map[string]*ebpf.Program
	reader  io.Closer
	events  chan tracer.Event
	boot    time.Duration // wall clock minus CLOCK_MONOTONIC
	salt    uint64        // hides kernel addresses in tracer.Event.Cookie
	done    chan struct{}
	stats   io.Closer        // BPF stats while open, or nil
	lostU   [3]atomic.Uint64 // user space: perf_lost, decode_error, channel_full
	varMu   sync.Mutex       // setVar's read-modify-write of the global-data map
	closing sync.Once
	closed  error
}

// loadSpec reads the embedded object and configures it for backend b: the
// programs of the candidates in plan, or every program of b when plan is nil.
func loadSpec(opts tracer.Options, b tracer.Backend, ringbufOK bool, plan [][]*plannedHook) (*ebpf.CollectionSpec, error) {
	spec, err := loadConntrack()
	if err != nil {
		return nil, fmt.Errorf("read embedded BPF object: %w", err)
	}
	if plan != nil {
		configureSpec(spec, plan)
	} else {
		keep := programsFor(b)
		for name := range spec.Programs {
			if !keep[name] {
				delete(spec.Programs, name)
			}
		}
	}
	useRingbuf := ringbufOK && !opts.ForcePerfBuffer
	var cfg conntrackCtConfig
	if useRingbuf {
		cfg.UseRingbuf = 1
		size := opts.RingBufferSize
		if size == 0 {
			size = 4 << 20
		}
		if size < os.Getpagesize() || size&(size-1) != 0 {
			return nil, fmt.Errorf("ring buffer size %d: must be a power of two of at least one page", size)
		}
		spec.Maps["events"].MaxEntries = uint32(size)
	} else {
		// Never used (the branch is dead for the verifier); keep it creatable
		// on kernels without ring buffers (before 5.8).
		spec.Maps["events"] = &ebpf.MapSpec{Name: "events", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	}
	if opts.DisableEvents {
		// Off from the first event on; SetEvents turns the stream on.
		if err := spec.Variables["events_off"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set events_off: %w", err)
		}
	}
	spec.Maps["starts"].MaxEntries = uint32(opts.LifetimeEntries)
	if opts.LifetimeEntries == 0 {
		spec.Maps["starts"].MaxEntries = startsCapacity(readConntrackMax())
	}
	spec.Maps["counters"].MaxEntries = countersCapacity(opts.MaxNamespaces)
	if err := spec.Variables["ct_cfg"].Set(cfg); err != nil {
		return nil, fmt.Errorf("set ct_cfg: %w", err)
	}
	return spec, nil
}

// startsCapacity sizes the LRU of creation times when no size is given.
// nf_conntrack_max limits each namespace's table, not their sum, so one
// table's limit is not enough for the entries of all namespaces together:
// twice the limit, within bounds that keep the preallocated map (about 80
// bytes an entry) between 5 and 80 MiB. Evictions lose lifetimes, never
// counts: the entry is counted in destroyed_no_start.
func startsCapacity(conntrackMax uint64) uint32 {
	const lo, hi = 1 << 16, 1 << 20
	return uint32(min(max(2*conntrackMax, lo), hi))
}

// countersCapacity sizes the counters map: a namespace uses one key per
// family and protocol it tracks, seldom more than 8 (TCP, UDP, ICMP over
// IPv4 and IPv6, and a few others). The map is not preallocated, so a large
// bound costs nothing until keys are used.
func countersCapacity(maxNamespaces int) uint32 {
	const perNS, lo, hi = 8, 1 << 14, 1 << 20
	if maxNamespaces <= 0 {
		return lo
	}
	return uint32(min(max(maxNamespaces*perNS, lo), hi))
}

// readConntrackMax returns net.netfilter.nf_conntrack_max, or its usual
// default when it cannot be read (nf_conntrack not loaded yet).
func readConntrackMax() uint64 {
	raw, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		return 262144
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 262144
	}
	return n
}

// collectionOptions picks the BTF used for CO-RE relocation.
func collectionOptions(opts tracer.Options) (ebpf.CollectionOptions, error) {
	var co ebpf.CollectionOptions
	if opts.BTFPath == "" {
		if _, err := os.Stat(KernelBTF); err != nil {
			return co, fmt.Errorf("%w: %s: %v (give a BTF file with --btf.path)", tracer.ErrNoBTF, KernelBTF, err)
		}
		return co, nil // vmlinux and all module BTF, found by cilium/ebpf
	}
	kernel, err := LoadBTF(opts.BTFPath)
	if err != nil {
		// Refused as no_btf: a BTF file that cannot be used is none.
		return co, fmt.Errorf("%w: %w", tracer.ErrNoBTF, err)
	}
	co.Programs.KernelTypes = kernel
	// nf_conntrack is usually a module: its types are in the module BTF.
	if mod, err := btf.LoadKernelModuleSpec("nf_conntrack"); err == nil {
		co.Programs.ExtraRelocationTargets = []*btf.Spec{mod}
	}
	return co, nil
}

// loadCollection loads (without attaching) the programs and maps of backend
// b (of plan's candidates, or all when plan is nil): the verifier and CO-RE
// relocation against the kernel's BTF.
func loadCollection(opts tracer.Options, b tracer.Backend, ringbufOK bool, plan [][]*plannedHook) (*ebpf.Collection, error) {
	co, err := collectionOptions(opts)
	if err != nil {
		return nil, err
	}
	spec, err := loadSpec(opts, b, ringbufOK, plan)
	if err != nil {
		return nil, err
	}
	return newCollection(opts, b, spec, co)
}

// newCollection loads spec: the verifier and CO-RE relocation.
func newCollection(opts tracer.Options, b tracer.Backend, spec *ebpf.CollectionSpec, co ebpf.CollectionOptions) (*ebpf.Collection, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, co)
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			opts.Logger.Debug("verifier log", zap.String("log", fmt.Sprintf("%+v", verr)))
		}
		if errors.Is(err, unix.EPERM) {
			// cilium/ebpf suggests MEMLOCK here, which is removed above;
			// since 5.11 EPERM means missing privileges or a policy.
			return nil, fmt.Errorf("load %s programs: not permitted (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN; "+
				"a lockdown or sandbox may refuse tracing programs): %w", b, err)
		}
		return nil, fmt.Errorf("load %s programs: %w", b, err)
	}
	return coll, nil
}

func init() {
	tracer.Register(tracer.BackendFentry, open)
	tracer.Register(tracer.BackendKprobe, open)
}

// counterLag is Info.CounterLag: an entry is hashed before the exit
// program that counts it runs, microseconds later, or milliseconds when
// the CPU is preempted in between (seen under qemu).
const counterLag = 20 * time.Millisecond

// open starts the fentry or kprobe backend (opts.Backend); its errors say
// why in a tracer.RefusedError.
func open(ctx context.Context, opts tracer.Options) (tracer.Tracer, error) {
	t, err := openBPF(ctx, opts, opts.Backend)
	if err != nil {
		return nil, &tracer.RefusedError{Reason: refusalReason(err), Err: err}
	}
	return t, nil
}

// refusalReason classifies why an eBPF backend could not start.
func refusalReason(err error) string {
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, tracer.ErrNoBTF):
		return "no_btf"
	case errors.Is(err, ErrSelfTest):
		return "self_test_failed"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "permission_denied"
	case errors.As(err, &verr):
		return "verifier_rejected"
	case errors.Is(err, ebpf.ErrNotSupported):
		return "not_supported"
	case strings.Contains(err.Error(), "tracefs"):
		// No perf kprobe PMU and no tracefs to fall back to: kernels
		// without CONFIG_KPROBES, or tracefs not mounted.
		return "unavailable"
	case errors.Is(err, os.ErrNotExist):
		return "symbol_not_found"
	}
	return "error"
}

func openBPF(ctx context.Context, opts tracer.Options, b tracer.Backend) (*bpfTracer, error) {
	ringbufOK := features.HaveMapType(ebpf.RingBuf) == nil
	kernel := newLiveKernel(b)
	if kernel.noModBTF {
		// Debian 11's 5.10: vmlinux BTF, but none for modules.
		return nil, fmt.Errorf("%w: nf_conntrack is a module without BTF (no /sys/kernel/btf/nf_conntrack); fentry cannot attach to its functions", tracer.ErrNoBTF)
	}
	plan, err := planHooks(b, kernel, opts.OnlyHooks)
	if err != nil {
		return nil, err
	}
	spec, err := loadSpec(opts, b, ringbufOK, plan)
	if err != nil {
		return nil, err
	}
	info := tracer.Info{
		Backend:    b,
		RingBuffer: ringbufOK && !opts.ForcePerfBuffer,
		Kernel:     tracer.KernelRelease(),
		CounterLag: counterLag,
		// The programs count every namespace.
		CountsUnwatched: true,
	}
	pins := newPinning(opts, b, spec)
	if pins != nil {
		t, err := adoptPinned(ctx, opts, pins, plan, spec, info)
		if t != nil {
			return t, nil
		}
		if err != nil && ctx.Err() != nil {
			return nil, err // stopped while starting: the pins stay
		}
		if err != nil {
			// Pins of this version that cannot be used (incomplete after
			// a crash, or hooks that miss events now) are replaced.
			opts.Logger.Warn("pinned eBPF programs of this version cannot be adopted: replacing them, counters restart from zero",
				zap.String("pin_dir", pins.dir()), zap.Error(err))
			if rerr := pins.remove(pins.version); rerr != nil {
				// E.g. pins of another user: serve unpinned, said once.
				opts.Logger.Warn("pinned eBPF programs cannot be removed: running unpinned, counters restart with ctagent",
					zap.String("pin_dir", pins.dir()), zap.Error(rerr))
				pins = nil
			}
			if plan, err = planHooks(b, kernel, opts.OnlyHooks); err != nil {
				return nil, err
			}
		}
	}
	co, err := collectionOptions(opts)
	if err != nil {
		return nil, err
	}
	coll, err := newCollection(opts, b, spec, co)
	if err != nil {
		return nil, err
	}
	t := newBPFTracer(opts, plan, spec, info)
	t.coll, t.maps, t.byProg = coll, coll.Maps, coll.Programs
	if err := t.attachAll(); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.start(ctx, opts); err != nil {
		t.Close()
		return nil, err
	}
	if pins != nil {
		pins.pin(t)
	}
	t.logHooks()
	return t, nil
}

// newBPFTracer returns a tracer without programs or maps yet.
func newBPFTracer(opts tracer.Options, plan [][]*plannedHook, spec *ebpf.CollectionSpec, info tracer.Info) *bpfTracer {
	return &bpfTracer{
		Table:  ctnetlink.NewTable(),
		plan:   plan,
		vars:   spec.Variables,
		log:    opts.Logger,
		byName: map[string]*ebpf.Program{},
		done:   make(chan struct{}),
		info:   info,
	}
}

// start runs what follows the attach, for loaded and adopted programs: BPF
// statistics, the event reader, the self-test, and the hook list.
func (t *bpfTracer) start(ctx context.Context, opts tracer.Options) error {
	if opts.BPFStats {
		// Not fatal: the programs run, Programs reports zeros.
		var err error
		if t.stats, err = EnableBPFStats(); err != nil {
			opts.Logger.Warn("BPF run-time statistics not available", zap.Error(err))
		}
	}
	// The reader runs during the self-test: a perf event array has no
	// buffer until it is opened, and the self-test's events are dropped.
	if err := t.startReader(opts); err != nil {
		return err
	}
	if !opts.SkipSelfTest {
		if err := t.proveHooks(ctx); err != nil {
			return err
		}
	}
	t.publishHooks()
	return nil
}

// logHooks logs which hook serves each group, and the candidates not used.
func (t *bpfTracer) logHooks() {
	b := t.info.Backend
	for _, h := range t.info.HookStatus {
		if h.Active {
			t.log.Info("hook serves its events", zap.String("backend", string(b)), zap.String("group", h.Group),
				zap.Strings("serves", h.Serves), zap.String("hook", h.Hook), zap.String("self_test", string(h.State)), zap.String("detail", h.Detail))
		} else if h.State != tracer.HookStandby && h.State != tracer.HookUnavailable {
			t.log.Info("hook candidate not used", zap.String("backend", string(b)), zap.String("group", h.Group),
				zap.String("hook", h.Hook), zap.String("state", string(h.State)), zap.String("detail", h.Detail))
		}
	}
}

// setVar sets a global variable of the programs (in .bss or .data) by
// writing its bytes into the global-data map: the same for a collection
// loaded here and for maps adopted from pins, which have no
// ebpf.Collection and so no ebpf.Variable.
func (t *bpfTracer) setVar(name string, v any) error {
	vs := t.vars[name]
	if vs == nil {
		return fmt.Errorf("variable %s not in the BPF object", name)
	}
	m := t.maps[vs.SectionName]
	if m == nil {
		return fmt.Errorf("set %s: map %s not loaded", name, vs.SectionName)
	}
	raw, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil || uint32(len(raw)) != vs.Size() {
		return fmt.Errorf("set %s: %T is not its %d bytes (%v)", name, v, vs.Size(), err)
	}
	buf := make([]byte, m.ValueSize())
	t.varMu.Lock()
	defer t.varMu.Unlock()
	if err := m.Lookup(uint32(0), buf); err != nil {
		return fmt.Errorf("set %s: read %s: %w", name, vs.SectionName, err)
	}
	copy(buf[vs.Offset:], raw)
	if err := m.Update(uint32(0), buf, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	return nil
}

// attachAll attaches, in every hook group, the first usable candidate that
// attaches. A required group with none fails the backend; an optional one
// is logged and left out.
func (t *bpfTracer) attachAll() error {
	for _, group := range t.plan {
		if len(group) == 0 {
			continue
		}
		if _, err := t.attachNext(group, -1); err != nil {
			if group[0].group.optional {
				t.log.Warn("optional hook not attached: its counters stay 0",
					zap.String("group", group[0].group.name), zap.Strings("serves", group[0].group.serves), zap.Error(err))
				continue
			}
			return err
		}
	}
	return nil
}

// attachNext attaches the first usable candidate of group after index from
// and returns its index. Candidates that fail are marked attach_failed.
func (t *bpfTracer) attachNext(group []*plannedHook, from int) (int, error) {
	var errs []error
	for i := from + 1; i < len(group); i++ {
		p := group[i]
		if !p.usable() {
			errs = append(errs, fmt.Errorf("%s: %s: %w", p.name(), p.status.Detail, os.ErrNotExist))
			continue
		}
		if p.cand.claims {
			if err := t.setUseClaims(true); err != nil {
				return -1, err
			}
		}
		if err := p.attach(t.byProg); err != nil {
			p.status.State, p.status.Detail = tracer.HookAttachFailed, err.Error()
			errs = append(errs, err)
			continue
		}
		p.status.Active = true
		return i, nil
	}
	if len(errs) == 0 {
		return -1, fmt.Errorf("hook group %s: no candidate left", group[0].group.name)
	}
	return -1, fmt.Errorf("hook group %s: %w", group[0].group.name, errors.Join(errs...))
}

// setUseClaims turns the claims of nf_ct_delete's entry program on or off.
func (t *bpfTracer) setUseClaims(on bool) error {
	var b uint8
	if on {
		b = 1
	}
	return t.setVar("use_claims", b)
}

// publishHooks fills Info.Hooks, Info.HookStatus and the program list from
// the active candidates.
func (t *bpfTracer) publishHooks() {
	t.info.Hooks, t.info.HookStatus, t.progs = nil, nil, nil
	for _, group := range t.plan {
		for _, p := range group {
			if p.status.State == "" {
				p.status.State = tracer.HookStandby
			}
			t.info.HookStatus = append(t.info.HookStatus, p.status)
			if !p.status.Active {
				continue
			}
			t.info.Hooks = append(t.info.Hooks, p.hookNames()...)
			for _, a := range []attachment{p.entry, p.exit} {
				if a.prog == "" {
					continue
				}
				t.progs = append(t.progs, tracer.ProgramStats{Name: a.prog, Hook: a.kind + "/" + p.symbol})
				t.byName[a.prog] = t.byProg[a.prog]
			}
		}
	}
}

// startReader opens the ring or perf buffer and starts the decoding loop.
// On failure t.done is closed, for Close.
func (t *bpfTracer) startReader(opts tracer.Options) (err error) {
	size := opts.EventBuffer
	if size <= 0 {
		size = 4096
	}
	t.events = make(chan tracer.Event, size)
	t.boot = bootOffset()
	t.salt = rand.Uint64()
	defer func() {
		if err != nil {
			close(t.done) // no readLoop to close it
		}
	}()
	var next func() ([]byte, uint64, error)
	if t.info.RingBuffer {
		rd, err := ringbuf.NewReader(t.maps["events"])
		if err != nil {
			return fmt.Errorf("open ring buffer: %w", err)
		}
		t.reader = rd
		var rec ringbuf.Record
		next = func() ([]byte, uint64, error) {
			err := rd.ReadInto(&rec)
			return rec.RawSample, 0, err
		}
	} else {
		per := opts.PerfBufferSize
		if per <= 0 {
			per = 256 << 10
		}
		rd, err := perf.NewReader(t.maps["events_perf"], per)
		if err != nil {
			return fmt.Errorf("open perf buffer: %w", err)
		}
		t.reader = rd
		var rec perf.Record
		next = func() ([]byte, uint64, error) {
			err := rd.ReadInto(&rec)
			return rec.RawSample, rec.LostSamples, err
		}
	}
	go t.readLoop(next)
	return nil
}

func (t *bpfTracer) readLoop(next func() ([]byte, uint64, error)) {
	defer close(t.done)
	for {
		raw, lost, err := next()
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, perf.ErrClosed) {
				return
			}
			// Unexpected (e.g. a failed epoll wait): say so, and do not
			// spin on an error that persists.
			t.log.Warn("read event buffer", zap.Error(err))
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if lost > 0 {
			t.lostU[0].Add(lost)
			continue
		}
		ev, err := decodeEvent(raw, t.boot)
		if err != nil {
			t.lostU[1].Add(1)
			continue
		}
		ev.Cookie = hideAddress(ev.Cookie, t.salt)
		select {
		case t.events <- ev:
		default:
			t.lostU[2].Add(1)
		}
	}
}

// hideAddress turns the kernel address of an entry into a cookie that still
// identifies it (the mix is a bijection) but does not reveal the address,
// which would weaken KASLR wherever events are shown. 0 stays 0.
func hideAddress(addr, salt uint64) uint64 {
	if addr == 0 {
		return 0
	}
	x := addr ^ salt // splitmix64's finalizer
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// bootOffset is wall clock minus CLOCK_MONOTONIC (bpf_ktime_get_ns).
func bootOffset() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

func (t *bpfTracer) Info() tracer.Info { return t.info }

// SetEvents sets the programs' events_off variable: off, they write no
// record to the ring (or perf) buffer.
func (t *bpfTracer) SetEvents(on bool) error {
	var off uint8
	if !on {
		off = 1
	}
	return t.setVar("events_off", off)
}

// Watch returns nil: the programs count every namespace.
func (t *bpfTracer) Watch(tracer.Namespace) error { return nil }

// Unwatch does nothing: the programs count every namespace.
func (t *bpfTracer) Unwatch(uint32) {}

func (t *bpfTracer) Events() <-chan tracer.Event { return t.events }

// counterMaps are the maps that hold the counters; a key can be in both
// (see counters_spill in bpf/conntrack.bpf.c).
var counterMaps = []string{"counters", "counters_spill"}

// Counters sums the per-CPU counters of every key.
func (t *bpfTracer) Counters() (tracer.Counters, error) {
	out := tracer.Counters{}
	var (
		key    conntrackCtCounterKey
		perCPU []conntrackCtCounterValue
	)
	for _, name := range counterMaps {
		it := t.maps[name].Iterate()
		for it.Next(&key, &perCPU) {
			k := tracer.Key{NetNS: key.Netns, Family: key.Family, Protocol: key.Protocol}
			v := out[k]
			for _, c := range perCPU {
				v.Add(valuesFromKernel(c))
			}
			out[k] = v
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("read %s map: %w", name, err)
		}
	}
	return out, nil
}

func valuesFromKernel(c conntrackCtCounterValue) tracer.Values {
	v := tracer.Values{
		Created:          c.Created,
		Destroyed:        c.Destroyed,
		DestroyedNoStart: c.DestroyedNoStart,
		LifetimeSum:      time.Duration(c.LifetimeSumNs),
	}
	for kr, r := range failReasons {
		v.Failed[r] = c.Failed[kr]
	}
	v.LifetimeBuckets = c.LifetimeBuckets
	return v
}

func (t *bpfTracer) Lost() (map[tracer.LostReason]uint64, error) {
	out := map[tracer.LostReason]uint64{
		tracer.LostPerfSamples: t.lostU[0].Load(),
		tracer.LostDecodeError: t.lostU[1].Load(),
		tracer.LostChannelFull: t.lostU[2].Load(),
	}
	for kr, reason := range lostReasons {
		var perCPU []uint64
		if err := t.maps["lost"].Lookup(uint32(kr), &perCPU); err != nil {
			return out, fmt.Errorf("read lost[%s]: %w", reason, err)
		}
		var sum uint64
		for _, n := range perCPU {
			sum += n
		}
		out[reason] = sum
	}
	return out, nil
}

// Forget deletes every counters key of the namespace from the kernel maps.
func (t *bpfTracer) Forget(netns uint32) error {
	t.ForgetStats(netns)
	for _, name := range counterMaps {
		m := t.maps[name]
		var (
			key    conntrackCtCounterKey
			perCPU []conntrackCtCounterValue
			keys   []conntrackCtCounterKey
		)
		it := m.Iterate()
		for it.Next(&key, &perCPU) {
			if key.Netns == netns {
				keys = append(keys, key)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("forget netns %d: iterate %s: %w", netns, name, err)
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("forget netns %d: %w", netns, err)
			}
		}
	}
	return nil
}

func (t *bpfTracer) Programs() ([]tracer.ProgramStats, error) {
	out := make([]tracer.ProgramStats, 0, len(t.progs))
	for _, p := range t.progs {
		s, err := t.byName[p.Name].Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", p.Name, err)
		}
		p.RunCount, p.RunTime = s.RunCount, s.Runtime
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hook < out[j].Hook })
	return out, nil
}

// Close detaches every program, stops the reader and frees the maps.
func (t *bpfTracer) Close() error {
	t.closing.Do(func() {
		var errs []error
		for _, group := range t.plan {
			for _, p := range group {
				if err := p.detach(); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if t.reader != nil {
			errs = append(errs, t.reader.Close())
		}
		if t.events != nil {
			<-t.done
			close(t.events)
		}
		if t.stats != nil {
			t.stats.Close()
		}
		if t.coll != nil {
			t.coll.Close()
		}
		for _, c := range t.owned {
			c.Close()
		}
		t.closed = errors.Join(errs...)
	})
	return t.closed
}

// EnableBPFStats turns on the kernel's run-time statistics of BPF programs
// (kernel.bpf_stats_enabled, Linux 5.8) until the returned Closer is closed.
func EnableBPFStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF stats: %w", err)
	}
	return c, nil
}
