package ebpftracer

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	zapobserver "go.uber.org/zap/zaptest/observer"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// TestVMPinnedRestart: with a pin path, the programs keep counting while no
// tracer is open, and the next Open adopts them: the counters of every
// namespace are exactly what happened before, during and after the gap,
// and never step back; the ring buffer hands the gap's events on. Then an
// Open with another layout replaces the pins (one log line, counters from
// zero), and RemovePins leaves nothing pinned and no program loaded.
// Where links cannot be pinned (kprobes before Linux 5.15) it checks the
// one-line unpinned fallback instead.
func TestVMPinnedRestart(t *testing.T) {
	labnet.RequireVM(t, "ip", "conntrack")
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		t.Run(string(b), func(t *testing.T) { pinnedRestart(t, b) })
	}
}

// pinTestLogger logs to the test and records the lines for assertions.
func pinTestLogger(t *testing.T) (*zap.Logger, *zapobserver.ObservedLogs) {
	core, logs := zapobserver.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Core(), core)), logs
}

// gapEntries inserts and deletes n UDP entries in ns over ctnetlink, with
// source ports from port on (one conntrack process).
func gapEntries(ns *labnet.NS, port, n int) {
	var lines []string
	for i := range n {
		src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(port+i))
		dst := netip.MustParseAddrPort("192.0.2.2:53")
		args := labnet.InsertArgs("udp", src, dst)
		lines = append(lines, "-I "+strings.Join(args, " "), "-D "+strings.Join(args[:6], " ")+" --sport "+fmt.Sprint(port+i))
	}
	ns.CTLoad(lines)
}

