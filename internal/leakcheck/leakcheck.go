// Package leakcheck is the TestMain of the host test packages: once their
// tests have passed, no goroutine they started may still run (goleak) and
// no file descriptor they opened may still be open.
package leakcheck

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Main runs the tests of m, then the leak checks, and exits: use it as
//
//	func TestMain(m *testing.M) { leakcheck.Main(m) }
//
// opts ignore goroutines that are meant to outlive the tests; say why
// next to each.
func Main(m *testing.M, opts ...goleak.Option) {
	os.Exit(Run(m, os.Stderr, opts...))
}

// Run runs the tests of m and, when they pass, the leak checks; it returns
// the exit code and reports leaks to w. An *os.File that nothing references
// any more may be closed by the garbage collector before the count: that
// leak goes unseen.
func Run(m *testing.M, w io.Writer, opts ...goleak.Option) int {
	// Descriptors that live as long as the process, opened on first use:
	// the runtime's netpoller (an epoll descriptor and its wake-up
	// eventfd). Open them now, so that they count as there before.
	if r, wr, err := os.Pipe(); err == nil {
		r.Close()
		wr.Close()
	}
	before, fdErr := OpenFDs()
	// Goroutines from before the tests (package init) are not theirs.
	opts = append(opts, goleak.IgnoreCurrent())

	code := m.Run()
	if code != 0 {
		return code // the tests failed already; a leak then is noise
	}
	if err := goleak.Find(opts...); err != nil {
		fmt.Fprintf(w, "leakcheck: goroutines still running after the tests: %v\n", err)
		code = 1
	}
	if fdErr != nil {
		fmt.Fprintf(w, "leakcheck: no file descriptor check: %v\n", fdErr)
		return code
	}
	// A descriptor may be closed by a goroutine that is just ending (an
	// HTTP client's connection, a netlink socket's reader): wait a little.
	var leaked []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after, err := OpenFDs()
		if err != nil {
			fmt.Fprintf(w, "leakcheck: no file descriptor check: %v\n", err)
			return code
		}
		if leaked = NewFDs(before, after); len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(leaked) > 0 {
		fmt.Fprintf(w, "leakcheck: %d file descriptors opened by the tests are still open:\n  %s\n",
			len(leaked), strings.Join(leaked, "\n  "))
		code = 1
	}
	return code
}

// OpenFDs returns this process's open file descriptors and what each
// refers to ("socket:[1234]", "anon_inode:bpf-map", a path), without the
// one that reads /proc/self/fd.
func OpenFDs() (map[int]string, error) {
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	out := make(map[int]string, len(names))
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || uintptr(fd) == dir.Fd() {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + name)
		if err != nil {
			continue // closed in the meantime
		}
		out[fd] = target
	}
	return out, nil
}

// NewFDs lists the descriptors of after that were not open in before, or
// refer to something else now, as "fd -> target", sorted.
func NewFDs(before, after map[int]string) []string {
	var out []string
	for fd, target := range after {
		if old, ok := before[fd]; !ok || old != target {
			out = append(out, fmt.Sprintf("%d -> %s", fd, target))
		}
	}
	slices.Sort(out)
	return out
}
