package netns

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// fakeProc is a directory laid out like /proc. The "ns/net" of a process is
// a regular file: the resolver only needs its inode. It runs without root.
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T) *fakeProc {
	p := &fakeProc{t: t, root: t.TempDir()}
	for _, junk := range []string{"self", "net", "sys", "0"} {
		if err := os.Mkdir(filepath.Join(p.root, junk), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// add creates process pid. nsFrom names a process whose namespace it shares,
// 0 for a new one; comm or cgroup "" leaves that file out, as if the process
// exited right after its namespace was read.
func (p *fakeProc) add(pid, nsFrom int, comm, cgroup string) {
	p.t.Helper()
	dir := filepath.Join(p.root, strconv.Itoa(pid))
	if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
		p.t.Fatal(err)
	}
	ns := filepath.Join(dir, "ns", "net")
	var err error
	if nsFrom != 0 {
		err = os.Link(filepath.Join(p.root, strconv.Itoa(nsFrom), "ns", "net"), ns)
	} else {
		err = os.WriteFile(ns, nil, 0o644)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	for file, content := range map[string]string{"comm": comm, "cgroup": cgroup} {
		if content == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			p.t.Fatal(err)
		}
	}
}

func (p *fakeProc) inode(pid int) uint32 {
	p.t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(p.root, strconv.Itoa(pid), "ns", "net"), &st); err != nil {
		p.t.Fatal(err)
	}
	return uint32(st.Ino)
}

func (p *fakeProc) remove(pid int) {
	p.t.Helper()
	if err := os.RemoveAll(filepath.Join(p.root, strconv.Itoa(pid))); err != nil {
		p.t.Fatal(err)
	}
}

type stubPods map[string]PodInfo

func (s stubPods) PodByUID(uid string) (PodInfo, bool) {
	p, ok := s[uid]
	return p, ok
}

const (
	podCgroup     = "0::/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n"
	hostNetCgroup = "0::/kubepods/besteffort/pod" + hash + "/" + cid2 + "\n"
)

func fakeResolver(t *testing.T, p *fakeProc, minRefresh time.Duration) *Resolver {
	return NewResolver(Options{
		ProcRoot:  p.root,
		NetnsDirs: []string{filepath.Join(p.root, "no-such-dir")},
		Logger:    zaptest.NewLogger(t),
		Pods: stubPods{
			uid:  {Name: "web-0", Namespace: "shop", Labels: map[string]string{"app": "web"}},
			hash: {Name: "agent", Namespace: "kube-system", HostNetwork: true},
		},
		MinRefreshInterval: minRefresh,
	})
}

func TestResolverFakeProc(t *testing.T) {
	p := newFakeProc(t)
	p.add(1, 0, "systemd\n", podCgroup) // host; a pod cgroup must not name it
	p.add(2, 1, "kthreadd\n", "0::/\n")
	p.add(40, 0, "", "")                   // exited before comm was read
	p.add(41, 40, "pause\n", podCgroup)    // so this one represents the namespace
	p.add(42, 40, "nginx\n", podCgroup)    // higher PID
	p.add(50, 0, "agent\n", hostNetCgroup) // a process of a hostNetwork pod in its own netns
	p.add(60, 0, "", "")                   // exited: its only process is gone
	gone60 := p.inode(60)
	if err := os.Remove(filepath.Join(p.root, "60", "ns", "net")); err != nil {
		t.Fatal(err)
	}
	p.add(70, 0, "dead\n", "") // comm but no cgroup: exited in between

	r := fakeResolver(t, p, time.Hour)
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	host, pod, hostNet := p.inode(1), p.inode(40), p.inode(50)
	want := map[uint32]Identity{
		host: {Inode: host, Host: true, PID: 1, Comm: "systemd", ContainerID: cid, Runtime: RuntimeContainerd, PodUID: uid},
		pod: {Inode: pod, PID: 41, Comm: "pause", ContainerID: cid, Runtime: RuntimeContainerd, PodUID: uid,
			Pod: "web-0", PodNamespace: "shop", PodLabels: map[string]string{"app": "web"}},
		hostNet: {Inode: hostNet, PID: 50, Comm: "agent", ContainerID: cid2, PodUID: hash},
	}
	for ino, w := range want {
		got, ok := r.Lookup(ino)
		if !ok || !reflect.DeepEqual(got, w) {
			t.Errorf("Lookup(%d) = %+v, %v\nwant %+v", ino, got, ok, w)
		}
	}
	for _, ino := range []uint32{gone60, p.inode(70)} {
		if id, ok := r.Lookup(ino); ok {
			t.Errorf("the process exited, yet Lookup(%d) = %+v", ino, id)
		}
	}
	wantNs := []Namespace{
		{host, filepath.Join(p.root, "1/ns/net")},
		{pod, filepath.Join(p.root, "41/ns/net")},
		{hostNet, filepath.Join(p.root, "50/ns/net")},
	}
	sortNamespaces(wantNs)
	if got := r.Namespaces(); !reflect.DeepEqual(got, wantNs) {
		t.Errorf("Namespaces() = %v\nwant %v", got, wantNs)
	}

	// The pod's processes exit: the namespace is forgotten.
	p.remove(41)
	p.remove(42)
	p.remove(40)
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	if id, ok := r.Lookup(pod); ok {
		t.Errorf("Lookup after the pod's processes exited = %+v", id)
	}
	if got := len(r.Namespaces()); got != 2 {
		t.Errorf("%d namespaces after one went away, want 2", got)
	}
}

func sortNamespaces(ns []Namespace) {
	for i := range ns {
		for j := i + 1; j < len(ns); j++ {
			if ns[j].Inode < ns[i].Inode {
				ns[i], ns[j] = ns[j], ns[i]
			}
		}
	}
}

func TestResolverProcRootMissing(t *testing.T) {
	r := NewResolver(Options{ProcRoot: filepath.Join(t.TempDir(), "nope"), Logger: zaptest.NewLogger(t)})
	if err := r.Refresh(); err == nil {
		t.Error("Refresh with a missing ProcRoot succeeded")
	}
	if _, ok := r.Lookup(1); ok {
		t.Error("Lookup found something in an empty cache")
	}
}

func TestLookupRefreshRateLimit(t *testing.T) {
	p := newFakeProc(t)
	p.add(1, 0, "init\n", "0::/\n")
	var refreshes atomic.Int32
	counting := func(minRefresh time.Duration) *Resolver {
		r := fakeResolver(t, p, minRefresh)
		r.scanHook = func() { refreshes.Add(1) }
		return r
	}
	const unknown = 1 // no namespace has inode 1

	// A new resolver refreshes on the first miss, then not for an hour,
	// however many callers miss at once.
	r := counting(time.Hour)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { r.Lookup(unknown) })
	}
	wg.Wait()
	r.Lookup(unknown)
	if n := refreshes.Load(); n != 1 {
		t.Errorf("%d refreshes for unknown inodes, want 1", n)
	}
	// A process that appears later is found by the periodic refresh only.
	p.add(300, 0, "late\n", "0::/\n")
	if _, ok := r.Lookup(p.inode(300)); ok {
		t.Error("Lookup refreshed although the rate limit forbids it")
	}
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	if id, ok := r.Lookup(p.inode(300)); !ok || id.PID != 300 {
		t.Errorf("Lookup after Refresh = %+v, %v", id, ok)
	}

	// Without a meaningful limit, each miss refreshes and finds newcomers.
	refreshes.Store(0)
	r = counting(time.Nanosecond)
	r.Lookup(unknown)
	time.Sleep(time.Millisecond)
	r.Lookup(unknown)
	if n := refreshes.Load(); n != 2 {
		t.Errorf("%d refreshes, want 2", n)
	}
	p.add(301, 0, "later\n", "0::/\n")
	time.Sleep(time.Millisecond)
	if id, ok := r.Lookup(p.inode(301)); !ok || id.Comm != "later" {
		t.Errorf("Lookup of a new namespace = %+v, %v", id, ok)
	}
}

func TestRun(t *testing.T) {
	p := newFakeProc(t)
	p.add(1, 0, "init\n", "0::/\n")
	r := fakeResolver(t, p, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		r.Run(ctx, 10*time.Millisecond)
		close(done)
	}()
	p.add(400, 0, "new\n", "0::/\n")
	want := p.inode(400)
	deadline := time.Now().Add(5 * time.Second)
	for !hasInode(r.Namespaces(), want) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not pick up a new namespace")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func hasInode(ns []Namespace, ino uint32) bool {
	for _, n := range ns {
		if n.Inode == ino {
			return true
		}
	}
	return false
}