func pinnedRestart(t *testing.T, b tracer.Backend) {
	root := filepath.Join("/sys/fs/bpf", "ctagent-test-"+string(b))
	if _, err := RemovePins(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemovePins(root) })
	log, logs := pinTestLogger(t)
	opts := tracer.Options{Backend: b, PinPath: root, Logger: log}
	tr1, err := tracer.Open(t.Context(), opts)
	if err != nil {
		skipIfNoFentry(t, b, err)
		t.Fatalf("open %s: %v", b, err)
	}
	info := tr1.Info()
	if info.PinDir == "" {
		tr1.Close()
		// Only kprobes on kernels without perf links may run unpinned,
		// and they must say so in one line, leaving nothing pinned.
		said := logs.FilterMessageSnippet("cannot be pinned on this kernel").All()
		entries, _ := os.ReadDir(root)
		if b != tracer.BackendKprobe || len(said) != 1 || len(entries) != 0 {
			t.Fatalf("%s not pinned: %d log lines say so, %d entries under %s", b, len(said), len(entries), root)
		}
		t.Skipf("skipped: %s links cannot be pinned on %s; the tracer said so in one line and runs unpinned: %q %v",
			b, info.Kernel, said[0].Message, said[0].ContextMap()["error"])
	}
	if info.Adopted || !strings.HasPrefix(info.PinDir, root+"/"+string(b)+"-") {
		t.Fatalf("first open: adopted %v, pin dir %q", info.Adopted, info.PinDir)
	}
	links, err := os.ReadDir(filepath.Join(info.PinDir, "links"))
	if err != nil || len(links) < 3 {
		t.Fatalf("pinned links: %v (%v)", links, err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Name())
	}
	t.Logf("pinned in %s: links %v", info.PinDir, names)

	// N before, M while closed, K after: nsA sees all three, nsB is
	// first used while no tracer is open.
	const nBefore, mGap, kAfter, mGapB = 5, 7, 3, 4
	nsA, nsB := labnet.New(t), labnet.New(t)
	gapEntries(nsA, 10000, nBefore)
	want := func(ns *labnet.NS, n uint64) func(map[uint32]tracer.Values) error {
		return func(c map[uint32]tracer.Values) error {
			if v := c[ns.Inode]; v.Created != n || v.Destroyed != n {
				return fmt.Errorf("netns %s: created %d destroyed %d, want %d each", ns.Name, v.Created, v.Destroyed, n)
			}
			return nil
		}
	}
	vmWait(t, "counters of the first tracer", func() bool { return want(nsA, nBefore)(perNamespace(t, tr1)) == nil }, true)
	before := perNamespace(t, tr1)
	if err := tr1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(info.PinDir); err != nil {
		t.Fatalf("Close removed the pins: %v", err)
	}

	gapEntries(nsA, 20000, mGap)
	gapEntries(nsB, 30000, mGapB)

	log2, logs2 := pinTestLogger(t)
	opts.Logger = log2
	tr2, err := tracer.Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	col := tracertest.CollectEvents(tr2)
	info2 := tr2.Info()
	if !info2.Adopted || info2.PinDir != info.PinDir || len(logs2.FilterMessageSnippet("adopted the pinned eBPF programs").All()) != 1 {
		tr2.Close()
		t.Fatalf("reopen: adopted %v, pin dir %q (was %q)", info2.Adopted, info2.PinDir, info.PinDir)
	}
	if fmt.Sprint(info2.Hooks) != fmt.Sprint(info.Hooks) {
		t.Errorf("adopted hooks %v, attached were %v", info2.Hooks, info.Hooks)
	}
	for _, h := range info2.HookStatus {
		if h.Active && h.State != tracer.HookPassed && h.State != tracer.HookNotTested {
			t.Errorf("adopted hook %s: self-test %s: %s", h.Hook, h.State, h.Detail)
		}
	}
	gapEntries(nsA, 40000, kAfter)
	var prev map[uint32]tracer.Values
	stepBack := func(c map[uint32]tracer.Values) error {
		for _, ns := range []*labnet.NS{nsA, nsB} {
			for _, p := range []map[uint32]tracer.Values{before, prev} {
				if p != nil && (c[ns.Inode].Created < p[ns.Inode].Created || c[ns.Inode].Destroyed < p[ns.Inode].Destroyed) {
					return fmt.Errorf("netns %s stepped back: %+v after %+v", ns.Name, c[ns.Inode], p[ns.Inode])
				}
			}
		}
		prev = c
		return nil
	}
	labnet.Eventually(t, defaultWait, func() error {
		c := perNamespace(t, tr2)
		return errors.Join(stepBack(c), want(nsA, nBefore+mGap+kAfter)(c), want(nsB, mGapB)(c))
	})
	c := perNamespace(t, tr2)
	if want(nsA, nBefore+mGap+kAfter)(c) != nil || want(nsB, mGapB)(c) != nil || stepBack(c) != nil {
		t.Errorf("counters after the restart: %v / %v / %v", want(nsA, nBefore+mGap+kAfter)(c), want(nsB, mGapB)(c), stepBack(c))
	}
	fmt.Printf("VMTEST-PIN: %s on %s: netns A created/destroyed %d/%d (want %d before + %d while closed + %d after), netns B %d/%d (want %d, all while closed)\n",
		b, info.Kernel, c[nsA.Inode].Created, c[nsA.Inode].Destroyed, nBefore, mGap, kAfter, c[nsB.Inode].Created, c[nsB.Inode].Destroyed, mGapB)
	if info2.RingBuffer {
		// The ring buffer kept the gap's events for the next reader.
		inGap := func(ev tracer.Event) bool { return ev.Original.SrcPort >= 20000 && ev.Original.SrcPort < 30000 }
		vmWait(t, "the gap's events", func() bool {
			return len(col.Matching(nsA.Inode, func(ev tracer.Event) bool { return inGap(ev) && ev.Type == tracer.EventDestroyed })) == mGap
		}, false)
		for _, typ := range []tracer.EventType{tracer.EventCreated, tracer.EventDestroyed} {
			if got := col.Matching(nsA.Inode, func(ev tracer.Event) bool { return inGap(ev) && ev.Type == typ }); len(got) != mGap {
				t.Errorf("%d %s events of the gap delivered after the restart, want %d", len(got), typ, mGap)
			}
		}
	}
	if err := tr2.Close(); err != nil {
		t.Fatal(err)
	}

	// Another layout (the perf event array instead of the ring buffer)
	// is another version: attached anew, the old pins (and a stale
	// version directory) replaced with one log line; counters restart.
	stale := filepath.Join(root, string(b)+"-0000000000000000")
	if err := os.Mkdir(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	log3, logs3 := pinTestLogger(t)
	opts.Logger, opts.ForcePerfBuffer = log3, true
	tr3, err := tracer.Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("open with another layout: %v", err)
	}
	info3 := tr3.Info()
	replaced := logs3.FilterMessageSnippet("replaced the pinned eBPF programs and maps of another version").All()
	entries, _ := os.ReadDir(root)
	if info3.Adopted || info3.PinDir == "" || info3.PinDir == info.PinDir || len(replaced) != 1 || len(entries) != 1 {
		t.Errorf("another layout: adopted %v, pin dir %q, %d replace lines, %d versions pinned", info3.Adopted, info3.PinDir, len(replaced), len(entries))
	} else {
		t.Logf("replace line: %q old=%v new=%v", replaced[0].Message, replaced[0].ContextMap()["old"], replaced[0].ContextMap()["new"])
	}
	if c := perNamespace(t, tr3); c[nsA.Inode].Created != 0 {
		t.Errorf("after the replacement netns %s counts %d created, want 0 (a documented reset)", nsA.Name, c[nsA.Inode].Created)
	}
	if err := tr3.Close(); err != nil {
		t.Fatal(err)
	}

	// Uninstall: nothing left under the pin path, no program loaded.
	if removed, err := RemovePins(root); err != nil || !removed {
		t.Fatalf("RemovePins: %v, %v", removed, err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after RemovePins: %v", err)
	}
	vmWait(t, "no program of ours loaded", func() bool { return len(loadedPrograms(t)) == 0 }, false)
	if left := loadedPrograms(t); len(left) > 0 {
		t.Errorf("programs still loaded after RemovePins: %v", left)
	}
}

// defaultWait bounds the polls of this file.
const defaultWait = 20 * time.Second

// loadedPrograms lists the loaded programs whose names are of this
// object's (the kernel keeps 15 characters of a name).
func loadedPrograms(t *testing.T) []string {
	ours := map[string]bool{}
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		for name := range programsFor(b) {
			ours[name[:min(len(name), 15)]] = true
		}
	}
	var out []string
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		pi, err := p.Info()
		p.Close()
		if err == nil && ours[pi.Name] {
			out = append(out, pi.Name)
		}
	}
}
