package ebpftracer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// Pinning keeps the programs counting while ctagent is down.
//
// Layout under Options.PinPath (bpffs):
//
//	<version>/maps/<map>            every map of the collection (counters, lost, starts, ..., _bss)
//	<version>/progs/<program>       every attached program
//	<version>/links/<program>@<sym> the link of that program to kernel symbol sym
//
// version is the backend and a hash of the compiled BPF object and of the
// maps' and programs' layout (pinVersion). A link pin keeps its program
// attached, and with it the maps it uses, after the last file descriptor is
// closed; so the counters go on counting while no agent runs.
//
// The next Open of the same version ADOPTS the pins instead of attaching new
// programs: it opens the pinned maps, programs and links, runs the self-test
// against them and reads the same counters on. Attaching a second
// generation of programs and handing it the pinned maps would double count
// every event for as long as both are attached; adopting leaves no gap and
// no overlap. An Open of another version (an upgrade, or flags that change
// the layout such as --tracer.perf-buffer) attaches anew, pins, and then
// removes the old version's pins with one log line: its counters restart
// from zero. The sizes of the maps are not part of the version (the size of
// the creation-time LRU follows nf_conntrack_max, which may change between
// two starts); adopted maps keep the size they were created with, and Open
// says so when the flags now ask for another one.
//
// Where a link cannot be pinned the backend runs unpinned, said in one log
// line, never half pinned: kprobes attached through a perf event have a
// bpf_link only since Linux 5.15 (BPF_LINK_TYPE_PERF_EVENT, commit
// b89fbfbb854c "bpf: Implement minimal BPF perf link"); before, cilium/ebpf
// attaches them with the PERF_EVENT_IOC_SET_BPF ioctl, and the program is
// detached when the perf event's file descriptor closes. Tracing (fentry and
// fexit) links are pinnable since Linux 5.7, which fentry on modules
// (module BTF, 5.11) needs anyway.
type pinning struct {
	root    string // Options.PinPath
	version string
	log     *zap.Logger
}

// DefaultPinPath is the default of --bpf.pin-path.
const DefaultPinPath = "/sys/fs/bpf/ctagent"

// bpffsMagic is BPF_FS_MAGIC, the f_type of bpffs in statfs.
const bpffsMagic = unix.BPF_FS_MAGIC

// newPinning returns the pinning of backend b's collection spec under
// opts.PinPath, or nil when pinning is off or the path is not on bpffs
// (said in one log line: the backend then runs unpinned).
func newPinning(opts tracer.Options, b tracer.Backend, spec *ebpf.CollectionSpec) *pinning {
	if opts.PinPath == "" {
		return nil
	}
	if err := onBPFFS(opts.PinPath); err != nil {
		opts.Logger.Warn("eBPF programs are not pinned: counters restart with ctagent", zap.String("pin_path", opts.PinPath), zap.Error(err))
		return nil
	}
	if err := os.MkdirAll(opts.PinPath, 0o700); err != nil {
		opts.Logger.Warn("eBPF programs are not pinned: counters restart with ctagent", zap.String("pin_path", opts.PinPath), zap.Error(err))
		return nil
	}
	return &pinning{root: opts.PinPath, version: pinVersion(b, spec, opts.OnlyHooks), log: opts.Logger}
}

