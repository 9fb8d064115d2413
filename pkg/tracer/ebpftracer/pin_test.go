package ebpftracer

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// The pin version changes with the layout and only with it.
func TestPinVersion(t *testing.T) {
	spec := func(opts tracer.Options) *ebpf.CollectionSpec {
		s, err := loadSpec(opts, tracer.BackendKprobe, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := pinVersion(tracer.BackendKprobe, spec(tracer.Options{}), nil)
	same := map[string]tracer.Options{
		"other map sizes": {LifetimeEntries: 1 << 17, MaxNamespaces: 100000, RingBufferSize: 1 << 16},
		"events off":      {DisableEvents: true},
	}
	for name, o := range same {
		if v := pinVersion(tracer.BackendKprobe, spec(o), nil); v != base {
			t.Errorf("%s: version %s, want %s", name, v, base)
		}
	}
	other := map[string]string{
		"perf buffer": pinVersion(tracer.BackendKprobe, spec(tracer.Options{ForcePerfBuffer: true}), nil),
		"fentry":      pinVersion(tracer.BackendFentry, spec(tracer.Options{}), nil),
		"one hook":    pinVersion(tracer.BackendKprobe, spec(tracer.Options{}), map[string]string{"destroy": "nf_ct_delete"}),
	}
	for name, v := range other {
		if v == base {
			t.Errorf("%s: same version %s as the default layout", name, v)
		}
	}
	if got, want := pinName(".bss"), "_bss"; got != want {
		t.Errorf("pinName(.bss) = %s", got)
	}
	if got, want := linkPinName("kprobe_delete_part", "nf_ct_delete.part.0"), "kprobe_delete_part@nf_ct_delete-part-0"; got != want {
		t.Errorf("linkPinName = %s, want %s", got, want)
	}
}

// RemovePins removes pins below a bpffs mount, and refuses the mount
// itself and paths elsewhere.
func TestRemovePins(t *testing.T) {
	labnet.Require(t)
	mnt := t.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, ""); err != nil {
		t.Skipf("skipped: cannot mount bpffs here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })

	plain := filepath.Join(t.TempDir(), "ctagent")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := RemovePins(plain); err == nil {
		t.Error("RemovePins removed a directory that is not on bpffs")
	} else if _, serr := os.Stat(plain); serr != nil {
		t.Errorf("refused, but removed: %v", serr)
	}
	if _, err := RemovePins(mnt); err == nil {
		t.Error("RemovePins accepted the bpffs mount itself")
	}
	if err := onBPFFS(mnt); err == nil {
		t.Error("the bpffs mount itself accepted as a pin path")
	}

	root := filepath.Join(mnt, "ctagent")
	if removed, err := RemovePins(root); err != nil || removed {
		t.Errorf("nothing pinned: removed %v, %v", removed, err)
	}
	if err := onBPFFS(root); err != nil {
		t.Errorf("pin path below bpffs refused: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "kprobe-0123456789abcdef", "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(root, "kprobe-0123456789abcdef", "maps", "counters")); err != nil {
		t.Fatal(err)
	}
	if removed, err := RemovePins(root); err != nil || !removed {
		t.Fatalf("RemovePins: removed %v, %v", removed, err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("left on bpffs: %s (%v)", root, err)
	}
}
