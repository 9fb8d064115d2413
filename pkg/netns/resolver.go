package netns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Identity is what owns a network namespace.
type Identity struct {
	// Inode is the namespace's inode number, the kernel's net->ns.inum.
	Inode uint32
	// Host is set for the namespace of PID 1 under Options.ProcRoot.
	Host bool
	// Name is the namespace's name in one of Options.NetnsDirs (the
	// alphabetically first if it has several), "" if it has none.
	Name string
	// PID is a representative process in the namespace, the lowest PID, or 0
	// if no process is in it (a named namespace kept only by its bind mount).
	PID int
	// Comm is the command name of PID, from /proc/PID/comm.
	Comm string
	// ContainerID, Runtime and PodUID come from PID's cgroup, see CgroupInfo.
	ContainerID string
	// Runtime is the container runtime that owns ContainerID, if known.
	Runtime string
	// PodUID is the Kubernetes pod UID from PID's cgroup.
	PodUID string
	// Pod is the name of the pod with PodUID, from Options.Pods. Pods with
	// host networking own no namespace and are never reported.
	Pod string
	// PodNamespace is the Kubernetes namespace of Pod.
	PodNamespace string
	// PodLabels are the allow-listed labels of Pod.
	PodLabels map[string]string
}

// Namespace is a live network namespace and a path that opens it, for setns
// or for a netlink socket inside it.
type Namespace struct {
	// Inode is the namespace's inode number.
	Inode uint32
	// Path is NetnsDir/NAME for a named namespace, else ProcRoot/PID/ns/net;
	// "" means the caller's own namespace. A PID can exit and be reused:
	// fstat what you opened and compare the inode before you trust it.
	Path string
}

// PodSource finds Kubernetes pods by UID; kube.PodInformer is one.
type PodSource interface {
	// PodByUID returns the pod with the given UID (or, for a static pod, the
	// mirror pod of that config hash). The returned Labels belong to the
	// caller.
	PodByUID(uid string) (PodInfo, bool)
}

// PodInfo is what a PodSource knows about a pod.
type PodInfo struct {
	// Name is the pod's name.
	Name string
	// Namespace is the pod's Kubernetes namespace.
	Namespace string
	// Labels are the pod's labels, already filtered to an allow-list.
	Labels map[string]string
	// HostNetwork is set for pods with spec.hostNetwork: they live in the
	// host's network namespace and own none.
	HostNetwork bool
}

const (
	// DefaultProcRoot is where Options.ProcRoot defaults to.
	DefaultProcRoot = "/proc"
	// DefaultMinRefreshInterval is the default Options.MinRefreshInterval.
	DefaultMinRefreshInterval = 5 * time.Second
	// DefaultRefreshInterval is what Run uses for an interval that is not
	// positive.
	DefaultRefreshInterval = 30 * time.Second
)

// Options configure a Resolver. The zero value is usable.
type Options struct {
	// ProcRoot is the host's procfs, DefaultProcRoot if empty. In a container
	// mount the host's /proc (e.g. as /host/proc) or run with hostPID.
	ProcRoot string
	// NetnsDirs hold named namespaces (nsfs bind mounts, as made by
	// "ip netns add" or CNI plugins). Default: /var/run/netns and /run/netns;
	// directories that resolve to the same place are read once.
	NetnsDirs []string
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// Pods, if not nil, names the pods of namespaces whose processes run in
	// a kubepods cgroup.
	Pods PodSource
	// MinRefreshInterval limits the refreshes that Lookup runs for unknown
	// inodes, DefaultMinRefreshInterval if zero.
	MinRefreshInterval time.Duration
}

// Resolver maps network namespace inodes to their owners. It keeps a cache
// that Refresh rebuilds. Its methods are safe for concurrent use.
type Resolver struct {
	procRoot   string
	netnsDirs  []string
	log        *zap.Logger
	pods       PodSource
	minRefresh time.Duration

	refreshMu   sync.Mutex // serializes refreshes and guards the fields below
	lastRefresh time.Time
	warnedPerm  bool
	scanHook    func() // for tests: runs after the process list is read

	mu         sync.RWMutex
	byInode    map[uint32]Identity // without the Pod* fields, see addPod
	namespaces []Namespace         // sorted by inode
}

