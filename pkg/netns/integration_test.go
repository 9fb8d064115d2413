package netns_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/netns/kube"
)

// These tests use the real kernel: named namespaces from "ip netns add",
// processes in new namespaces, and cgroup v2 directories named like the
// kubelet names them, with the test processes moved into them.

func requireRoot(t *testing.T) {
	t.Helper()
	labnet.Require(t, "ip")
}

func fileInode(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !labnet.WaitFor(5*time.Second, cond) {
		t.Fatalf("timed out waiting until %s", what)
	}
}

func podObject(node, ns, name, uid string, labels map[string]string, hostNetwork bool) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(uid), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, HostNetwork: hostNetwork},
	}
}

func TestResolverRealNamespaces(t *testing.T) {
	requireRoot(t)
	// A test root plays the part of the kubelet's --cgroup-root, so that
	// concurrent runs and a real kubelet are left alone.
	root := labnet.CgroupRoot(t, "")

	type tcase struct {
		desc   string
		cgroup string // under root, "" to stay where the test runs
		named  bool   // in an "ip netns add" namespace, else in a new unnamed one
		noProc bool   // a named namespace without any process
		pod    *corev1.Pod
		want   netns.Identity // Inode, Name, PID filled in below
	}
	var (
		uidA, uidB, uidC, uidD, uidF      = labnet.PodUID(), labnet.PodUID(), labnet.PodUID(), labnet.PodUID(), labnet.PodUID()
		staticHash                        = strings.ReplaceAll(labnet.PodUID(), "-", "") // 32 hex digits
		us                                = func(uid string) string { return strings.ReplaceAll(uid, "-", "_") }
		id                                = labnet.ContainerID
		idA, idB, idC, idD, idE, idF, idG = id(), id(), id(), id(), id(), id(), id()
	)
	cases := []*tcase{{
		desc:   "systemd driver, containerd, burstable",
		cgroup: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us(uidA) + ".slice/cri-containerd-" + idA + ".scope",
		pod:    podObject("node-a", "shop", "web-0", uidA, map[string]string{"app": "web", "team": "blue", "secret": "s"}, false),
		want: netns.Identity{Comm: "ct-containerd", ContainerID: idA, Runtime: "containerd", PodUID: uidA,
			Pod: "web-0", PodNamespace: "shop", PodLabels: map[string]string{"app": "web", "team": "blue"}},
	}, {
		desc:   "systemd driver, CRI-O, guaranteed",
		cgroup: "kubepods.slice/kubepods-pod" + us(uidB) + ".slice/crio-" + idB + ".scope",
		pod:    podObject("node-a", "data", "db-0", uidB, map[string]string{"other": "x"}, false),
		want:   netns.Identity{Comm: "ct-crio", ContainerID: idB, Runtime: "cri-o", PodUID: uidB, Pod: "db-0", PodNamespace: "data"},
	}, {
		desc:   "systemd driver, containerd, besteffort, pod on another node",
		cgroup: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us(uidC) + ".slice/cri-containerd-" + idC + ".scope",
		pod:    podObject("node-b", "shop", "elsewhere", uidC, nil, false),
		want:   netns.Identity{Comm: "ct-besteffort", ContainerID: idC, Runtime: "containerd", PodUID: uidC},
	}, {
		desc:   "cgroupfs driver, burstable",
		cgroup: "kubepods/burstable/pod" + uidD + "/" + idD,
		pod:    podObject("node-a", "shop", "api-1", uidD, map[string]string{"app": "api"}, false),
		want: netns.Identity{Comm: "ct-cgroupfs", ContainerID: idD, PodUID: uidD,
			Pod: "api-1", PodNamespace: "shop", PodLabels: map[string]string{"app": "api"}},
	}, {
		desc:   "cgroupfs driver, guaranteed static pod",
		cgroup: "kubepods/pod" + staticHash + "/" + idE,
		pod: func() *corev1.Pod {
			p := podObject("node-a", "kube-system", "etcd-node-a", labnet.PodUID(), nil, false)
			p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: staticHash}
			return p
		}(),
		want: netns.Identity{Comm: "ct-static", ContainerID: idE, PodUID: staticHash, Pod: "etcd-node-a", PodNamespace: "kube-system"},
	}, {
		desc:   "cgroupfs driver, CRI-O, besteffort, hostNetwork pod",
		cgroup: "kubepods/besteffort/pod" + uidF + "/crio-" + idF,
		pod:    podObject("node-a", "kube-system", "agent", uidF, map[string]string{"app": "agent"}, true),
		want:   netns.Identity{Comm: "ct-hostnet", ContainerID: idF, Runtime: "cri-o", PodUID: uidF},
	}, {
		desc:   "docker, systemd",
		cgroup: "system.slice/docker-" + idG + ".scope",
		want:   netns.Identity{Comm: "ct-docker", ContainerID: idG, Runtime: "docker"},
	}, {
		desc:   "named namespace, host process",
		cgroup: "user.slice/user-0.slice/session-1.scope",
		named:  true,
		want:   netns.Identity{Comm: "ct-named"},
	}, {
		desc:   "named namespace without processes",
		named:  true,
		noProc: true,
	}}

	client := fake.NewClientset()
	for _, c := range cases {
		if c.pod != nil {
			if _, err := client.CoreV1().Pods(c.pod.Namespace).Create(context.Background(), c.pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	informer, err := kube.NewPodInformer(client, "node-a", []string{"app", "team"}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	informer.Start(ctx)
	if !informer.WaitForSync(ctx) {
		t.Fatal("pod informer did not sync")
	}

	procs := make(map[*tcase]*labnet.Proc)
	nss := make(map[*tcase]*labnet.NS)
	for _, c := range cases {
		var ns *labnet.NS
		if c.named {
			ns = labnet.New(t)
			nss[c] = ns
			c.want.Name = ns.Name
			c.want.Inode = fileInode(t, "/run/netns/"+ns.Name)
		}
		if c.noProc {
			continue
		}
		var cg string
		if c.cgroup != "" {
			cg = labnet.MakeCgroup(t, root, c.cgroup)
		}
		p := labnet.StartProc(t, ns, c.want.Comm)
		procs[c] = p
		if cg != "" {
			labnet.MoveToCgroup(t, cg, p.PID)
		}
		c.want.PID = p.PID
		c.want.Inode = labnet.NetnsInode(t, p.PID)
	}

	r := netns.NewResolver(netns.Options{Logger: zaptest.NewLogger(t), Pods: informer, MinRefreshInterval: time.Hour})
	if err := r.Refresh(); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	for _, c := range cases {
		got, ok := r.Lookup(c.want.Inode)
		if !ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: Lookup(%d)\n got %+v, %v\nwant %+v", c.desc, c.want.Inode, got, ok, c.want)
		}
	}

	if link, err := os.Readlink("/proc/1/ns/net"); err != nil {
		// PID 1 may have capabilities that we lack (a sandbox); then
		// nothing is known about it, and no namespace is the host's.
		t.Logf("host namespace not checked: %v", err)
		for _, n := range r.Namespaces() {
			if got, _ := r.Lookup(n.Inode); got.Host {
				t.Errorf("PID 1 is unreadable, yet %+v is the host", got)
			}
		}
	} else {
		hostIno := labnet.NetnsInode(t, 1)
		comm1, _ := os.ReadFile("/proc/1/comm")
		if got, ok := r.Lookup(hostIno); !ok || !got.Host || got.PID != 1 || got.Comm != strings.TrimSpace(string(comm1)) {
			t.Errorf("host namespace %s: Lookup(%d) = %+v, %v", link, hostIno, got, ok)
		}
	}

	// Namespaces lists each once, sorted, with a path that opens it.
	all := r.Namespaces()
	for i := 1; i < len(all); i++ {
		if all[i].Inode <= all[i-1].Inode {
			t.Errorf("Namespaces not strictly ascending at %d: %v", i, all[i-1:i+1])
		}
	}
	for _, c := range cases {
		want := "/var/run/netns/" + c.want.Name
		if c.want.Name == "" {
			want = fmt.Sprintf("/proc/%d/ns/net", c.want.PID)
		}
		i := slices.IndexFunc(all, func(n netns.Namespace) bool { return n.Inode == c.want.Inode })
		if i < 0 || all[i].Path != want {
			t.Errorf("%s: Namespaces() has %v, want path %s", c.desc, all, want)
			continue
		}
		if ino := fileInode(t, all[i].Path); ino != c.want.Inode {
			t.Errorf("%s: %s has inode %d, want %d", c.desc, all[i].Path, ino, c.want.Inode)
		}
	}

	// A deleted pod no longer names its namespace; the cgroup facts stay.
	a := cases[0]
	if err := client.CoreV1().Pods("shop").Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the deleted pod is forgotten", func() bool {
		got, _ := r.Lookup(a.want.Inode)
		return got.Pod == ""
	})
	if got, _ := r.Lookup(a.want.Inode); got.PodUID != uidA || got.ContainerID != idA || got.PodLabels != nil || got.PodNamespace != "" {
		t.Errorf("after the pod was deleted: %+v", got)
	}

	// A killed process and a deleted namespace are forgotten, without error.
	killed, deleted := cases[1], cases[len(cases)-1]
	procs[killed].Stop()
	nss[deleted].Delete()
	if err := r.Refresh(); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	// The kernel may give a freed inode number to a new namespace at once,
	// so check that it is no longer ours rather than unknown.
	if got, ok := r.Lookup(killed.want.Inode); ok && got.PID == killed.want.PID {
		t.Errorf("killed process still known: %+v", got)
	}
	if got, ok := r.Lookup(deleted.want.Inode); ok && got.Name == deleted.want.Name {
		t.Errorf("deleted namespace still known: %+v", got)
	}
	for _, n := range r.Namespaces() {
		if n.Path == "/var/run/netns/"+deleted.want.Name || n.Path == fmt.Sprintf("/proc/%d/ns/net", killed.want.PID) {
			t.Errorf("Namespaces() still lists %v", n)
		}
	}
}

