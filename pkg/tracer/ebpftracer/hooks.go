package ebpftracer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/ctagent/ctagent/pkg/tracer"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// ErrFentryUnsupported means the kernel loads tracing programs but cannot
// attach them: BPF trampolines need ftrace direct calls, which arm64 has
// only since Linux 6.4 (measured: Debian 12's arm64 6.1 answers ENOTSUPP).
var ErrFentryUnsupported = errors.New("this kernel cannot attach fentry/fexit programs (no ftrace direct calls; arm64 before 6.4)")

// A hookGroup is one job in the kernel (confirming an entry, a ctnetlink
// insert, a removal, an allocation) and the hooks that can observe it, best
// first. The eBPF backends attach the first candidate that this kernel has
// and that attaches, prove at start that it sees every event (selftest.go)
// and move to the next candidate when it does not.
type hookGroup struct {
	name       string   // stable, for logs and metric labels
	serves     []string // the counters it feeds
	optional   bool     // the backend runs without it (its counters stay 0)
	candidates []candidate
}

// candidate is one way of observing a hookGroup's job.
type candidate struct {
	// symbols are the names of the kernel function across kernels; the
	// first one this kernel has is used.
	symbols []string
	// clone instead names a gcc clone by its prefix ("nf_ct_delete.part."):
	// the first such symbol of nf_conntrack in kallsyms. Clones have no BTF
	// (pahole leaves them out), so only kprobes can attach.
	clone                            string
	fentry, fexit, kprobe, kretprobe string // program names; "" where none
	// claims: the program runs before the kernel picks which caller
	// removes an entry, and needs the claims map (use_claims).
	claims bool
	// funcRet: the fexit program uses bpf_get_func_ret (Linux 5.17).
	funcRet bool
}

// hookGroups are the groups and their candidates, best first. Why these,
// per kernel: docs/design.md ("Hooks, chosen by proof").
var hookGroups = []hookGroup{
	{
		name:   "confirm",
		serves: []string{"created", "clash_resolved", "confirm_drop"},
		candidates: []candidate{{
			symbols: []string{"__nf_conntrack_confirm"},
			fentry:  "fentry_confirm", fexit: "fexit_confirm",
			kprobe: "kprobe_confirm", kretprobe: "kretprobe_confirm",
		}},
	},
	{
		name:   "ctnetlink_insert",
		serves: []string{"created", "exists", "no_space", "other"},
		candidates: []candidate{{
			symbols: []string{"nf_conntrack_hash_check_insert"},
			fexit:   "fexit_check_insert",
			kprobe:  "kprobe_check_insert", kretprobe: "kretprobe_check_insert",
		}},
	},
	{
		name:   "destroy",
		serves: []string{"destroyed"},
		candidates: []candidate{
			// Static; runs for the caller that won test_and_set_bit(
			// IPS_DYING_BIT) only, on every removal path. Debian's 6.1,
			// 6.12 and 7.2 have __nf_ct_delete_from_lists, 5.10 has
			// nf_ct_delete_from_lists (objdump of their nf_conntrack.ko).
			{symbols: []string{"__nf_ct_delete_from_lists", "nf_ct_delete_from_lists"},
				fentry: "fentry_delete_from_lists", kprobe: "kprobe_delete_from_lists"},
			// Exported, but gcc may split it: Debian's 5.10 and 7.2 builds
			// call nf_ct_delete.part.0 directly from gc, flush and early drop.
			{symbols: []string{"nf_ct_delete"}, fentry: "fentry_delete", kprobe: "kprobe_delete", claims: true},
			{clone: "nf_ct_delete.part.", kprobe: "kprobe_delete_part"},
			// Called through nf_ct_put or a function pointer, never inlined;
			// runs when the last reference goes, a little after the removal.
			{symbols: []string{"nf_ct_destroy", "destroy_conntrack"}, fentry: "fentry_destroy", kprobe: "kprobe_destroy"},
		},
	},
	{
		name:     "alloc",
		serves:   []string{"table_full"},
		optional: true,
		candidates: []candidate{{
			symbols: []string{"__nf_conntrack_alloc"},
			fexit:   "fexit_alloc", funcRet: true,
			kprobe: "kprobe_alloc", kretprobe: "kretprobe_alloc",
		}},
	},
}

// programs returns the entry and exit programs of c in backend b, with the
// attach kind of each ("" when c has none).
func (c candidate) programs(b tracer.Backend) (entry, exit attachment) {
	if b == tracer.BackendFentry {
		if c.fentry != "" {
			entry = attachment{c.fentry, "fentry"}
		}
		if c.fexit != "" {
			exit = attachment{c.fexit, "fexit"}
		}
		return entry, exit
	}
	if c.kprobe != "" {
		entry = attachment{c.kprobe, "kprobe"}
	}
	if c.kretprobe != "" {
		exit = attachment{c.kretprobe, "kretprobe"}
	}
	return entry, exit
}