// NewResolver returns a Resolver with an empty cache. Call Refresh or Run to
// fill it; Lookup refreshes on its own when it meets an unknown inode.
func NewResolver(opts Options) *Resolver {
	r := &Resolver{
		procRoot:   opts.ProcRoot,
		netnsDirs:  slices.Clone(opts.NetnsDirs),
		log:        opts.Logger,
		pods:       opts.Pods,
		minRefresh: opts.MinRefreshInterval,
	}
	if r.procRoot == "" {
		r.procRoot = DefaultProcRoot
	}
	if r.netnsDirs == nil {
		r.netnsDirs = []string{"/var/run/netns", "/run/netns"}
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.minRefresh == 0 {
		r.minRefresh = DefaultMinRefreshInterval
	}
	return r
}

// Lookup returns the owner of the network namespace with the given inode.
// An inode that is not in the cache triggers a Refresh, at most one per
// Options.MinRefreshInterval. Pod fields are looked up at every call, so a
// deleted pod disappears without a refresh.
func (r *Resolver) Lookup(inode uint32) (Identity, bool) {
	id, ok := r.cached(inode)
	if !ok && r.refreshStale(inode) {
		id, ok = r.cached(inode)
	}
	if !ok {
		return Identity{}, false
	}
	r.addPod(&id)
	return id, true
}

// Namespaces returns all known network namespaces, sorted by inode.
func (r *Resolver) Namespaces() []Namespace {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.namespaces)
}

