// Package labnet is the test lab for conntrack: throw-away network
// namespaces joined by veth pairs, nftables rules that make conntrack track
// their traffic (and NAT it), real TCP, UDP and ICMP traffic over IPv4 and
// IPv6 made with Go's net package inside a namespace, and the conntrack CLI
// and /proc/net/stat/nf_conntrack as ground truth; long-running processes
// in those namespaces (StartProc), moved into cgroups named like the
// kubelet's (CgroupRoot, MakeCgroup). Scenarios make the kernel run
// specific conntrack paths and return the kernel's own counts: the UDP
// insert clash (UDPClash), concurrent nf_ct_delete (DeleteRace), early
// drop (EarlyDrop), expiry through the gc worker (ExpireByGC) and through a
// lookup (ExpireByLookup). Everything a test creates is removed in
// t.Cleanup.
//
// It needs root and the ip, nft and conntrack tools; Require skips a test,
// saying why, when they are missing. The same code runs on the host and in
// the qemu kernel matrix (scripts/vmtest.sh copies the tools in). It does
// not depend on the packages it tests: entries are Records with Tuples of
// netip.Addr and ports, which convert to tracer.Tuple.
//
//	labnet.Require(t, "ip", "nft", "conntrack")
//	a, b := labnet.New(t), labnet.New(t)
//	link := labnet.Connect(t, a, b)        // veth, IPv4 and IPv6 on each end
//	a.EnableConntrack()
//	b.EnableConntrack()
//	b.AddRedirect("tcp", 80, 8080)         // DNAT: reply tuples differ
//	b.ServeTCP(8080)
//	local := a.TCPRoundTrip(netip.AddrPortFrom(link.B4, 80))
//	entries := b.CTList()                  // conntrack -L, both families
//	n := b.CTCount()                       // conntrack -C inside b
//	p := labnet.StartProc(t, b, "ct-web")  // sleep, as comm ct-web, in b
//	cg := labnet.MakeCgroup(t, labnet.CgroupRoot(t, ""), "kubepods/besteffort/pod"+labnet.PodUID()+"/"+labnet.ContainerID())
//	labnet.MoveToCgroup(t, cg, p.PID)
//	r := a.UDPClash(2000)                  // r.Clashes(): clash_resolve + insert_failed
package labnet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Require skips t, saying why, unless the test runs as root and every tool
// is on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("skipped: needs root (network namespaces, conntrack, BPF); euid %d", os.Geteuid())
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not found: %v", tool, err)
		}
	}
}

// InVM reports whether the test runs inside the qemu kernel matrix
// (scripts/vmtest-init.sh sets CTAGENT_VMTEST=1), where eBPF programs
// attach; this host cannot attach kprobes or fentry.
func InVM() bool { return os.Getenv("CTAGENT_VMTEST") != "" }

// RequireVM skips t, saying why, unless it runs in the kernel matrix (see
// InVM), as root, with every tool on PATH.
func RequireVM(t testing.TB, tools ...string) {
	t.Helper()
	if !InVM() {
		t.Skip("skipped: attaches eBPF programs; runs in the qemu kernel matrix (make vmtest), this host cannot attach kprobes or fentry")
	}
	Require(t, tools...)
}

var seq atomic.Uint32

// Name returns a name unique across processes and calls, with prefix, at
// most 15 bytes for a prefix of up to 3, so it can also name an interface.
func Name(prefix string) string {
	return fmt.Sprintf("%s%d%c%d", prefix, os.Getpid()%100000, 'y', seq.Add(1)%1000)
}

// NS is a network namespace used by a test.
type NS struct {
	Name  string // ip netns name; "" for the test process's own namespace
	Path  string // /var/run/netns/Name; "" for the own namespace
	Inode uint32 // inode number of the namespace, what conntrack tracers label it with

	t       testing.TB
	delOnce sync.Once
}

// New creates a named network namespace with lo up. It is deleted in
// t.Cleanup unless Delete deleted it before. Sockets still open keep the
// namespace itself alive after its name is gone.
func New(t testing.TB) *NS {
	t.Helper()
	name := Name("lab")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, Path: "/var/run/netns/" + name, t: t}
	t.Cleanup(func() {
		if err := n.delete(); err != nil {
			t.Error(err)
		}
	})
	var st unix.Stat_t
	if err := unix.Stat(n.Path, &st); err != nil {
		t.Fatalf("stat %s: %v", n.Path, err)
	}
	n.Inode = uint32(st.Ino)
	n.MustExec("ip", "link", "set", "lo", "up")
	return n
}

