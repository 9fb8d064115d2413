package ebpftracer

import (
	"fmt"
	"os"
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
