package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// testNetns is a named network namespace made by a test.
type testNetns struct {
	name  string
	path  string
	inode uint32
}

const netnsPrefix = "ctagent-e2e-"

// addNetns creates a named network namespace with loopback up and an
// nftables rule that uses conntrack (conntrack hooks only run in a namespace
// where something needs them); it is deleted in t.Cleanup.
func addNetns(t *testing.T, suffix string) *testNetns {
	t.Helper()
	name := fmt.Sprintf("%s%d-%s", netnsPrefix, os.Getpid(), suffix)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns := &testNetns{name: name, path: filepath.Join("/var/run/netns", name)}
	var st unix.Stat_t
	if err := unix.Stat(ns.path, &st); err != nil {
		t.Fatal(err)
	}
	ns.inode = uint32(st.Ino)
	ns.exec(t, "ip", "link", "set", "lo", "up")
	ns.exec(t, "nft", "add table inet e2e; add chain inet e2e out { type filter hook output priority 0; policy accept; }; add rule inet e2e out ct state new counter")
	return ns
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exec runs a command inside the namespace.
func (ns *testNetns) exec(t *testing.T, name string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
}

// insert adds a conntrack entry over ctnetlink (conntrack -I); the entry is
// ASSURED with a 10 minute timeout so it stays until the test deletes it.
func (ns *testNetns) insert(t *testing.T, proto string, sport int) {
	t.Helper()
	args := []string{"-I", "-p", proto, "-s", "192.0.2.1", "-d", "192.0.2.2",
		"--sport", strconv.Itoa(sport), "--dport", "80", "-t", "600", "-u", "ASSURED"}
	if proto == "tcp" {
		args = append(args, "--state", "ESTABLISHED")
	}
	ns.exec(t, "conntrack", args...)
}

// delete removes the entry insert made.
func (ns *testNetns) delete(t *testing.T, proto string, sport int) {
	t.Helper()
	ns.exec(t, "conntrack", "-D", "-p", proto, "-s", "192.0.2.1", "-d", "192.0.2.2",
		"--sport", strconv.Itoa(sport), "--dport", "80")
}

// count is the ground truth: conntrack -C in the namespace.
func (ns *testNetns) count(t *testing.T) int {
	t.Helper()
	out := strings.TrimSpace(ns.exec(t, "conntrack", "-C"))
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("conntrack -C in %s: %q", ns.name, out)
	}
	return n
}

// tcpConnect makes a real TCP connection over loopback inside the
// namespace: a listener and a client socket, created on a thread that
// entered the namespace. The sockets stay open until t.Cleanup.
func (ns *testNetns) tcpConnect(t *testing.T) {
	t.Helper()
	var (
		ln  net.Listener
		c   net.Conn
		err error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// This thread changes namespace and is never reused: it exits with
		// the goroutine because it stays locked.
		runtime.LockOSThread()
		f, ferr := os.Open(ns.path)
		if ferr != nil {
			err = ferr
			return
		}
		defer f.Close()
		if err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			return
		}
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return
		}
		c, err = net.Dial("tcp", ln.Addr().String())
	}()
	<-done
	if err != nil {
		t.Fatalf("TCP in %s: %v", ns.name, err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err == nil {
			accepted <- s
		}
		close(accepted)
	}()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	buf := make([]byte, 5)
	if _, err := s.Read(buf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		s.Close()
		ln.Close()
	})
}

// removeStaleNetns deletes namespaces that an earlier, killed run of these
// tests left behind (their names carry a PID that no longer runs).
func removeStaleNetns(t *testing.T) {
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() || unix.Kill(pid, 0) == nil {
			continue
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}