// attachment is one program and how it attaches.
type attachment struct {
	prog string
	kind string // fentry, fexit, kprobe, kretprobe
}

// plannedHook is a candidate resolved against this kernel.
type plannedHook struct {
	group       *hookGroup
	cand        candidate
	symbol      string // the kernel's name for it; "" when unavailable
	entry, exit attachment
	status      tracer.HookStatus
	links       []link.Link
	linkProgs   []string // the program of each link
}

// name is how the hook appears in logs and metrics.
func (p *plannedHook) name() string {
	kind := p.entry.kind
	if kind == "" {
		kind = p.exit.kind
	}
	sym := p.symbol
	if sym == "" {
		sym = p.cand.clone + "N"
		if len(p.cand.symbols) > 0 {
			sym = strings.Join(p.cand.symbols, "|")
		}
	}
	return kind + "/" + sym
}

// kernelFunctions says which functions this kernel has, for planHooks.
type kernelFunctions interface {
	// has reports whether a function can be attached by name with kind.
	has(kind, name string) bool
	// clone returns the first kallsyms symbol of nf_conntrack that starts
	// with prefix, or "".
	clone(prefix string) string
	// funcRet says whether fexit programs can call bpf_get_func_ret.
	funcRet() bool
}

// planHooks resolves every candidate of backend b against the kernel and
// returns them grouped, in order. only restricts a group to the candidate
// whose symbol or clone prefix it names (tests and --tracer.hook).
func planHooks(b tracer.Backend, fns kernelFunctions, only map[string]string) ([][]*plannedHook, error) {
	funcRet := fns.funcRet()
	var plan [][]*plannedHook
	for gi := range hookGroups {
		g := &hookGroups[gi]
		var group []*plannedHook
		for _, c := range g.candidates {
			entry, exit := c.programs(b)
			if entry.prog == "" && exit.prog == "" {
				continue // no program of this backend
			}
			if want, ok := only[g.name]; ok && !c.matches(want) {
				continue
			}
			p := &plannedHook{group: g, cand: c, entry: entry, exit: exit}
			p.status = tracer.HookStatus{Group: g.name, Serves: g.serves}
			kind := entry.kind
			if kind == "" {
				kind = exit.kind
			}
			switch {
			case c.clone != "":
				p.symbol = fns.clone(c.clone)
			default:
				for _, s := range c.symbols {
					if fns.has(kind, s) {
						p.symbol = s
						break
					}
				}
			}
			p.status.Hook = p.name()
			switch {
			case p.symbol == "":
				p.status.State, p.status.Detail = tracer.HookUnavailable, "not in this kernel's "+symbolSource(kind)
			case c.funcRet && b == tracer.BackendFentry && !funcRet:
				p.status.State, p.status.Detail = tracer.HookUnavailable, "needs bpf_get_func_ret (Linux 5.17)"
			}
			group = append(group, p)
		}
		if want, ok := only[g.name]; ok && len(group) == 0 {
			return nil, fmt.Errorf("hook %q: no %s candidate of group %s has it", want, b, g.name)
		}
		plan = append(plan, group)
	}
	return plan, nil
}

// matches says whether a --tracer.hook value names this candidate.
func (c candidate) matches(name string) bool {
	if c.clone != "" && strings.HasPrefix(name, c.clone) {
		return true
	}
	for _, s := range c.symbols {
		if s == name {
			return true
		}
	}
	return false
}

func symbolSource(kind string) string {
	if kind == "fentry" || kind == "fexit" {
		return "BTF"
	}
	return "kallsyms"
}

// usable says whether the candidate's programs are loaded.
func (p *plannedHook) usable() bool { return p.symbol != "" && p.status.State == "" }

// configureSpec keeps the programs of usable candidates in spec, points
// fentry/fexit programs at the name this kernel has, and deletes the rest.
func configureSpec(spec *ebpf.CollectionSpec, plan [][]*plannedHook) {
	keep := map[string]bool{}
	for _, group := range plan {
		for _, p := range group {
			if !p.usable() {
				continue
			}
			for _, a := range []attachment{p.entry, p.exit} {
				if a.prog == "" {
					continue
				}
				keep[a.prog] = true
				if ps := spec.Programs[a.prog]; ps != nil && (a.kind == "fentry" || a.kind == "fexit") {
					ps.AttachTo = p.symbol
				}
			}
		}
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
}

// attach attaches p's programs: the exit program first, so that no entry
// program stashes state that no exit program will take (an exit without its
// entry, for a call already running, is counted as inflight_miss).
func (p *plannedHook) attach(progs map[string]*ebpf.Program) error {
	for _, a := range []attachment{p.exit, p.entry} {
		if a.prog == "" {
			continue
		}
		prog := progs[a.prog]
		if prog == nil {
			p.detach()
			return fmt.Errorf("program %s not loaded", a.prog)
		}
		var (
			l   link.Link
			err error
		)
		switch a.kind {
		case "fentry", "fexit":
			l, err = link.AttachTracing(link.TracingOptions{Program: prog})
		case "kprobe":
			l, err = link.Kprobe(p.symbol, prog, nil)
		case "kretprobe":
			l, err = link.Kretprobe(p.symbol, prog, nil)
		}
		if err != nil {
			p.detach()
			if (a.kind == "fentry" || a.kind == "fexit") && errors.Is(err, ebpf.ErrNotSupported) {
				err = fmt.Errorf("%w: %w", ErrFentryUnsupported, err)
			}
			return fmt.Errorf("attach %s/%s: %w", a.kind, p.symbol, err)
		}
		p.links = append(p.links, l)
		p.linkProgs = append(p.linkProgs, a.prog)
	}
	return nil
}

// detach closes p's links.
func (p *plannedHook) detach() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links, p.linkProgs = nil, nil
	return errors.Join(errs...)
}

