// Package kmod tells whether a kernel module is loaded, waits for one to
// be, and loads one with what it depends on, as modprobe does: the files
// come from modules.dep under /lib/modules/$(uname -r), and each is loaded
// with finit_module(2).
//
// No Go modprobe library is served to this project, so it keeps its own:
// a modules.dep parser and a few system calls. It needs no C library, no
// modprobe binary and no module configuration (blacklists, options and
// install commands of /etc/modprobe.d are not read: ctagent loads only the
// conntrack modules, without options).
//
// Loading a module takes CAP_SYS_MODULE and a sandbox that allows it
// (systemd's ProtectKernelModules=yes and the default seccomp profiles of
// container runtimes forbid it): without them Load fails with EPERM and
// the caller waits for the module instead (see Wait).
package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// DefaultSysfs is where the kernel lists its modules: /sys/module/NAME.
const DefaultSysfs = "/sys/module"

// Name returns the module name of a module file path: its base name
// without .ko and a compression suffix, with - as _ (the kernel's spelling:
// snd-hda-intel.ko is module snd_hda_intel).
func Name(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// Loaded reports whether module name is loaded and initialized, or built
// into the kernel, as sysfs under sysfs (DefaultSysfs) shows it: a loaded
// module has a directory there whose initstate is "live" ("coming" while
// its init function runs, "going" while it unloads); a built-in module has
// a directory without initstate if it has parameters (nf_conntrack has:
// hashsize, expect_hashsize), none otherwise: use Builtin for those.
func Loaded(sysfs, name string) bool {
	if sysfs == "" {
		sysfs = DefaultSysfs
	}
	dir := filepath.Join(sysfs, name)
	state, err := os.ReadFile(filepath.Join(dir, "initstate"))
	if err == nil {
		return strings.TrimSpace(string(state)) == "live"
	}
	if !errors.Is(err, os.ErrNotExist) {
		return false
	}
	st, err := os.Stat(dir)
	return err == nil && st.IsDir()
}

// Wait returns nil once Loaded(sysfs, name) is true, checking every
// interval, or ctx's error when it ends first.
//
// It polls sysfs rather than listen for the kernel's uevents of module
// loads (a NETLINK_KOBJECT_UEVENT socket): one stat a second costs
// nothing and needs no privilege, while a uevent listener needs a message
// parser of its own (no library for it is served here), and the "add"
// uevent of a module comes before its init function has run (initstate
// "coming"), so sysfs would be read anyway.
func Wait(ctx context.Context, sysfs, name string, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for !Loaded(sysfs, name) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Tree is the module tree of one kernel release: the directory with
// modules.dep and modules.builtin.
type Tree struct {
	Dir string
}

// ForRelease returns the module tree of a kernel release (uname -r):
// /lib/modules/RELEASE, or /usr/lib/modules/RELEASE where /lib is not
// merged into /usr and only that one exists (Debian's split packages of
// newer kernels install there).
func ForRelease(release string) (Tree, error) {
	var errs []error
	for _, base := range []string{"/lib/modules", "/usr/lib/modules"} {
		dir := filepath.Join(base, release)
		if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err != nil {
			errs = append(errs, err)
			continue
		}
		return Tree{Dir: dir}, nil
	}
	return Tree{}, fmt.Errorf("no module tree for kernel %s: %w", release, errors.Join(errs...))
}

// Builtin reports whether modules.builtin lists module name: built into
// the kernel, always there.
func (t Tree) Builtin(name string) (bool, error) {
	f, err := os.Open(filepath.Join(t.Dir, "modules.builtin"))
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if Name(sc.Text()) == name {
			return true, nil
		}
	}
	return false, sc.Err()
}

// Deps returns the files to load for module name, absolute, in load order:
// what it depends on first, the module itself last. See ParseDeps.
func (t Tree) Deps(name string) ([]string, error) {
	f, err := os.Open(filepath.Join(t.Dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rel, err := ParseDeps(f, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	out := make([]string, len(rel))
	for i, p := range rel {
		if !filepath.IsAbs(p) {
			p = filepath.Join(t.Dir, p)
		}
		out[i] = p
	}
	return out, nil
}

// ErrUnknownModule means modules.dep does not list the module.
var ErrUnknownModule = errors.New("module not in modules.dep")

// ParseDeps reads a modules.dep file (depmod's output: one line per module,
// "path: dependency-path ...", paths relative to the module tree) and
// returns the paths to load for module name in load order. The order
// comes from walking each module's own line, dependencies before the
// module that needs them, so it does not rely on the order depmod lists
// them in.
func ParseDeps(r io.Reader, name string) ([]string, error) {
	type entry struct {
		path string
		deps []string
	}
	byName := map[string]entry{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, deps, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(path) == "" {
			return nil, fmt.Errorf("line %d: no \"path:\" in %q", n, line)
		}
		path = strings.TrimSpace(path)
		byName[Name(path)] = entry{path: path, deps: strings.Fields(deps)}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := byName[name]; !ok {
		return nil, fmt.Errorf("%s: %w", name, ErrUnknownModule)
	}
	var order []string
	state := map[string]int{} // 1: being visited, 2: done
	var visit func(n string, path string) error
	visit = func(n, path string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("dependency cycle through %s", n)
		case 2:
			return nil
		}
		state[n] = 1
		e, ok := byName[n]
		if !ok {
			e = entry{path: path} // a dependency without a line of its own
		}
		for _, d := range e.deps {
			if err := visit(Name(d), d); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, e.path)
		return nil
	}
	if err := visit(name, ""); err != nil {
		return nil, err
	}
	return order, nil
}

// Load loads module name and, first, each module it depends on that is
// not loaded yet (per Loaded with sysfs), from tree t. It returns the
// names of the modules it loaded. A module loaded meanwhile by someone
// else (EEXIST) is not an error. Errors name the file and wrap the
// system call's errno: errors.Is(err, unix.EPERM) when loading is not
// allowed here.
func (t Tree) Load(sysfs, name string) (loaded []string, err error) {
	files, err := t.Deps(name)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		n := Name(f)
		if Loaded(sysfs, n) {
			continue
		}
		if err := LoadFile(f); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			return loaded, err
		}
		loaded = append(loaded, n)
	}
	return loaded, nil
}

// LoadFile loads one module file, without parameters. A compressed file
// (.ko.xz, .ko.zst, .ko.gz) is handed to the kernel to decompress
// (finit_module's MODULE_INIT_COMPRESSED_FILE: Linux 5.17, commit
// b1ae6dc41eaa "module: add in-kernel support for decompressing", with
// CONFIG_MODULE_DECOMPRESS); where the kernel refuses that (older kernels
// do not know the flag: EINVAL; or it was built without it: EOPNOTSUPP) it
// is decompressed here and loaded with init_module(2).
func LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("loading module %s: %w", Name(path), err)
	}
	defer f.Close()
	comp := compression(path)
	flags := 0
	if comp != "" {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err == nil || comp == "" || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
		if err != nil {
			return fmt.Errorf("loading module %s: finit_module %s: %w", Name(path), path, err)
		}
		return nil
	}
	image, derr := Decompress(f, comp)
	if derr != nil {
		return fmt.Errorf("loading module %s: the kernel does not decompress %s (%v), and here: %w", Name(path), path, err, derr)
	}
	if err := unix.InitModule(image, ""); err != nil {
		return fmt.Errorf("loading module %s: init_module of %s, decompressed: %w", Name(path), path, err)
	}
	return nil
}

// compression returns "xz", "zst" or "gz" for a compressed module file,
// "" for a plain .ko.
func compression(path string) string {
	for _, c := range []string{"xz", "zst", "gz"} {
		if strings.HasSuffix(path, ".ko."+c) {
			return c
		}
	}
	return ""
}

// maxModuleSize bounds a decompressed module image (the largest Debian
// modules are a few tens of MiB).
const maxModuleSize = 512 << 20

// Decompress returns the module image of a file compressed with comp
// ("xz", "zst" or "gz", as depmod's file suffixes say).
func Decompress(r io.Reader, comp string) ([]byte, error) {
	var dr io.Reader
	switch comp {
	case "xz":
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		dr = x
	case "zst":
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer z.Close()
		dr = z
	case "gz":
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer g.Close()
		dr = g
	default:
		return nil, fmt.Errorf("unknown compression %q", comp)
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(dr, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", comp, err)
	}
	if n > maxModuleSize {
		return nil, fmt.Errorf("%s: more than %d bytes decompressed", comp, maxModuleSize)
	}
	return buf.Bytes(), nil
}
