// Package nsfarm creates many named network namespaces with one real
// conntrack entry each, for the scale benchmarks (internal/scalebench and
// the one-scrape benchmark of pkg/metrics). Needs root.
package nsfarm

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where the namespaces are named (bind mounts, like ip netns add).
const Dir = "/run/netns"

// parallel is how many namespaces are made at a time.
const parallel = 8

// Entry addresses: RFC 5737 documentation addresses, which no packet uses.
var (
	entrySrc = netip.MustParseAddr("192.0.2.1")
	entryDst = netip.MustParseAddr("192.0.2.2")
)

// Farm is a set of named namespaces.
type Farm struct {
	Names []string // made, in order
}

// Paths returns the paths of the namespaces (Dir/name).
func (f *Farm) Paths() []string {
	out := make([]string, len(f.Names))
	for i, n := range f.Names {
		out[i] = filepath.Join(Dir, n)
	}
	return out
}

// Create makes n namespaces named prefix-0 ... prefix-(n-1) in Dir, each
// with one UNREPLIED UDP conntrack entry 192.0.2.1:1000 -> 192.0.2.2:53
// inserted over ctnetlink, an hour to live. On error the farm holds the
// namespaces made so far (Delete them).
func Create(prefix string, n int) (*Farm, error) {
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := createOne(name); err != nil {
				errs[i] = fmt.Errorf("netns %s: %w", name, err)
				return
			}
			names[i] = name
		})
	}
	wg.Wait()
	f := &Farm{Names: slices.DeleteFunc(names, func(s string) bool { return s == "" })}
	return f, errors.Join(errs...)
}

// createOne makes the named namespace and inserts its entry. It runs on a
// thread of its own that it leaves in the new namespace: the goroutine
// ends locked, so the runtime ends the thread.
func createOne(name string) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		done <- func() error {
			_ = netns.DeleteNamed(name) // a leftover of an interrupted run
			h, err := netns.NewNamed(name)
			if err != nil {
				return err
			}
			defer h.Close()
			c, err := conntrack.Dial(nil)
			if err != nil {
				return fmt.Errorf("ctnetlink: %w", err)
			}
			defer c.Close()
			f := conntrack.NewFlow(unix.IPPROTO_UDP, 0, entrySrc, entryDst, 1000, 53, 3600, 0)
			if err := c.Create(f); err != nil {
				return fmt.Errorf("ctnetlink NEW: %w", err)
			}
			return nil
		}()
	}()
	return <-done
}

// Delete removes every namespace of the farm (idempotent).
func (f *Farm) Delete() error {
	var errs []error
	for _, n := range f.Names {
		if err := netns.DeleteNamed(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", n, err))
		}
	}
	f.Names = nil
	return errors.Join(errs...)
}
