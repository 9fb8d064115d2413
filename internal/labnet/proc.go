package labnet

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Proc is a long-running process a test started: sleep, run under another
// command name, so that what reads /proc/PID/comm can tell it apart.
type Proc struct {
	PID  int
	Comm string

	cmd  *exec.Cmd
	once sync.Once
}

// StartProc starts a process named comm (at most 15 bytes, what
// /proc/PID/comm holds) in n, or, if n is nil, in a new network namespace
// of its own that has no name. "ip netns exec" execs the command, so PID is
// the process in n. StartProc returns once the process runs as comm; it is
// killed in t.Cleanup unless Stop stopped it before.
func StartProc(t testing.TB, n *NS, comm string) *Proc {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skipf("skipped: %v", err)
	}
	link := filepath.Join(t.TempDir(), comm) // comm is the name that was executed
	if err := os.Symlink(sleep, link); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if n != nil {
		cmd = n.Command(link, "300")
	} else {
		cmd = exec.Command(link, "300")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", comm, err)
	}
	p := &Proc{PID: cmd.Process.Pid, Comm: comm, cmd: cmd}
	t.Cleanup(p.Stop)
	if !WaitFor(5*time.Second, func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.PID))
		return strings.TrimSpace(string(b)) == comm
	}) {
		t.Fatalf("process %d does not run as %s within 5s", p.PID, comm)
	}
	return p
}

// Stop kills the process and waits for it. Safe to call more than once.
func (p *Proc) Stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	})
}

// NetnsInode returns the inode of the network namespace of process pid,
// read from the text of the /proc/PID/ns/net link ("net:[N]"), not with
// stat.
func NetnsInode(t testing.TB, pid int) uint32 {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 32)
	if err != nil {
		t.Fatalf("/proc/%d/ns/net links to %q: %v", pid, link, err)
	}
	return uint32(v)
}

// CgroupRoot makes a new cgroup for the test: under the cgroup2 mount if
// v1Controller is "" (the unified hierarchy of a hybrid host; cgroup2 is
// mounted for the test if nothing is), else under the cgroup v1 hierarchy
// with that controller (the test is skipped if there is none). It plays
// the kubelet's --cgroup-root: kubelet-style paths below it leave the
// cgroups of a real kubelet alone. It is removed in t.Cleanup, after
// everything MakeCgroup made below it.
func CgroupRoot(t testing.TB, v1Controller string) string {
	t.Helper()
	mount, err := cgroupMount(v1Controller)
	if err != nil {
		t.Fatal(err)
	}
	if mount == "" {
		if v1Controller != "" {
			t.Skipf("skipped: no cgroup v1 hierarchy with %s", v1Controller)
		}
		mount = t.TempDir()
		if err := unix.Mount("cgroup2", mount, "cgroup2", 0, ""); err != nil {
			t.Fatalf("mount cgroup2 on %s: %v", mount, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(mount, unix.MNT_DETACH) })
	}
	return MakeCgroup(t, mount, Name("cg"))
}

// cgroupMount returns where /proc/self/mountinfo says cgroup2 (or the v1
// hierarchy with controller) is mounted, "" if nowhere.
func cgroupMount(v1Controller string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, fsFields := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(fsFields) < 3 {
			continue
		}
		switch {
		case v1Controller == "" && fsFields[0] == "cgroup2",
			v1Controller != "" && fsFields[0] == "cgroup" && slices.Contains(strings.Split(fsFields[2], ","), v1Controller):
			return fields[4], nil
		}
	}
	return "", sc.Err()
}

// MakeCgroup makes the cgroup rel (slash-separated, e.g.
// "kubepods/besteffort/pod<uid>/<id>") under parent, every missing level,
// and returns its directory. Each level it made is removed in t.Cleanup,
// deepest first, once the processes in it are gone.
func MakeCgroup(t testing.TB, parent, rel string) string {
	t.Helper()
	dir := parent
	for _, c := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, c)
		if err := os.Mkdir(dir, 0o755); err != nil {
			if errors.Is(err, os.ErrExist) {
				continue
			}
			t.Fatal(err)
		}
		d := dir
		t.Cleanup(func() {
			// A killed process leaves its cgroup just after it is reaped.
			if !WaitFor(2*time.Second, func() bool {
				err := unix.Rmdir(d)
				return err == nil || errors.Is(err, unix.ENOENT)
			}) {
				t.Errorf("cannot remove cgroup %s", d)
			}
		})
	}
	return dir
}

// MoveToCgroup moves the process pid into the cgroup directory dir.
func MoveToCgroup(t testing.TB, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("moving %d to %s: %v", pid, dir, err)
	}
}

// PodUID returns a random Kubernetes pod UID, in its dashed form.
func PodUID() string {
	h := randomHex(16)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ContainerID returns a random container ID: 64 lowercase hex digits, as
// containerd, CRI-O and Docker make them.
func ContainerID() string { return randomHex(32) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RemoveStale deletes the named namespaces that New made in test processes
// that were killed before their cleanup ran: names from Name("lab") whose
// PID (modulo 100000) no running process has. Namespaces of running tests
// stay.
func RemoveStale(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	running := map[int]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			running[pid%100000] = true
		}
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "lab")
		pidText, seq, ok2 := strings.Cut(rest, "y")
		pid, err := strconv.Atoi(pidText)
		if !ok || !ok2 || err != nil || running[pid] {
			continue
		}
		if _, err := strconv.Atoi(seq); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			t.Logf("removing stale namespace %s: %v: %s", e.Name(), err, out)
		}
	}
}
