package labnet

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// This file holds what the scenario helpers (race.go, earlydrop.go,
// expire.go) share: the namespace's entry count read without touching an
// entry, ctnetlink sockets in a namespace (github.com/ti-mo/conntrack), and
// two goroutines on OS threads pinned to two CPUs that meet at a spin
// barrier.

// ConntrackCount reads net.netfilter.nf_conntrack_count as n sees it: the
// entries n's conntrack has allocated and not yet freed (the kernel's
// per-namespace cnet->count, which __nf_conntrack_alloc checks against
// nf_conntrack_max). Reading it looks no entry up: unlike a ctnetlink dump
// (conntrack -L) or GET (conntrack -G), which free an expired entry they
// meet (ctnetlink_dump_table; ____nf_conntrack_find calls
// nf_ct_gc_expired), it leaves expiry to the kernel's gc worker.
func (n *NS) ConntrackCount() uint64 {
	n.t.Helper()
	v, err := n.readSysctlUint("nf_conntrack_count")
	if err != nil {
		n.t.Fatal(err)
	}
	return v
}

// ConntrackBuckets reads net.netfilter.nf_conntrack_buckets: the size of
// the kernel's one conntrack hash table, which every namespace shares.
func (n *NS) ConntrackBuckets() uint64 {
	n.t.Helper()
	v, err := n.readSysctlUint("nf_conntrack_buckets")
	if err != nil {
		n.t.Fatal(err)
	}
	return v
}

// readSysctlUint reads /proc/sys/net/netfilter/name in n. /proc/sys/net
// resolves to the network namespace of the thread that opens it, so a
// thread switched into n (Do) reads n's value.
func (n *NS) readSysctlUint(name string) (uint64, error) {
	path := "/proc/sys/net/netfilter/" + name
	var b []byte
	if err := n.Do(func() (err error) {
		b, err = os.ReadFile(path)
		return err
	}); err != nil {
		return 0, fmt.Errorf("netns %q: read %s: %w", n.Name, path, err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("netns %q: %s: %q: %w", n.Name, path, b, err)
	}
	return v, nil
}

// DialConntrack opens a ctnetlink socket (github.com/ti-mo/conntrack) in
// n; the caller closes it.
func (n *NS) DialConntrack() (*conntrack.Conn, error) {
	if n.Path == "" {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return nil, fmt.Errorf("ctnetlink socket: %w", err)
		}
		return c, nil
	}
	f, err := os.Open(n.Path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", n.Path, err)
	}
	defer f.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("netns %q: ctnetlink socket: %w", n.Name, err)
	}
	return c, nil
}

// twoCPUs returns two distinct CPUs the test process may run on, or skips
// t, saying why, when there is only one.
func (n *NS) twoCPUs() [2]int {
	n.t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		n.t.Fatalf("sched_getaffinity: %v", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		n.t.Skipf("skipped: a race needs two CPUs, this process may run on %d", set.Count())
	}
	return [2]int{cpus[0], cpus[1]}
}

// enterLocked switches the calling thread, which the caller has locked
// (runtime.LockOSThread) and will never unlock, into n for good. Nothing to
// do for the own namespace.
func (n *NS) enterLocked() error {
	if n.Path == "" {
		return nil
	}
	fd, err := unix.Open(n.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", n.Path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", n.Path, err)
	}
	return nil
}

// spinBarrier lets two threads leave a wait at (almost) the same moment:
// each adds one on arrival and spins on an atomic load, with no sleep and
// no system call, until both have arrived. It is reused round after round
// without reset: a thread cannot lap the other, since it waits for it.
type spinBarrier struct {
	arrived atomic.Uint64
}

// wait is round (1, 2, ...) of the calling side; it returns false, without
// waiting further, once stop is set.
func (b *spinBarrier) wait(round uint64, stop *atomic.Bool) bool {
	b.arrived.Add(1)
	for b.arrived.Load() < 2*round {
		if stop.Load() {
			return false
		}
	}
	return true
}

// errStopped ends the side of a race whose other side failed.
var errStopped = errors.New("stopped: the other side failed")

// race describes a two-thread race repeated iterations times. Side 0 and
// side 1 run on goroutines locked to OS threads pinned to two different
// CPUs (sched_setaffinity of the thread) and switched into the namespace.
// In each iteration side 0 runs prepare, both meet at a spin barrier and
// run act at once, meet again, and side 0 runs finish with both act
// errors. The threads are never unlocked: they end with their goroutines,
// and so do their pinning and namespace.
type race struct {
	iterations int
	setup      func(side int) error // once per side, on its pinned thread
	teardown   func(side int)       // once per side, after the last iteration
	prepare    func(i int) error
	act        func(side, i int) error
	finish     func(i int, errs [2]error) error
}

// run runs r in n and returns the first error of either side.
func (n *NS) run(r race) error {
	cpus := n.twoCPUs()
	var (
		bar     spinBarrier
		stop    atomic.Bool
		actErrs [2]error
		done    = make(chan error, 2)
	)
	for side := range 2 {
		go func() {
			runtime.LockOSThread() // never unlocked, see race
			err := func() error {
				var set unix.CPUSet
				set.Set(cpus[side])
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					return fmt.Errorf("side %d: pin to CPU %d: %w", side, cpus[side], err)
				}
				if err := n.enterLocked(); err != nil {
					return fmt.Errorf("side %d: %w", side, err)
				}
				if r.setup != nil {
					if err := r.setup(side); err != nil {
						return fmt.Errorf("side %d: %w", side, err)
					}
				}
				if r.teardown != nil {
					defer r.teardown(side)
				}
				round := uint64(0)
				for i := range r.iterations {
					if side == 0 && r.prepare != nil {
						if err := r.prepare(i); err != nil {
							return fmt.Errorf("iteration %d: %w", i, err)
						}
					}
					if round++; !bar.wait(round, &stop) {
						return errStopped
					}
					actErrs[side] = r.act(side, i)
					if round++; !bar.wait(round, &stop) {
						return errStopped
					}
					if side == 0 {
						if err := r.finish(i, actErrs); err != nil {
							return fmt.Errorf("iteration %d: %w", i, err)
						}
					}
				}
				return nil
			}()
			if err != nil {
				stop.Store(true)
			}
			done <- err
		}()
	}
	var errs []error
	for range 2 {
		if err := <-done; err != nil && !errors.Is(err, errStopped) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("netns %q: race on CPUs %d and %d: %w", n.Name, cpus[0], cpus[1], errors.Join(errs...))
	}
	return nil
}

// statDelta is after[key]-before[key]; ok is false when the kernel does
// not report key.
func statDelta(before, after map[string]uint64, key string) (d uint64, ok bool) {
	a, ok1 := after[key]
	b, ok2 := before[key]
	if !ok1 || !ok2 {
		return 0, false
	}
	return a - b, true
}