func TestResolverNetnsDir(t *testing.T) {
	requireRoot(t)
	// Like Docker's /run/docker/netns: bind mounts in a directory of our
	// choosing, plus a leftover file that is not a namespace.
	dir := t.TempDir()
	p := labnet.StartProc(t, nil, "ct-bound")
	want := labnet.NetnsInode(t, p.PID)
	bound := filepath.Join(dir, "bound")
	if err := os.WriteFile(bound, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/net", p.PID), bound, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bound, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(dir, "leftover"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}

	r := netns.NewResolver(netns.Options{NetnsDirs: []string{link, dir}, Logger: zaptest.NewLogger(t)})
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	got, ok := r.Lookup(want)
	if !ok || got.Name != "bound" || got.PID != p.PID || got.Comm != "ct-bound" {
		t.Errorf("Lookup(%d) = %+v, %v", want, got, ok)
	}
	leftover := fileInode(t, filepath.Join(dir, "leftover"))
	if got, ok := r.Lookup(leftover); ok {
		t.Errorf("a plain file was taken for a namespace: %+v", got)
	}
	i := slices.IndexFunc(r.Namespaces(), func(n netns.Namespace) bool { return n.Inode == want })
	if i < 0 || r.Namespaces()[i].Path != filepath.Join(link, "bound") {
		t.Errorf("Namespaces() = %v, want %s for %d", r.Namespaces(), filepath.Join(link, "bound"), want)
	}

	// Once the process is gone, the bind mount alone keeps the namespace.
	p.Stop()
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.Lookup(want); !ok || got.Name != "bound" || got.PID != 0 || got.Comm != "" {
		t.Errorf("after the process exited: Lookup(%d) = %+v, %v", want, got, ok)
	}
}

func TestResolverCgroupV1(t *testing.T) {
	requireRoot(t)
	// On a cgroup v1 (or hybrid) node the kubelet's cgroups are in the v1
	// hierarchies; the cgroup v2 line says nothing.
	root := labnet.CgroupRoot(t, "pids")
	uid, id := labnet.PodUID(), labnet.ContainerID()
	cg := labnet.MakeCgroup(t, root, "kubepods/burstable/pod"+uid+"/crio-"+id)
	p := labnet.StartProc(t, nil, "ct-v1")
	labnet.MoveToCgroup(t, cg, p.PID)

	r := netns.NewResolver(netns.Options{Logger: zaptest.NewLogger(t)})
	ino := labnet.NetnsInode(t, p.PID)
	got, ok := r.Lookup(ino) // an unknown inode: Lookup refreshes
	want := netns.Identity{Inode: ino, PID: p.PID, Comm: "ct-v1", ContainerID: id, Runtime: "cri-o", PodUID: uid}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("Lookup(%d)\n got %+v, %v\nwant %+v", ino, got, ok, want)
	}
}