// hookNames returns "kind/symbol" of each attached program.
func (p *plannedHook) hookNames() []string {
	var out []string
	for _, a := range []attachment{p.entry, p.exit} {
		if a.prog != "" {
			out = append(out, a.kind+"/"+p.symbol)
		}
	}
	return out
}

// haveFuncRet says whether tracing programs may call bpf_get_func_ret
// (Linux 5.17): the kernel's enum bpf_func_id names it. cilium/ebpf has no
// helper probe for tracing programs.
func haveFuncRet(specs []*btf.Spec) bool {
	for _, s := range specs {
		var ids *btf.Enum
		if err := s.TypeByName("bpf_func_id", &ids); err != nil {
			continue
		}
		for _, v := range ids.Values {
			if v.Name == "BPF_FUNC_get_func_ret" {
				return true
			}
		}
	}
	return false
}

// liveKernel answers kernelFunctions from the running kernel: BTF (vmlinux
// and nf_conntrack's module BTF) for fentry/fexit, kallsyms for kprobes.
type liveKernel struct {
	btfSpecs []*btf.Spec
	noModBTF bool            // nf_conntrack is a module without BTF: no fentry on it
	syms     map[string]bool // candidate symbols kallsyms lists
	clones   []string        // symbols with a candidate clone prefix, in kallsyms order
	symsErr  error
}

// newLiveKernel reads what planHooks needs for backend b.
func newLiveKernel(b tracer.Backend) *liveKernel {
	k := &liveKernel{}
	if b == tracer.BackendFentry {
		if s, err := btf.LoadKernelSpec(); err == nil {
			k.btfSpecs = append(k.btfSpecs, s)
		}
		// nf_conntrack is usually a module; built in, vmlinux has its types.
		if s, err := btf.LoadKernelModuleSpec("nf_conntrack"); err == nil {
			k.btfSpecs = append(k.btfSpecs, s)
		} else if _, serr := os.Stat("/sys/module/nf_conntrack/initstate"); serr == nil {
			k.noModBTF = true // loaded as a module, and no BTF for it
		}
		return k
	}
	wanted, prefixes := map[string]bool{}, []string{}
	for _, g := range hookGroups {
		for _, c := range g.candidates {
			for _, s := range c.symbols {
				wanted[s] = true
			}
			if c.clone != "" {
				prefixes = append(prefixes, c.clone)
			}
		}
	}
	k.syms, k.clones, k.symsErr = readKallsyms("/proc/kallsyms", wanted, prefixes)
	return k
}

func (k *liveKernel) has(kind, name string) bool {
	if kind == "fentry" || kind == "fexit" {
		for _, s := range k.btfSpecs {
			var fn *btf.Func
			if err := s.TypeByName(name, &fn); err == nil {
				return true
			}
		}
		return false
	}
	if k.symsErr != nil {
		return true // unknown: let the attach decide
	}
	return k.syms[name]
}

func (k *liveKernel) funcRet() bool { return haveFuncRet(k.btfSpecs) }

func (k *liveKernel) clone(prefix string) string {
	for _, s := range k.clones {
		if strings.HasPrefix(s, prefix) {
			return s
		}
	}
	return ""
}

// readKallsyms returns which of the wanted text symbols kallsyms lists, and
// the symbols that start with one of prefixes, in kallsyms order. A
// three-column text scan: no maintained library parses kallsyms, and
// cilium/ebpf keeps its reader internal.
func readKallsyms(path string, wanted map[string]bool, prefixes []string) (map[string]bool, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read kallsyms: %w", err)
	}
	defer f.Close()
	found := map[string]bool{}
	var clones []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || (fields[1] != "t" && fields[1] != "T") {
			continue
		}
		name := fields[2]
		if wanted[name] {
			found[name] = true
		}
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				clones = append(clones, name)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read kallsyms: %w", err)
	}
	return found, clones, nil
}
