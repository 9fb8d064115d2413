package ebpftracer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBTFSource(t *testing.T) {
	f := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(f, make([]byte, 42), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := BTFSource(f); err != nil || got != f+" (42 bytes)" {
		t.Errorf("%s: %q, %v", f, got, err)
	}
	if got, err := BTFSource(f + ".missing"); err == nil || got != f+".missing" {
		t.Errorf("missing: %q, %v", got, err)
	}
	if got, err := BTFSource(""); !strings.HasPrefix(got, KernelBTF) || (err == nil) != (got != KernelBTF) {
		t.Errorf("kernel: %q, %v", got, err)
	}
}