func TestRefreshProcessExitsMidScan(t *testing.T) {
	requireRoot(t)
	p := labnet.StartProc(t, nil, "ct-midscan")
	pid, ino := p.PID, labnet.NetnsInode(t, p.PID)
	r := netns.NewResolver(netns.Options{Logger: zaptest.NewLogger(t), MinRefreshInterval: time.Hour})
	var once sync.Once
	netns.SetScanHook(r, func() { once.Do(p.Stop) })
	if err := r.Refresh(); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if got, ok := r.Lookup(ino); ok && got.PID == pid {
		t.Errorf("a process that exited during the scan is known: %+v", got)
	}
}

func TestRefreshWhileProcessesComeAndGo(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skipf("skipping: %v", err)
	}
	churn := exec.Command("sh", "-c", "while :; do unshare -n true; true & done")
	churn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := churn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-churn.Process.Pid, syscall.SIGKILL)
		_ = churn.Wait()
	})
	r := netns.NewResolver(netns.Options{Logger: zaptest.NewLogger(t)})
	n := 0
	for start := time.Now(); time.Since(start) < time.Second || n < 10; n++ {
		if err := r.Refresh(); err != nil {
			t.Fatalf("Refresh %d: %v", n, err)
		}
	}
	t.Logf("%d refreshes, %d namespaces known at the end", n, len(r.Namespaces()))
}
