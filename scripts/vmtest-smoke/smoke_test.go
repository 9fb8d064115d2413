// Package vmtestsmoke is a throwaway smoke test for the qemu kernel lab
// (scripts/vmtest.sh). It does nothing unless CTAGENT_VMTEST=1, i.e. inside
// the guest:
//
//	CGO_ENABLED=0 go test -c -o /tmp/smoke.test ./scripts/vmtest-smoke
//	scripts/vmtest.sh /tmp/smoke.test
package vmtestsmoke

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Getenv("CTAGENT_VMTEST") == "1" {
		fmt.Println("VMTEST-HOOKS: smoke")
	}
	os.Exit(m.Run())
}

func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("CTAGENT_VMTEST") != "1" {
		t.Skip("needs the qemu kernel lab (CTAGENT_VMTEST=1); run scripts/vmtest.sh")
	}
}

// run runs a command and fails the test when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	t.Logf("$ %s %s\n%s", name, strings.Join(args, " "), bytes.TrimSpace(out))
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

func TestGuestEnvironment(t *testing.T) {
	requireVM(t)
	if os.Getenv("CTAGENT_KERNEL") == "" {
		t.Error("CTAGENT_KERNEL is not set")
	}
	for _, p := range []string{
		"/sys/kernel/btf/vmlinux",
		"/sys/kernel/btf/nf_conntrack",
		"/sys/kernel/tracing/kprobe_events",
		"/sys/kernel/debug/tracing",
		"/proc/net/stat/nf_conntrack",
		"/proc/sys/net/netfilter/nf_conntrack_max",
	} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{" /sys/fs/bpf bpf ", " /sys/kernel/tracing tracefs ", " /sys/kernel/debug debugfs "} {
		if !strings.Contains(string(mounts), want) {
			t.Errorf("/proc/mounts lacks %q", want)
		}
	}
	for _, m := range []string{"nf_conntrack", "nf_conntrack_netlink", "nf_tables", "nft_ct", "nft_nat",
		"nft_masq", "nft_chain_nat", "nf_nat", "veth", "nf_defrag_ipv4", "nf_defrag_ipv6", "nfnetlink"} {
		if _, err := os.Stat("/sys/module/" + m); err != nil {
			t.Errorf("module %s not loaded", m)
		}
	}
	// The real tools, not busybox applets, must come first on PATH, also for sh -c.
	for _, tool := range []string{"ip", "nft", "conntrack", "ping", "traceroute"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Errorf("%s not on PATH: %v", tool, err)
			continue
		}
		real, _ := filepath.EvalSymlinks(p)
		if filepath.Base(real) == "busybox" {
			t.Errorf("%s resolves to busybox (%s)", tool, p)
		}
	}
	if out := run(t, "sh", "-c", "ip -V"); !strings.Contains(out, "iproute2") {
		t.Errorf("sh -c 'ip -V' did not run iproute2's ip: %q", out)
	}
	uts := run(t, "uname", "-r")
	t.Logf("kernel %s (%s)", strings.TrimSpace(uts), os.Getenv("CTAGENT_KERNEL"))
}

func TestConntrackInNetns(t *testing.T) {
	requireVM(t)
	const ns = "smoke"
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "link", "add", "smoke0", "type", "veth", "peer", "name", "smoke1")
	t.Cleanup(func() { exec.Command("ip", "link", "del", "smoke0").Run() })
	run(t, "ip", "link", "set", "smoke1", "netns", ns)
	run(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "smoke0")
	run(t, "ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "smoke0", "nodad")
	run(t, "ip", "link", "set", "smoke0", "up")
	run(t, "ip", "-n", ns, "addr", "add", "192.0.2.2/24", "dev", "smoke1")
	run(t, "ip", "-n", ns, "-6", "addr", "add", "2001:db8::2/64", "dev", "smoke1", "nodad")
	run(t, "ip", "-n", ns, "link", "set", "smoke1", "up")
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")

	rules := filepath.Join(t.TempDir(), "smoke.nft")
	if err := os.WriteFile(rules, []byte(`table inet smoke {
	chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related counter accept
		ct state new counter accept
	}
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "exec", ns, "nft", "-f", rules)
	run(t, "ip", "netns", "exec", ns, "nft", "list", "ruleset")

	run(t, "ping", "-c", "2", "-W", "5", "192.0.2.2")
	run(t, "ping", "-6", "-c", "2", "-W", "5", "2001:db8::2")
	// One UDP probe to a closed port: a UDP entry (the reply is ICMP unreachable).
	run(t, "traceroute", "-n", "-q", "1", "-m", "1", "-p", "33434", "192.0.2.2")

	v4 := run(t, "ip", "netns", "exec", ns, "conntrack", "-L", "-f", "ipv4")
	if !strings.Contains(v4, "icmp") || !strings.Contains(v4, "dst=192.0.2.2") {
		t.Errorf("no ICMP entry for 192.0.2.2 in netns %s:\n%s", ns, v4)
	}
	if !strings.Contains(v4, "udp") || !strings.Contains(v4, "dport=33434") {
		t.Errorf("no UDP entry for port 33434 in netns %s:\n%s", ns, v4)
	}
	v6 := run(t, "ip", "netns", "exec", ns, "conntrack", "-L", "-f", "ipv6")
	if !strings.Contains(v6, "icmpv6") || !strings.Contains(v6, "dst=2001:db8::2") {
		t.Errorf("no ICMPv6 entry for 2001:db8::2 in netns %s:\n%s", ns, v6)
	}
	// Informational: the root namespace has no rule using conntrack.
	run(t, "conntrack", "-L")
	run(t, "ip", "netns", "exec", ns, "conntrack", "-S")
	run(t, "ip", "netns", "exec", ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count")
}