// Run refreshes the cache now and then every interval (DefaultRefreshInterval
// if not positive) until ctx is done. Errors are logged.
func (r *Resolver) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRefreshInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := r.Refresh(); err != nil {
			r.log.Warn("Refreshing network namespaces failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh rescans every process's /proc/PID/ns/net and the named namespaces
// and replaces the cache; namespaces that are gone are forgotten. Processes
// that exit during the scan are skipped. It fails when ProcRoot cannot be
// read; a netns directory that cannot be read is reported too, but the rest
// of the scan is still used.
func (r *Resolver) Refresh() error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	return r.refresh()
}

func (r *Resolver) cached(inode uint32) (Identity, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	id, ok := r.byInode[inode]
	return id, ok
}

// refreshStale refreshes unless that happened less than minRefresh ago. It
// reports whether the cache may have changed since the caller looked.
func (r *Resolver) refreshStale(inode uint32) bool {
	asked := time.Now()
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	if r.lastRefresh.After(asked) {
		return true // another caller refreshed while we waited
	}
	if !r.lastRefresh.IsZero() && time.Since(r.lastRefresh) < r.minRefresh {
		return false
	}
	r.log.Debug("Refreshing for an unknown network namespace", zap.Uint32("netns", inode))
	if err := r.refresh(); err != nil {
		r.log.Warn("Refreshing network namespaces failed", zap.Error(err))
	}
	return true
}

func (r *Resolver) addPod(id *Identity) {
	if r.pods == nil || id.PodUID == "" || id.Host {
		return
	}
	p, ok := r.pods.PodByUID(id.PodUID)
	if !ok || p.HostNetwork {
		return
	}
	id.Pod, id.PodNamespace, id.PodLabels = p.Name, p.Namespace, p.Labels
}

type nsName struct{ name, path string }

// refresh does the work of Refresh; the caller holds refreshMu.
func (r *Resolver) refresh() error {
	r.lastRefresh = time.Now()
	pids, err := r.listPIDs()
	if err != nil {
		return err
	}
	if r.scanHook != nil {
		r.scanHook()
	}

	members := make(map[uint32][]int) // ascending PIDs per namespace
	var hostIno uint32
	hostKnown := false
	denied := 0
	for _, pid := range pids {
		ino, err := nsInode(r.procPath(pid, "ns/net"))
		switch {
		case err == nil:
			members[ino] = append(members[ino], pid)
			if pid == 1 {
				hostIno, hostKnown = ino, true
			}
		case gone(err):
		case errors.Is(err, fs.ErrPermission):
			denied++
		default:
			r.log.Debug("Skipping process", zap.Int("pid", pid), zap.Error(err))
		}
	}
	if denied > 0 {
		log := r.log.Debug
		if !r.warnedPerm {
			log, r.warnedPerm = r.log.Warn, true
		}
		log("Not allowed to read the network namespace of some processes: "+
			"needs CAP_SYS_PTRACE over them, or their user and no fewer capabilities",
			zap.Int("processes", denied))
	}

	names, dirErr := r.scanNetnsDirs()

	byInode := make(map[uint32]Identity, len(members)+len(names))
	namespaces := make([]Namespace, 0, len(members)+len(names))
	add := func(ino uint32) {
		if _, done := byInode[ino]; done {
			return
		}
		id := Identity{Inode: ino, Host: hostKnown && ino == hostIno}
		var path string
		if n := names[ino]; len(n) > 0 {
			id.Name, path = n[0].name, n[0].path
		}
		for _, pid := range members[ino] {
			if r.inspect(&id, pid) {
				if path == "" {
					path = r.procPath(pid, "ns/net")
				}
				break
			}
		}
		if path == "" {
			return // no name, and all its processes exited during the scan
		}
		byInode[ino] = id
		namespaces = append(namespaces, Namespace{Inode: ino, Path: path})
	}
	for ino := range members {
		add(ino)
	}
	for ino := range names {
		add(ino)
	}
	slices.SortFunc(namespaces, func(a, b Namespace) int { return cmp.Compare(a.Inode, b.Inode) })

	r.mu.Lock()
	old := r.byInode
	r.byInode, r.namespaces = byInode, namespaces
	r.mu.Unlock()

	if r.log.Core().Enabled(zap.DebugLevel) {
		for ino, id := range byInode {
			if _, ok := old[ino]; !ok {
				r.log.Debug("New network namespace", zap.Uint32("netns", ino), zap.String("name", id.Name),
					zap.Int("pid", id.PID), zap.String("comm", id.Comm), zap.String("container", id.ContainerID))
			}
		}
		for ino := range old {
			if _, ok := byInode[ino]; !ok {
				r.log.Debug("Network namespace gone", zap.Uint32("netns", ino))
			}
		}
	}
	return dirErr
}

// inspect fills id with what /proc says about pid, or reports false if pid
// exited.
func (r *Resolver) inspect(id *Identity, pid int) bool {
	comm, err := os.ReadFile(r.procPath(pid, "comm"))
	if err != nil {
		return false
	}
	cgroup, err := os.ReadFile(r.procPath(pid, "cgroup"))
	if err != nil {
		return false
	}
	c := ParseCgroup(cgroup)
	id.PID = pid
	id.Comm = strings.TrimSuffix(string(comm), "\n")
	id.ContainerID, id.Runtime, id.PodUID = c.ContainerID, c.Runtime, c.PodUID
	return true
}

func (r *Resolver) procPath(pid int, file string) string {
	return filepath.Join(r.procRoot, strconv.Itoa(pid), file)
}

// listPIDs returns the PIDs under procRoot in ascending order.
func (r *Resolver) listPIDs() ([]int, error) {
	f, err := os.Open(r.procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	defer f.Close()
	entries, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		if e == "" || e[0] < '0' || e[0] > '9' {
			continue
		}
		if pid, err := strconv.Atoi(e); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids, nil
}

// scanNetnsDirs returns the named namespaces by inode, names sorted.
func (r *Resolver) scanNetnsDirs() (map[uint32][]nsName, error) {
	type candidate struct{ name, dir, real string }
	var candidates []candidate
	var errs []error
	seen := make(map[string]bool)
	for _, dir := range r.netnsDirs {
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("named network namespaces: %w", err))
			}
			continue
		}
		if seen[real] {
			continue // /var/run/netns is /run/netns
		}
		seen[real] = true
		entries, err := os.ReadDir(real)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("named network namespaces: %w", err))
			}
			continue
		}
		for _, e := range entries {
			candidates = append(candidates, candidate{e.Name(), dir, real})
		}
	}
	names := make(map[uint32][]nsName)
	if len(candidates) == 0 {
		return names, errors.Join(errs...)
	}

	// Only nsfs bind mounts are namespaces: a name whose mount is gone (or
	// was made in another mount namespace without propagation to ours) is a
	// plain file. Our own mountinfo, not ProcRoot's: these are our paths.
	mounts, err := netnsBindMounts()
	if err != nil {
		r.log.Debug("Cannot read mountinfo; checking the filesystem type of each name instead", zap.Error(err))
	}
	for _, c := range candidates {
		if mounts != nil {
			if _, ok := mounts[filepath.Join(c.real, c.name)]; !ok {
				continue
			}
		} else if !isNsfs(filepath.Join(c.real, c.name)) {
			continue
		}
		path := filepath.Join(c.dir, c.name)
		ino, err := nsInode(path)
		if err != nil {
			if !gone(err) {
				r.log.Debug("Skipping named network namespace", zap.String("path", path), zap.Error(err))
			}
			continue
		}
		names[ino] = append(names[ino], nsName{name: c.name, path: path})
	}
	for _, n := range names {
		slices.SortFunc(n, func(a, b nsName) int { return strings.Compare(a.name, b.name) })
	}
	return names, errors.Join(errs...)
}

func isNsfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// nsInode returns the inode of the namespace file at path.
func nsInode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return uint32(st.Ino), nil
}

// gone reports whether err means that a process or a name disappeared.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH)
}