// onBPFFS says whether path is a directory below a bpffs mount (not the
// mount itself: the pins of other programs live there, and every other
// entry of the pin path is taken for an old version and removed): the
// nearest existing directory above it must be on bpffs.
func onBPFFS(path string) error {
	p := filepath.Dir(filepath.Clean(path))
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != bpffsMagic {
				return fmt.Errorf("%s is not on bpffs: the pin path must be a directory below a bpffs mount (mount -t bpf bpf /sys/fs/bpf)", p)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" || p == "." {
			return fmt.Errorf("statfs %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
}

// pinVersion names the layout of backend b's programs and maps: the
// backend, and a hash of the compiled object, of each map's type, key and
// value size and flags, of each program's type and attach target, and of
// the hook restriction (--tracer.hook in tests). Any change in these is an
// incompatible upgrade: the pins are replaced.
func pinVersion(b tracer.Backend, spec *ebpf.CollectionSpec, only map[string]string) string {
	h := sha256.New()
	h.Write(_ConntrackBytes)
	fmt.Fprintf(h, "backend %s\n", b)
	for _, name := range sortedKeys(spec.Maps) {
		m := spec.Maps[name]
		fmt.Fprintf(h, "map %s %s %d %d %#x\n", name, m.Type, m.KeySize, m.ValueSize, m.Flags)
	}
	for _, name := range sortedKeys(spec.Programs) {
		p := spec.Programs[name]
		fmt.Fprintf(h, "prog %s %s %s\n", name, p.Type, p.AttachTo)
	}
	for _, g := range sortedKeys(only) {
		fmt.Fprintf(h, "only %s %s\n", g, only[g])
	}
	return string(b) + "-" + hex.EncodeToString(h.Sum(nil)[:8])
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// pinName makes a file name for bpffs, which refuses dots in names
// (kernel/bpf/inode.c, bpf_lookup: "reserved for future use"): ".bss"
// becomes "_bss", "nf_ct_delete.part.0" "nf_ct_delete-part-0".
func pinName(name string) string {
	if strings.HasPrefix(name, ".") {
		name = "_" + name[1:]
	}
	return strings.ReplaceAll(name, ".", "-")
}

// linkPinName is the pin of program prog's link to kernel symbol sym: the
// hook it is, readable with ls.
func linkPinName(prog, sym string) string { return prog + "@" + pinName(sym) }

// dir is this version's directory.
func (pn *pinning) dir() string { return filepath.Join(pn.root, pn.version) }

// remove removes the pins of version.
func (pn *pinning) remove(version string) error {
	if err := os.RemoveAll(filepath.Join(pn.root, version)); err != nil {
		return fmt.Errorf("remove pins: %w", err)
	}
	return nil
}

// removeOthers removes the pins of every other version, with one log line.
// Their programs are detached when no process holds them any more.
func (pn *pinning) removeOthers() {
	entries, err := os.ReadDir(pn.root)
	if err != nil {
		pn.log.Warn("list pinned eBPF versions", zap.String("pin_path", pn.root), zap.Error(err))
		return
	}
	var old []string
	var errs []error
	for _, e := range entries {
		if e.Name() == pn.version {
			continue
		}
		old = append(old, e.Name())
		errs = append(errs, pn.remove(e.Name()))
	}
	if len(old) == 0 {
		return
	}
	pn.log.Warn("replaced the pinned eBPF programs and maps of another version (an upgrade, or flags that change their layout): counters restart from zero",
		zap.String("pin_path", pn.root), zap.Strings("old", old), zap.String("new", pn.version), zap.Error(errors.Join(errs...)))
}

// pin pins t's maps, programs and links in this version's directory.
// Where the kernel cannot pin a link, or pinning fails otherwise, it
// removes what it pinned and says in one line that t runs unpinned.
func (pn *pinning) pin(t *bpfTracer) {
	dir := pn.dir()
	err := pn.pinAll(t, dir)
	if err == nil {
		t.pins, t.info.PinDir = pn, dir
		pn.log.Info("eBPF programs and maps pinned: they keep counting while ctagent is down, and the next start continues their counters",
			zap.String("pin_dir", dir))
		pn.removeOthers()
		return
	}
	if rerr := pn.remove(pn.version); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		pn.log.Warn("eBPF links cannot be pinned on this kernel (kprobe links attached through perf events are pinnable since Linux 5.15): running unpinned, counters restart with ctagent",
			zap.String("backend", string(t.info.Backend)), zap.Error(err))
	} else {
		pn.log.Warn("eBPF programs could not be pinned: running unpinned, counters restart with ctagent",
			zap.String("pin_dir", dir), zap.Error(err))
	}
	pn.removeOthers()
}

func (pn *pinning) pinAll(t *bpfTracer, dir string) error {
	for _, sub := range []string{"maps", "progs", "links"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return fmt.Errorf("pin: %w", err)
		}
	}
	// Links last: a version directory with every link pinned is complete.
	var links []func() error
	for _, group := range t.plan {
		for _, p := range group {
			for i, l := range p.links {
				prog := p.linkProgs[i]
				if err := t.byProg[prog].Pin(filepath.Join(dir, "progs", prog)); err != nil {
					return fmt.Errorf("pin program %s: %w", prog, err)
				}
				path := filepath.Join(dir, "links", linkPinName(prog, p.symbol))
				links = append(links, func() error {
					if err := l.Pin(path); err != nil {
						return fmt.Errorf("pin link of %s: %w", prog, err)
					}
					return nil
				})
			}
		}
	}
	for _, name := range sortedKeys(t.maps) {
		if err := t.maps[name].Pin(filepath.Join(dir, "maps", pinName(name))); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for _, pin := range links {
		if err := pin(); err != nil {
			return err
		}
	}
	return nil
}

// adoptPinned opens the pins of this version, when there are any, and
// starts a tracer on them (the self-test included). nil, nil: nothing is
// pinned. An error: the pins are unusable and should be replaced.
func adoptPinned(ctx context.Context, opts tracer.Options, pn *pinning, plan [][]*plannedHook, spec *ebpf.CollectionSpec, info tracer.Info) (*bpfTracer, error) {
	dir := pn.dir()
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("adopt pins: %w", err)
	}
	t := newBPFTracer(opts, plan, spec, info)
	t.adopted, t.pins = true, pn
	t.info.PinDir, t.info.Adopted = dir, true
	t.maps, t.byProg = map[string]*ebpf.Map{}, map[string]*ebpf.Program{}
	if err := t.adopt(dir, spec); err != nil {
		t.Close()
		return nil, err
	}
	var off uint8
	if opts.DisableEvents {
		off = 1
	}
	if err := t.setVar("events_off", off); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.start(ctx, opts); err != nil {
		t.Close()
		return nil, err
	}
	pn.log.Info("adopted the pinned eBPF programs and maps: they counted while ctagent was down, the counters continue",
		zap.String("pin_dir", dir))
	t.logHooks()
	pn.removeOthers()
	return t, nil
}

// adopt opens the pinned maps, programs and links of dir into t and marks
// the pinned candidates active. Every required hook group must have one.
func (t *bpfTracer) adopt(dir string, spec *ebpf.CollectionSpec) error {
	var resized []string
	for _, name := range sortedKeys(spec.Maps) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", pinName(name)), nil)
		if err != nil {
			return fmt.Errorf("adopt map %s: %w", name, err)
		}
		t.owned = append(t.owned, m)
		t.maps[name] = m
		ms := spec.Maps[name]
		if ms.Type != ebpf.PerfEventArray && ms.MaxEntries != 0 && m.MaxEntries() != ms.MaxEntries {
			resized = append(resized, fmt.Sprintf("%s: %d (asked: %d)", name, m.MaxEntries(), ms.MaxEntries))
		}
	}
	if len(resized) > 0 {
		t.log.Info("adopted maps keep the size they were pinned with, until ctagent uninstall removes the pins", zap.Strings("maps", resized))
	}
	entries, err := os.ReadDir(filepath.Join(dir, "links"))
	if err != nil {
		return fmt.Errorf("adopt links: %w", err)
	}
	pinned := map[string]string{} // program -> link pin name
	for _, e := range entries {
		prog, _, ok := strings.Cut(e.Name(), "@")
		if !ok {
			return fmt.Errorf("adopt links: unexpected pin %s", e.Name())
		}
		pinned[prog] = e.Name()
	}
	for _, group := range t.plan {
		for _, p := range group {
			var progs []string
			found := 0
			for _, a := range []attachment{p.exit, p.entry} {
				if a.prog != "" {
					progs = append(progs, a.prog)
					if pinned[a.prog] != "" {
						found++
					}
				}
			}
			if found == 0 {
				continue
			}
			if found != len(progs) || !p.usable() || activeIndex(group) >= 0 {
				return fmt.Errorf("adopt links: hook %s is pinned incompletely or is not usable on this kernel", p.name())
			}
			for _, prog := range progs {
				name := pinned[prog]
				delete(pinned, prog)
				if name != linkPinName(prog, p.symbol) {
					return fmt.Errorf("adopt links: %s is pinned as %s, this kernel's hook is %s", prog, name, p.name())
				}
				pr, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "progs", prog), nil)
				if err != nil {
					return fmt.Errorf("adopt program %s: %w", prog, err)
				}
				t.owned = append(t.owned, pr)
				t.byProg[prog] = pr
				l, err := link.LoadPinnedLink(filepath.Join(dir, "links", name), nil)
				if err != nil {
					return fmt.Errorf("adopt link %s: %w", name, err)
				}
				p.links = append(p.links, l)
				p.linkProgs = append(p.linkProgs, prog)
			}
			p.status.Active = true
		}
		if len(group) > 0 && activeIndex(group) < 0 && !group[0].group.optional {
			return fmt.Errorf("adopt links: no pinned hook for group %s", group[0].group.name)
		}
	}
	if len(pinned) > 0 {
		return fmt.Errorf("adopt links: pins of no planned hook: %v", sortedKeys(pinned))
	}
	return nil
}

// RemovePins removes the pinned eBPF programs and maps of every version
// under path for good (ctagent uninstall): the programs are detached when
// no running ctagent holds them any more. It refuses a path that is not on
// bpffs, so that a mistyped flag cannot remove other files. removed is
// false when nothing was pinned.
func RemovePins(path string) (removed bool, err error) {
	if path == "" {
		return false, errors.New("no pin path given")
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("remove pins: %w", err)
	}
	if err := onBPFFS(path); err != nil {
		return false, fmt.Errorf("remove pins: refusing to remove %s: %w", path, err)
	}
	if err := os.RemoveAll(path); err != nil {
		return false, fmt.Errorf("remove pins: %w", err)
	}
	return true, nil
}
