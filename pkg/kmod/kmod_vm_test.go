package kmod

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
)

// A real module, compressed each way depmod names: Load loads it on every
// kernel of the matrix, through the kernel's own decompression where it has
// it for that format (6.12 and sid: xz; MODULE_INIT_COMPRESSED_FILE, 5.17+)
// and decompressed here otherwise (5.10: the kernel refuses the flag;
// 6.12: zstd and gzip are not its format).
func TestVMLoadCompressed(t *testing.T) {
	if !labnet.InVM() {
		t.Skip("skipped: unloads and loads kernel modules; runs in the qemu kernel matrix (make vmtest) only")
	}
	labnet.Require(t, "modprobe")
	// A leaf module the guest loads at boot that no test uses here.
	const name = "nft_redir"
	if !Loaded("", name) {
		t.Fatalf("%s not loaded at the start: the guest's init loads it", name)
	}
	tree, err := ForRelease(kernelRelease(t))
	if err != nil {
		t.Fatal(err)
	}
	files, err := tree.Deps(name)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := os.ReadFile(files[len(files)-1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !Loaded("", name) {
			if out, err := exec.Command("modprobe", name).CombinedOutput(); err != nil {
				t.Errorf("restoring %s: %v: %s", name, err, out)
			}
		}
	})
	for _, comp := range []string{"xz", "zst", "gz"} {
		if err := unix.DeleteModule(name, unix.O_NONBLOCK); err != nil {
			t.Fatalf("unloading %s: %v", name, err)
		}
		if Loaded("", name) {
			t.Fatalf("%s still loaded after delete_module", name)
		}
		dir := t.TempDir()
		rel := "kernel/" + name + ".ko." + comp
		if err := os.MkdirAll(filepath.Join(dir, "kernel"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, rel), compress(t, comp, plain), 0o644); err != nil {
			t.Fatal(err)
		}
		// Its dependencies stay where they are (absolute paths, loaded).
		dep := rel + ":"
		for _, f := range files[:len(files)-1] {
			dep += " " + f
		}
		if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		loaded, err := Tree{Dir: dir}.Load("", name)
		if err != nil {
			t.Fatalf("%s: %v", comp, err)
		}
		if !slices.Equal(loaded, []string{name}) || !Loaded("", name) {
			t.Fatalf("%s: Load says it loaded %v; loaded now: %v", comp, loaded, Loaded("", name))
		}
		t.Logf("%s.ko.%s (%d bytes, %d decompressed) loaded", name, comp, len(compress(t, comp, plain)), len(plain))
	}
	// Loaded already: nothing to do, no error.
	if loaded, err := tree.Load("", name); err != nil || len(loaded) != 0 {
		t.Errorf("Load of a loaded module: %v, %v", loaded, err)
	}
}

// compress compresses a module image the way kmod's tools do (xz with a
// CRC32 check: the kernel's decompressor has no CRC64).
func compress(t *testing.T, comp string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var err error
	switch comp {
	case "xz":
		var w *xz.Writer
		if w, err = (xz.WriterConfig{CheckSum: xz.CRC32}).NewWriter(&b); err == nil {
			_, err = w.Write(data)
			err = errors.Join(err, w.Close())
		}
	case "zst":
		var w *zstd.Encoder
		if w, err = zstd.NewWriter(&b); err == nil {
			_, err = w.Write(data)
			err = errors.Join(err, w.Close())
		}
	case "gz":
		w := gzip.NewWriter(&b)
		_, err = w.Write(data)
		err = errors.Join(err, w.Close())
	default:
		err = fmt.Errorf("unknown compression %q", comp)
	}
	if err != nil {
		t.Fatalf("compressing with %s: %v", comp, err)
	}
	return b.Bytes()
}

func kernelRelease(t *testing.T) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
