package netns_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/netns"
)

// WatchNamed calls back once a namespace is bind-mounted on a name in a
// netns directory (what "ip netns add" does) and once it is unmounted, and
// a Refresh made in the callback already sees the change; a namespace
// mounted elsewhere does not call it. The directory is the test's own
// (other tests add names to /var/run/netns meanwhile), reached through a
// symlink, and made only after the watch started, as /var/run/netns is at
// the first "ip netns add".
func TestWatchNamed(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(base, link); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(link, "netns") // does not exist yet
	r := netns.NewResolver(netns.Options{NetnsDirs: []string{dir}, Logger: zaptest.NewLogger(t)})

	// Each call refreshes, as the exporter's discovery does, and reports
	// what the refresh found.
	calls := make(chan []netns.Namespace, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- r.WatchNamed(ctx, func() {
			if err := r.Refresh(); err != nil {
				t.Logf("refresh: %v", err)
			}
			calls <- r.Namespaces()
		})
	}()
	next := func(what string) []netns.Namespace {
		t.Helper()
		select {
		case nss := <-calls:
			return nss
		case err := <-done:
			t.Fatalf("%s: WatchNamed returned %v", what, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no call within 10s", what)
		}
		return nil
	}
	next("start") // the first call, once it watches

	p := labnet.StartProc(t, nil, "ct-named")
	want := labnet.NetnsInode(t, p.PID)
	nsPath := fmt.Sprintf("/proc/%d/ns/net", p.PID)
	bind := func(target string) {
		t.Helper()
		if err := os.WriteFile(target, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(nsPath, target, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind %s on %s: %v", nsPath, target, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(target, unix.MNT_DETACH) })
	}

	// Mounted outside the directory: no call, or the next call would come
	// before the name below exists.
	elsewhere := filepath.Join(t.TempDir(), "elsewhere")
	bind(elsewhere)
	if err := unix.Unmount(elsewhere, 0); err != nil {
		t.Fatal(err)
	}

	if err := os.Mkdir(filepath.Join(base, "netns"), 0o755); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "blue")
	bind(name)
	named := func(nss []netns.Namespace) bool {
		return slices.ContainsFunc(nss, func(x netns.Namespace) bool { return x.Inode == want && x.Path == name })
	}
	if nss := next("mount"); !named(nss) {
		t.Fatalf("called after %s was mounted on %s, but a refresh then does not list it there: %v", nsPath, name, nss)
	}

	// The process exits (no mount changes, no call); the name keeps the
	// namespace until it is unmounted.
	p.Stop()
	if err := unix.Unmount(name, 0); err != nil {
		t.Fatal(err)
	}
	if nss := next("unmount"); slices.ContainsFunc(nss, func(x netns.Namespace) bool { return x.Inode == want }) {
		t.Fatalf("called after %s was unmounted, but a refresh then still lists namespace %d: %v", name, want, nss)
	}
	select {
	case nss := <-calls:
		t.Errorf("a call nothing explains; the refresh listed %v", nss)
	default:
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WatchNamed after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchNamed did not return within 10s of the cancel")
	}
}
