package main

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// Capabilities are per thread in Linux, and a Go program runs on many
// threads it does not control. capset(2) changes the calling thread only,
// so the drop below runs it on every thread at once with
// syscall.AllThreadsSyscall (Go 1.16; it needs CGO_ENABLED=0, which the
// release build has: with cgo it fails with ENOTSUP and nothing is dropped).
// kernel.org/pub/linux/libs/security/libcap/cap would do the same through
// psx, but it is not among the Go modules this project may use (the
// proxy's list has no libcap); the code here is two system calls.

// capNames are the kernel's capability names (include/uapi/linux/capability.h),
// by number, up to CAP_CHECKPOINT_RESTORE (40, Linux 5.9).
var capNames = [...]string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
	"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// capSetNames names the capabilities in the bit mask set, e.g.
// "CAP_NET_ADMIN,CAP_SYS_ADMIN"; "none" for an empty set.
func capSetNames(set uint64) string {
	var names []string
	for i := range 64 {
		if set&(1<<i) == 0 {
			continue
		}
		if i < len(capNames) {
			names = append(names, capNames[i])
		} else {
			names = append(names, fmt.Sprintf("CAP_%d", i))
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// capState is the calling thread's capability sets (capget(2)).
type capState struct {
	hdr  unix.CapUserHeader
	data [2]unix.CapUserData // _LINUX_CAPABILITY_VERSION_3: 64 bits in two halves
}

func getCaps() (*capState, error) {
	s := &capState{hdr: unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}}
	if err := unix.Capget(&s.hdr, &s.data[0]); err != nil {
		return nil, fmt.Errorf("capget: %w", err)
	}
	return s, nil
}

func (s *capState) effective() uint64 {
	return uint64(s.data[0].Effective) | uint64(s.data[1].Effective)<<32
}

func (s *capState) permitted() uint64 {
	return uint64(s.data[0].Permitted) | uint64(s.data[1].Permitted)<<32
}

// clear removes the capabilities of mask from the effective set, and with
// permanent also from the permitted and inheritable sets (the kernel then
// removes them from the ambient set too: ambient ⊆ permitted ∩
// inheritable, security/commoncap.c cap_capset).
func (s *capState) clear(mask uint64, permanent bool) {
	for i := range s.data {
		m := uint32(mask >> (32 * i))
		s.data[i].Effective &^= m
		if permanent {
			s.data[i].Permitted &^= m
			s.data[i].Inheritable &^= m
		}
	}
}

// setAllThreads applies s to every thread of the process.
func (s *capState) setAllThreads() error {
	s.hdr.Pid = 0
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&s.hdr)), uintptr(unsafe.Pointer(&s.data[0])), 0)
	runtime.KeepAlive(s)
	if errno != 0 {
		return fmt.Errorf("capset on every thread: %w", errno)
	}
	return nil
}

// capMask is the bit mask of the capabilities caps.
func capMask(caps ...int) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return m
}

// attachOnlyCaps are what only the start needs: after tracer.Open
// returned, the programs are loaded, attached and self-tested (every
// bpf(BPF_PROG_LOAD), link and perf_event_open is done), the ring or perf
// buffer is open and the memlock limit is raised (CAP_SYS_RESOURCE, kernels
// before 5.11). What runs later (reading the maps, the programs'
// statistics, the events_off switch, detaching at Close) works on file
// descriptors the daemon holds. Left are CAP_SYS_ADMIN (setns into every
// namespace), CAP_NET_ADMIN (ctnetlink, and SO_RCVBUFFORCE on the netlink
// backend's event sockets: net/core/sock.c checks CAP_NET_ADMIN for it) and
// CAP_SYS_PTRACE (/proc/PID/ns/net). The netlink backend never needed the
// three. See docs/security.md.
func attachOnlyCaps(tracer.Backend) uint64 {
	return capMask(unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_RESOURCE)
}

// dropCapsAfterAttach: ctagent run drops what only attaching needed
// (dropAttachCaps). The tests turn it off (TestMain) for the daemons they
// run in their own process: capabilities belong to the whole process, and
// the next test needs them; the daemon they start as a process of its own
// (TestVMLeastPrivilege) drops them.
var dropCapsAfterAttach = true

// dropAttachCaps removes the capabilities that only attaching needed from
// every thread, for good, and logs the effective set left. probe makes the
// reads the daemon keeps making (the tracer's maps); it runs first with the
// capabilities dropped from the effective set only, and when it fails they
// are raised again and kept: before Linux 6.5 (commit 1b67772e4e3f, "bpf:
// move unprivileged checks into map_create() and bpf_prog_load()") every
// bpf(2) command, map reads included, needs CAP_BPF or CAP_SYS_ADMIN when
// kernel.unprivileged_bpf_disabled is set (Debian's default), so there
// CAP_BPF stays when CAP_SYS_ADMIN is not held. It does nothing unless
// enabled.
func dropAttachCaps(b tracer.Backend, enabled bool, probe func() error, log *zap.Logger) {
	if !enabled {
		return
	}
	before, err := getCaps()
	if err != nil {
		log.Warn("Capabilities not dropped", zap.Error(err))
		return
	}
	drop := attachOnlyCaps(b) & before.permitted()
	if drop == 0 {
		log.Info("Capabilities after attach", zap.String("effective", capSetNames(before.effective())),
			zap.String("dropped", "none held"))
		return
	}
	s := *before
	s.clear(drop, false)
	if err := s.setAllThreads(); errors.Is(err, unix.ENOTSUP) {
		// A cgo build (the host tests' race detector): a property of the
		// build, said once at start.
		log.Info("Capabilities not dropped: AllThreadsSyscall needs a build without cgo",
			zap.String("kept", capSetNames(drop)), zap.Error(err))
		return
	} else if err != nil {
		log.Warn("Capabilities not dropped", zap.String("kept", capSetNames(drop)), zap.Error(err))
		return
	}
	if perr := probe(); perr != nil {
		// Raise them again (still permitted), keep CAP_BPF, drop the rest.
		restore := *before
		if err := restore.setAllThreads(); err != nil {
			log.Error("Capabilities not restored after a failed probe", zap.Error(errors.Join(perr, err)))
			return
		}
		log.Info("Keeping CAP_BPF: reading the maps needs it on this kernel", zap.Error(perr))
		drop &^= capMask(unix.CAP_BPF)
	}
	s = *before
	s.clear(drop, true)
	if err := s.setAllThreads(); err != nil {
		log.Warn("Capabilities not dropped", zap.String("kept", capSetNames(drop)), zap.Error(err))
		return
	}
	after, err := getCaps()
	if err != nil {
		log.Warn("Capabilities after attach", zap.Error(err))
		return
	}
	log.Info("Capabilities after attach", zap.String("effective", capSetNames(after.effective())),
		zap.String("dropped", capSetNames(drop)))
}
