package ebpftracer

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
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

// badBTFFiles writes the BTF files a user may point --btf.path at by
// mistake, each with what the error must say.
func badBTFFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := map[string]string{
		filepath.Join(dir, "missing"): "no such file or directory",
		dir:                           "is a directory, not a BTF file",
		write("empty", nil):           "empty file, not BTF",
		write("text", []byte("#!/bin/sh\necho not BTF\n")): "not BTF: neither an ELF file nor raw BTF (magic 0xeb9f)",
		write("header-cut", nativeBTF(t)[:10]):             "truncated: 10 bytes, shorter than the BTF header",
		write("big-endian", foreignEndianBTF(t)):           "BTF, from a kernel of another architecture",
	}
	if raw, err := os.ReadFile(KernelBTF); err == nil {
		files[write("vmlinux-half", raw[:len(raw)/2])] = fmt.Sprintf("truncated: the BTF header says %d bytes, the file has %d", len(raw), len(raw)/2)
	}
	if other := otherArchBTF(t); other != nil {
		files[write("other-arch", other)] = "struct pt_regs has no member " + ptRegsMember[runtime.GOARCH] + ": BTF of a kernel of another architecture"
	}
	if exe, err := os.ReadFile("/bin/true"); err == nil {
		files[write("true", exe)] = "an ELF file without a .BTF section"
		files[write("true-half", exe[:len(exe)/2])] = "truncated"
		foreign := slices.Clone(exe)
		m := elf.EM_AARCH64
		if runtime.GOARCH == "arm64" {
			m = elf.EM_X86_64
		}
		binary.NativeEndian.PutUint16(foreign[18:], uint16(m)) // e_machine
		files[write("true-other-arch", foreign)] = "an ELF file for " + m.String()
	}
	return files
}

// nativeBTF is a small valid BTF blob in this machine's byte order.
func nativeBTF(t *testing.T) []byte {
	return marshalBTF(t, binary.NativeEndian, &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed})
}

// foreignEndianBTF is BTF as a kernel of the other byte order (s390x on
// x86) writes it.
func foreignEndianBTF(t *testing.T) []byte {
	var bo binary.ByteOrder = binary.BigEndian
	if endian(binary.NativeEndian) == "big-endian" {
		bo = binary.LittleEndian
	}
	return marshalBTF(t, bo, &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed})
}

// otherArchBTF is raw BTF with the struct pt_regs of another architecture
// (arm64's on amd64, amd64's elsewhere), or nil where no check applies.
func otherArchBTF(t *testing.T) []byte {
	if ptRegsMember[runtime.GOARCH] == "" {
		return nil
	}
	u64 := &btf.Int{Name: "long long unsigned int", Size: 8}
	names := []string{"regs0", "sp", "pc", "pstate"} // arm64
	if runtime.GOARCH == "arm64" {
		names = []string{"di", "si", "ip", "sp"} // x86_64
	}
	s := &btf.Struct{Name: "pt_regs", Size: uint32(8 * len(names))}
	for i, n := range names {
		s.Members = append(s.Members, btf.Member{Name: n, Type: u64, Offset: btf.Bits(64 * i)})
	}
	return marshalBTF(t, binary.NativeEndian, s)
}

func marshalBTF(t *testing.T, bo binary.ByteOrder, types ...btf.Type) []byte {
	t.Helper()
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, &btf.MarshalOptions{Order: bo})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestLoadBTFBadFiles: every unusable BTF file is one clear error naming
// the file; cilium/ebpf alone accepts BTF of the other byte order and says
// "string table is out of bounds" for a cut vmlinux.
func TestLoadBTFBadFiles(t *testing.T) {
	for path, want := range badBTFFiles(t) {
		_, err := LoadBTF(path)
		t.Log(err)
		if err == nil || !strings.HasPrefix(err.Error(), "btf "+path+": ") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", filepath.Base(path), err, want)
		}
	}
	if _, err := btf.LoadSpecFromReader(bytes.NewReader(foreignEndianBTF(t))); err != nil {
		t.Logf("cilium/ebpf now refuses BTF of the other byte order itself: %v", err)
	}
}

// TestLoadBTFGood: the kernel's own BTF, and BTF without pt_regs (a
// minimised BTF), are accepted.
func TestLoadBTFGood(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, nativeBTF(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ValidateBTF(small); err != nil {
		t.Errorf("small BTF: %v", err)
	}
	if _, err := os.Stat(KernelBTF); err != nil {
		t.Skipf("skipped: no kernel BTF: %v", err)
	}
	if err := ValidateBTF(KernelBTF); err != nil {
		t.Errorf("kernel BTF: %v", err)
	}
}
