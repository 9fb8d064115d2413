package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/net/netfilter/nf_conntrack.ko.xz": "nf_conntrack",
		"kernel/net/netfilter/nf_conntrack.ko":    "nf_conntrack",
		"nf_conntrack_netlink.ko.zst":             "nf_conntrack_netlink",
		"kernel/sound/pci/hda/snd-hda-intel.ko":   "snd_hda_intel",
		"nf_conntrack":                            "nf_conntrack",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

// The files to load come in load order, each module after what it needs,
// whatever order depmod wrote the dependencies in (Debian 12's 6.12: the
// module's deps from the last to load to the first).
func TestParseDeps(t *testing.T) {
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"nf_conntrack", []string{
			"kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz", "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz",
			"kernel/lib/libcrc32c.ko.xz", "kernel/net/netfilter/nf_conntrack.ko.xz",
		}},
		{"nf_conntrack_netlink", []string{
			"kernel/net/netfilter/nfnetlink.ko.xz", "kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz",
			"kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz", "kernel/lib/libcrc32c.ko.xz",
			"kernel/net/netfilter/nf_conntrack.ko.xz", "kernel/net/netfilter/nf_conntrack_netlink.ko.xz",
		}},
		{"nfnetlink", []string{"kernel/net/netfilter/nfnetlink.ko.xz"}},
		{"snd_hda_intel", []string{"kernel/sound/pci/hda/snd-hda-codec.ko.xz", "kernel/sound/pci/hda/snd-hda-intel.ko.xz"}},
		{"out_of_tree", []string{"kernel/lib/libcrc32c.ko.xz", "/opt/extra/out-of-tree.ko"}},
	} {
		f, err := os.Open("testdata/modules.dep")
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseDeps(f, tc.name)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: load order\n got %q\nwant %q", tc.name, got, tc.want)
		}
		// Every module comes after each of its dependencies.
		pos := map[string]int{}
		for i, p := range got {
			pos[p] = i
		}
		if len(pos) != len(got) {
			t.Errorf("%s: a file twice in %q", tc.name, got)
		}
	}
}

func TestParseDepsErrors(t *testing.T) {
	for _, tc := range []struct {
		dep, name, want string
	}{
		{"kernel/a.ko: kernel/b.ko\n", "c", "not in modules.dep"},
		{"kernel/a.ko kernel/b.ko\n", "a", "line 1"},
		{"kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n", "a", "cycle"},
		{": kernel/b.ko\n", "a", "line 1"},
	} {
		_, err := ParseDeps(strings.NewReader(tc.dep), tc.name)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseDeps(%q, %s): %v, want an error with %q", tc.dep, tc.name, err, tc.want)
		}
	}
	_, err := ParseDeps(strings.NewReader("kernel/a.ko:\n"), "b")
	if !errors.Is(err, ErrUnknownModule) {
		t.Errorf("unknown module: %v, want ErrUnknownModule", err)
	}
}

// A tree's files are absolute, under its directory; an absolute path in
// modules.dep stays as it is.
func TestTreeDeps(t *testing.T) {
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	tree := Tree{Dir: dir}
	got, err := tree.Deps("nf_conntrack")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[3] != filepath.Join(dir, "kernel/net/netfilter/nf_conntrack.ko.xz") {
		t.Errorf("Deps(nf_conntrack) = %q", got)
	}
	got, err = tree.Deps("out_of_tree")
	if err != nil || got[1] != "/opt/extra/out-of-tree.ko" {
		t.Errorf("Deps(out_of_tree) = %q, %v", got, err)
	}
	if _, err := tree.Deps("nf_tables"); !errors.Is(err, ErrUnknownModule) {
		t.Errorf("Deps(nf_tables): %v, want ErrUnknownModule", err)
	}
	if _, err := (Tree{Dir: t.TempDir()}).Deps("nf_conntrack"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a tree without modules.dep: %v", err)
	}
	for name, want := range map[string]bool{"x_tables": true, "tcp_cubic": true, "nf_conntrack": false} {
		if got, err := tree.Builtin(name); err != nil || got != want {
			t.Errorf("Builtin(%s) = %v, %v; want %v", name, got, err, want)
		}
	}
}