// Root is the test process's own namespace. Other tests and processes use
// it too: filter by your own addresses and ports, and never flush it.
func Root(t testing.TB) *NS {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatalf("stat /proc/self/ns/net: %v", err)
	}
	return &NS{Inode: uint32(st.Ino), t: t}
}

// Delete removes the namespace's name (ip netns del); the namespace ends
// when nothing else holds it. Safe to call more than once.
func (n *NS) Delete() {
	n.t.Helper()
	if err := n.delete(); err != nil {
		n.t.Fatal(err)
	}
}

func (n *NS) delete() error {
	var err error
	n.delOnce.Do(func() {
		if n.Name == "" {
			err = errors.New("labnet: cannot delete the root namespace")
			return
		}
		if out, e := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); e != nil {
			err = fmt.Errorf("ip netns del %s: %v: %s", n.Name, e, out)
		}
	})
	return err
}

// Command returns a command that runs in n (through ip netns exec).
func (n *NS) Command(args ...string) *exec.Cmd {
	if n.Name == "" {
		return exec.Command(args[0], args[1:]...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Exec runs a command in n and returns its combined output.
func (n *NS) Exec(args ...string) (string, error) {
	out, err := n.Command(args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns %q: %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustExec runs a command in n, fails the test if it fails, and returns its
// standard output.
func (n *NS) MustExec(args ...string) string {
	n.t.Helper()
	cmd := n.Command(args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		n.t.Fatalf("netns %q: %s: %v: %s", n.Name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// Do runs fn on an OS thread switched into n, then switches the thread
// back. Sockets fn creates stay in n and can be used from any goroutine
// afterwards; goroutines fn starts do not run in n.
func (n *NS) Do(fn func() error) error {
	if n.Path == "" {
		return fn()
	}
	target, err := unix.Open(n.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", n.Path, err)
	}
	defer unix.Close(target)
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.Path, err)
	}
	fnErr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// The thread stays locked: it ends with this goroutine.
		return errors.Join(fnErr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Sysctl sets the sysctl name (dotted, e.g.
// "net.netfilter.nf_conntrack_udp_timeout") to value as seen from n: the
// net.* ones are per namespace.
func (n *NS) Sysctl(name, value string) {
	n.t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	if err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		n.t.Fatalf("netns %q: sysctl %s=%s: %v", n.Name, name, value, err)
	}
}

// NFT loads an nftables ruleset (nft -f -) in n. Statements inside a
// chain need a newline or ';' after each.
func (n *NS) NFT(ruleset string) {
	n.t.Helper()
	cmd := n.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("netns %q: nft: %v: %s\n%s", n.Name, err, out, ruleset)
	}
}

// EnableConntrack adds an inet table whose ct rules make conntrack track
// IPv4 and IPv6 traffic in n (the hooks run only when some rule or
// ctnetlink uses them); every packet is accepted.
func (n *NS) EnableConntrack() {
	n.t.Helper()
	n.NFT(`table inet labnet {
	chain pre { type filter hook prerouting priority -150; ct state new counter; }
	chain out { type filter hook output priority -150; ct state new counter; }
}
`)
}

// AddRedirect adds a DNAT rule in n: proto ("tcp" or "udp") to port is
// redirected to the local port to, for IPv4 and IPv6. The reply tuples of
// those entries then carry the port to.
func (n *NS) AddRedirect(proto string, port, to uint16) {
	n.t.Helper()
	n.NFT(fmt.Sprintf(`table inet labnetnat {
	chain pre { type nat hook prerouting priority -100; %s dport %d redirect to :%d; }
}
`, proto, port, to))
}

// WaitFor polls cond every 20 ms until it holds or timeout has passed, and
// reports whether it held. The caller decides whether a time-out is fatal.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// Eventually calls check every 100 ms until it returns nil, and fails t
// with check's last error once timeout has passed.
func Eventually(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
