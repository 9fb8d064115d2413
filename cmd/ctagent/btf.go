package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// kernelBTF is where the running kernel exposes its BTF.
const kernelBTF = "/sys/kernel/btf/vmlinux"

// btfMagic starts every BTF blob (struct btf_header.magic), in the byte
// order of the machine that wrote it.
const btfMagic = 0xeB9F

// btfHeaderLen is the size of struct btf_header in linux/btf.h.
const btfHeaderLen = 24

// validateBTF checks that path is a BTF file that pkg/tracer can load:
// either raw BTF (as /sys/kernel/btf/vmlinux or bpftool btf dump ... format
// raw) or an ELF file with a .BTF section (a vmlinux image). It checks the
// header and that the sections it announces fit in the file; the full parse
// happens when the tracer loads it. It does not import cilium/ebpf, so the
// command line is checked before anything touches the kernel.
func validateBTF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return fmt.Errorf("%s is not a BTF file: too short", path)
	}
	if bytes.Equal(magic[:], []byte(elf.ELFMAG)) {
		ef, err := elf.NewFile(f)
		if err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
		sec := ef.Section(".BTF")
		if sec == nil {
			return fmt.Errorf("%s is an ELF file without a .BTF section", path)
		}
		if sec.Type == elf.SHT_NOBITS {
			return fmt.Errorf("%s: the .BTF section is empty", path)
		}
		if err := checkBTFHeader(sec.Open(), int64(sec.Size)); err != nil {
			return fmt.Errorf("%s: .BTF section: %v", path, err)
		}
		return nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := checkBTFHeader(f, st.Size()); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

// checkBTFHeader reads struct btf_header from r, a blob of size bytes.
func checkBTFHeader(r io.Reader, size int64) error {
	var hdr [btfHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return errors.New("not BTF: shorter than a BTF header")
	}
	var bo binary.ByteOrder
	switch {
	case binary.LittleEndian.Uint16(hdr[0:]) == btfMagic:
		bo = binary.LittleEndian
	case binary.BigEndian.Uint16(hdr[0:]) == btfMagic:
		bo = binary.BigEndian
	default:
		return fmt.Errorf("not BTF: magic %#04x, want %#04x", binary.LittleEndian.Uint16(hdr[0:]), btfMagic)
	}
	if v := hdr[2]; v != 1 {
		return fmt.Errorf("unsupported BTF version %d", v)
	}
	hdrLen := int64(bo.Uint32(hdr[4:]))
	typeOff, typeLen := int64(bo.Uint32(hdr[8:])), int64(bo.Uint32(hdr[12:]))
	strOff, strLen := int64(bo.Uint32(hdr[16:])), int64(bo.Uint32(hdr[20:]))
	if hdrLen < btfHeaderLen {
		return fmt.Errorf("BTF header length %d too short", hdrLen)
	}
	if hdrLen+typeOff+typeLen > size || hdrLen+strOff+strLen > size {
		return fmt.Errorf("truncated BTF: sections end past the %d bytes of the file", size)
	}
	if strLen == 0 {
		return errors.New("BTF without a string section")
	}
	return nil
}