// ForRelease finds no tree for a release that has none, and says which.
func TestForReleaseMissing(t *testing.T) {
	_, err := ForRelease("0.0.0-no-such-kernel")
	if err == nil || !strings.Contains(err.Error(), "0.0.0-no-such-kernel") {
		t.Errorf("ForRelease: %v", err)
	}
}

// Loaded reads sysfs the way the kernel lays it out: a module directory
// with initstate live (loaded), coming (its init runs) or going; a
// built-in module's directory has no initstate.
func TestLoaded(t *testing.T) {
	sys := t.TempDir()
	for name, state := range map[string]string{"live_mod": "live\n", "coming_mod": "coming\n", "going_mod": "going\n", "builtin_mod": ""} {
		if err := os.MkdirAll(filepath.Join(sys, name, "parameters"), 0o755); err != nil {
			t.Fatal(err)
		}
		if state != "" {
			if err := os.WriteFile(filepath.Join(sys, name, "initstate"), []byte(state), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, want := range map[string]bool{"live_mod": true, "builtin_mod": true, "coming_mod": false, "going_mod": false, "absent": false} {
		if got := Loaded(sys, name); got != want {
			t.Errorf("Loaded(%s) = %v, want %v", name, got, want)
		}
	}

	// Wait returns once the module is live, and with ctx's error when
	// it ends first.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Wait(ctx, sys, "coming_mod", time.Millisecond); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a cancelled context: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- Wait(context.Background(), sys, "coming_mod", 5*time.Millisecond) }()
	if err := os.WriteFile(filepath.Join(sys, "coming_mod", "initstate"), []byte("live\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Wait: %v", err)
	}

	// This host's own sysfs: nf_conntrack is loaded or built in wherever
	// its /proc/sys/net/netfilter/nf_conntrack_max exists.
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_max"); err == nil {
		if !Loaded("", "nf_conntrack") {
			t.Errorf("nf_conntrack has its sysctls here, but Loaded says it is not loaded")
		}
	} else {
		t.Logf("no nf_conntrack on this host: not comparing Loaded with its sysctls")
	}
}

// Decompress gives back the image of each compression depmod names in
// file suffixes.
func TestDecompress(t *testing.T) {
	image := bytes.Repeat([]byte("\x7fELF module image "), 1000)
	var xzb, zstb, gzb bytes.Buffer
	xw, err := xz.NewWriter(&xzb)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(image)
	xw.Close()
	zw, err := zstd.NewWriter(&zstb)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(image)
	zw.Close()
	gw := gzip.NewWriter(&gzb)
	gw.Write(image)
	gw.Close()
	for comp, data := range map[string][]byte{"xz": xzb.Bytes(), "zst": zstb.Bytes(), "gz": gzb.Bytes()} {
		got, err := Decompress(bytes.NewReader(data), comp)
		if err != nil || !bytes.Equal(got, image) {
			t.Errorf("%s: %d bytes, %v; want %d bytes", comp, len(got), err, len(image))
		}
		if _, err := Decompress(bytes.NewReader(image), comp); err == nil {
			t.Errorf("%s: no error for data that is not %s", comp, comp)
		}
	}
	if _, err := Decompress(bytes.NewReader(image), "bz2"); err == nil {
		t.Error("bz2: no error")
	}
	for path, want := range map[string]string{"a.ko": "", "a.ko.xz": "xz", "a.ko.zst": "zst", "a.ko.gz": "gz"} {
		if got := compression(path); got != want {
			t.Errorf("compression(%s) = %q, want %q", path, got, want)
		}
	}
}
