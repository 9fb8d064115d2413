package ebpftracer

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"

	"github.com/cilium/ebpf/btf"
)

// KernelBTF is where the running kernel exposes its BTF, used when
// tracer.Options.BTFPath is empty.
const KernelBTF = "/sys/kernel/btf/vmlinux"

// BTFSource describes the BTF the eBPF backends will use with BTFPath path
// ("": KernelBTF), with its size, for logs and ctagent check; the error
// says why there is none.
func BTFSource(path string) (string, error) {
	if path == "" {
		path = KernelBTF
	}
	st, err := os.Stat(path)
	if err != nil {
		return path, err
	}
	return fmt.Sprintf("%s (%d bytes)", path, st.Size()), nil
}

// LoadBTF parses a vmlinux BTF file (raw BTF or an ELF with a .BTF section)
// and says clearly what is wrong with an unusable one: empty, truncated,
// not BTF, or made for another architecture. cilium/ebpf reads BTF of
// either byte order and of any architecture, and its errors for a short
// file ("string table is out of bounds") do not say that it is short.
func LoadBTF(path string) (*btf.Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("btf %s: %w", path, err)
	}
	defer f.Close()
	if err := checkBTFFile(f); err != nil {
		return nil, fmt.Errorf("btf %s: %w", path, err)
	}
	spec, err := btf.LoadSpecFromReader(f)
	if errors.Is(err, btf.ErrNotFound) {
		err = errors.New("an ELF file without a .BTF section (not a kernel built with CONFIG_DEBUG_INFO_BTF)")
	}
	if err == nil {
		err = checkBTFArch(spec)
	}
	if err != nil {
		return nil, fmt.Errorf("btf %s: %w", path, err)
	}
	return spec, nil
}

// ValidateBTF checks that path is a readable BTF file; for flag validation.
func ValidateBTF(path string) error {
	_, err := LoadBTF(path)
	return err
}

// btfMagic starts raw BTF, in the byte order of the kernel that made it.
const btfMagic = 0xeb9f

// btfHeader is the raw BTF header (include/uapi/linux/btf.h); the
// sections' offsets count from its end.
type btfHeader struct {
	Magic                uint16
	Version, Flags       uint8
	HdrLen               uint32
	TypeOff, TypeLen     uint32
	StringOff, StringLen uint32
}

// elfMachines is the ELF machine of each GOARCH whose kernels have BTF.
var elfMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM,
	"riscv64": elf.EM_RISCV, "s390x": elf.EM_S390, "ppc64": elf.EM_PPC64, "ppc64le": elf.EM_PPC64,
	"loong64": elf.EM_LOONGARCH,
}

// checkBTFFile refuses files that cannot be this kernel's BTF, before
// cilium/ebpf parses them: a directory, an empty or truncated file, an ELF
// file of another machine or byte order, BTF of the other byte order.
func checkBTFFile(f *os.File) error {
	st, err := f.Stat()
	switch {
	case err != nil:
		return err
	case st.IsDir():
		return errors.New("is a directory, not a BTF file")
	case st.Size() == 0:
		return errors.New("empty file, not BTF")
	}
	head := make([]byte, binary.Size(btfHeader{}))
	size := len(head)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return err
	}
	head = head[:n]
	if bytes.HasPrefix(head, []byte(elf.ELFMAG)) {
		return checkELF(f)
	}
	native := binary.NativeEndian
	var foreign binary.ByteOrder = binary.BigEndian
	if native.Uint16([]byte{0, 1}) == 1 {
		foreign = binary.LittleEndian
	}
	switch {
	case n >= 2 && native.Uint16(head) == btfMagic:
	case n >= 2 && foreign.Uint16(head) == btfMagic:
		return fmt.Errorf("%s BTF, from a kernel of another architecture (this one is %s, %s)", endian(foreign), runtime.GOARCH, endian(native))
	default:
		return errors.New("not BTF: neither an ELF file nor raw BTF (magic 0xeb9f)")
	}
	if n < size {
		return fmt.Errorf("truncated: %d bytes, shorter than the BTF header", n)
	}
	var h btfHeader
	if _, err := binary.Decode(head, native, &h); err != nil {
		return err
	}
	end := uint64(h.HdrLen) + max(uint64(h.TypeOff)+uint64(h.TypeLen), uint64(h.StringOff)+uint64(h.StringLen))
	if end > uint64(st.Size()) {
		return fmt.Errorf("truncated: the BTF header says %d bytes, the file has %d", end, st.Size())
	}
	return nil
}

// checkELF refuses an ELF file that is not of this machine and byte order,
// or is cut short.
func checkELF(f *os.File) error {
	e, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("corrupt or truncated ELF file: %w", err)
	}
	defer e.Close()
	if want, ok := elfMachines[runtime.GOARCH]; ok && e.Machine != want {
		return fmt.Errorf("an ELF file for %s, this kernel is %s (%s)", e.Machine, runtime.GOARCH, want)
	}
	if endian(e.ByteOrder) != endian(binary.NativeEndian) {
		return fmt.Errorf("a %s ELF file, this kernel is %s (%s)", endian(e.ByteOrder), runtime.GOARCH, endian(binary.NativeEndian))
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	for _, s := range e.Sections {
		if s.Type != elf.SHT_NOBITS && s.Offset+s.FileSize > uint64(st.Size()) {
			return fmt.Errorf("truncated: section %s ends at byte %d, the file has %d", s.Name, s.Offset+s.FileSize, st.Size())
		}
	}
	return nil
}

// endian names a byte order.
func endian(bo binary.ByteOrder) string {
	if bo.Uint16([]byte{1, 0}) == 1 {
		return "little-endian"
	}
	return "big-endian"
}

// ptRegsMember is a member that struct pt_regs has on one architecture
// only, to recognise raw BTF (which does not say its architecture) of
// another one: the kprobe programs read their arguments from pt_regs.
var ptRegsMember = map[string]string{"amd64": "ip", "arm64": "pstate"}

// checkBTFArch refuses BTF whose struct pt_regs is not this
// architecture's. BTF without pt_regs (a minimised BTF) passes.
func checkBTFArch(spec *btf.Spec) error {
	want, ok := ptRegsMember[runtime.GOARCH]
	if !ok {
		return nil
	}
	types, err := spec.AnyTypesByName("pt_regs")
	if err != nil {
		return nil // no pt_regs: nothing to tell
	}
	for _, typ := range types {
		if s, ok := typ.(*btf.Struct); ok && !hasMember(s.Members, want) {
			return fmt.Errorf("struct pt_regs has no member %s: BTF of a kernel of another architecture (this one is %s)", want, runtime.GOARCH)
		}
	}
	return nil
}

// hasMember reports whether members, or those of their anonymous structs
// and unions, include name.
func hasMember(members []btf.Member, name string) bool {
	return slices.ContainsFunc(members, func(m btf.Member) bool {
		if m.Name == name {
			return true
		}
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			return m.Name == "" && hasMember(t.Members, name)
		case *btf.Union:
			return m.Name == "" && hasMember(t.Members, name)
		}
		return false
	})
}
