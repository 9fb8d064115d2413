package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/logging"
)

// owner is what a test namespace belongs to, and what the scrape must say
// about it.
type owner struct {
	cgroup        string      // under the test's cgroup root
	comm          string      // of its one process
	pod           *corev1.Pod // nil: a host process
	container     string      // the container ID in cgroup, "" for none
	before, after int         // conntrack entries to make before the daemon starts, and once it is ready
	proto         string      // of those entries

	ns   *labnet.NS
	proc *labnet.Proc
	made int // entries made so far
}

func (o *owner) netns() string { return strconv.FormatUint(uint64(o.ns.Inode), 10) }

// labels are the identity and pod labels that every per-namespace series of
// o carries (besides netns).
func (o *owner) labels() map[string]string {
	l := map[string]string{"netns_name": o.ns.Name, "pod": "", "pod_namespace": "", "container": o.container,
		"comm": o.comm, "pod_label_app": "", "pod_label_team": ""}
	if o.pod != nil {
		l["pod"], l["pod_namespace"] = o.pod.Name, o.pod.Namespace
		l["pod_label_app"], l["pod_label_team"] = o.pod.Labels["app"], o.pod.Labels["team"]
	}
	return l
}

// insert makes n more conntrack entries in o's namespace.
func (o *owner) insert(t *testing.T, n int) {
	t.Helper()
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddrPort("192.0.2.2:80")
	for range n {
		sport := uint16(10000 + o.made)
		if err := o.ns.CTInsert(labnet.InsertArgs(o.proto, netip.AddrPortFrom(src, sport), dst)...); err != nil {
			t.Fatal(err)
		}
		o.made++
	}
}

// The "who owns this namespace", end to end through runDaemon:
// real processes in real network namespaces and in real cgroup v2
// directories named exactly as the kubelet names them, pods from
// client-go's fake clientset, and the labels asserted in a real scrape over
// HTTP. Then a pod is deleted, a namespace is removed, and processes exit
// while the daemon scans: no error, no stale series.
func TestDaemonNamesPods(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack", "unshare")
	labnet.RemoveStale(t)
	const node = "node-1"
	const staleAfter = 3 * time.Second

	// The test's cgroup root plays the kubelet's --cgroup-root; below it,
	// the kubelet's own names.
	cgroupRoot := labnet.CgroupRoot(t, "")
	underscores := func(uid string) string { return strings.ReplaceAll(uid, "-", "_") }
	uidA, uidB := labnet.PodUID(), labnet.PodUID()
	idA, idB := labnet.ContainerID(), labnet.ContainerID()
	podA := &owner{ // systemd driver, containerd, burstable
		cgroup: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + underscores(uidA) + ".slice/cri-containerd-" + idA + ".scope",
		comm:   "ct-web", container: idA, before: 2, after: 1, proto: "tcp",
		pod: testPod(node, "shop", "web-7c9d8f6b5d-x2x9k", uidA,
			map[string]string{"app": "web", "team": "storefront", "pod-template-hash": "7c9d8f6b5d"}),
	}
	podB := &owner{ // cgroupfs driver, CRI-O, besteffort
		cgroup: "kubepods/besteffort/pod" + uidB + "/crio-" + idB,
		comm:   "ct-ledger", container: idB, before: 5, proto: "udp",
		pod: testPod(node, "payments", "ledger-0", uidB, map[string]string{"app": "ledger", "team": "payments"}),
	}
	host := &owner{ // a host service in a named namespace: no container, no pod
		cgroup: "system.slice/ct-hostd.service",
		comm:   "ct-hostd", before: 1, after: 1, proto: "tcp",
	}
	owners := []*owner{podA, podB, host}
	for _, o := range owners {
		o.ns = labnet.New(t)
		o.ns.EnableConntrack()
		cgroup := labnet.MakeCgroup(t, cgroupRoot, o.cgroup) // first: removed after the process is gone
		o.proc = labnet.StartProc(t, o.ns, o.comm)
		labnet.MoveToCgroup(t, cgroup, o.proc.PID)
		o.insert(t, o.before) // found by the baseline dump
	}
	client := fake.NewClientset(podA.pod, podB.pod)

	cfg, err := parseArgs([]string{
		"--web.listen-address=127.0.0.1:0", "--tracer.backend=auto", "--bpf.pin-path=", "--log.format=json", "--log.level=debug",
		"--metrics.labels=netns_name,pod,pod_namespace,container,comm", "--kubernetes.pod-labels=app,team",
		"--kubernetes.node-name=" + node, "--netns.rescan-interval=1s", "--metrics.stale-after=" + staleAfter.String(),
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.kube.Client = client
	d := startInProcess(t, func(ctx context.Context, logs io.Writer) error {
		log, err := logging.New(logs, cfg.logLevel, cfg.logFormat)
		if err != nil {
			return err
		}
		return runDaemon(ctx, cfg, log)
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	if code, body := httpGet(t, d.addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	for _, o := range owners {
		o.insert(t, o.after) // counted from the tracer's events
	}

	// Every namespace's entries, summed over family and protocol, equal
	// conntrack -C there and what the test made; every per-namespace series
	// of it carries its owner's labels.
	var sc *scrape
	labnet.Eventually(t, 10*time.Second, func() error {
		sc = scrapeMetrics(t, d.addr)
		for _, o := range owners {
			want := o.made
			if got := int(o.ns.CTCount()); got != want {
				t.Fatalf("netns %s: conntrack -C says %d entries, the test made %d", o.ns.Name, got, want)
			}
			if got := sc.entries(o.netns()); got != want {
				return fmt.Errorf("netns %s (%s): ctagent_conntrack_entries sum to %d, want %d", o.netns(), o.comm, got, want)
			}
			if err := sc.labelled(o.netns(), o.labels()); err != nil {
				return err
			}
		}
		return nil
	})
	t.Logf("scrape of pods in two Kubernetes namespaces and a host process:\n%s", sc.lines("ctagent_conntrack_entries{", podA.netns(), podB.netns(), host.netns()))
	if l := sc.labelNames(); slices.Contains(l, "pod_label_pod_template_hash") || !slices.Contains(l, "pod_label_app") {
		t.Errorf("label names %v: want pod_label_app and pod_label_team, and no label that is not in --kubernetes.pod-labels", l)
	}
	errsBefore := sc.scrapeErrors()

	t.Run("clients name the pods", func(t *testing.T) {
		// ctagent list --pod and top --once, from the daemon's API: the
		// entries of one pod only, each with its owner; a row per pod.
		server := "http://" + d.addr
		podName := podA.pod.Namespace + "/" + podA.pod.Name
		out := runClient(t, "list", "--server", server, "--pod", podName)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != podA.made {
			t.Errorf("list --pod %s: %d lines, want the pod's %d entries:\n%s", podName, len(lines), podA.made, out)
		}
		for _, l := range lines {
			if !strings.Contains(l, " netns="+podA.netns()+" ") || !strings.Contains(l, " pod="+podName+" ") ||
				!strings.Contains(l, " container="+podA.container[:12]+" ") || !strings.HasPrefix(l, "ipv4     2 "+podA.proto+" ") {
				t.Errorf("list --pod %s: line %q: want an ipv4 %s entry of netns %s, pod %s, container %.12s",
					podName, l, podA.proto, podA.netns(), podName, podA.container)
			}
		}
		t.Logf("ctagent list --pod %s:\n%s", podName, out)
		top := runClient(t, "top", "--once", "--server", server)
		for _, o := range []*owner{podA, podB} {
			col := o.pod.Namespace + "/" + o.pod.Name
			if len(col) > 20 { // the owner column's width
				col = col[:19] + "…"
			}
			if !regexp.MustCompile(`(?m)^` + o.netns() + ` +` + regexp.QuoteMeta(col) + ` +` + strconv.Itoa(o.made) + ` `).MatchString(top) {
				t.Errorf("top --once: no row for netns %s, pod %s/%s with %d entries:\n%s", o.netns(), o.pod.Namespace, o.pod.Name, o.made, top)
			}
		}
		t.Logf("ctagent top --once:\n%s", top)
	})

	t.Run("pod deleted", func(t *testing.T) {
		if err := client.CoreV1().Pods("payments").Delete(context.Background(), podB.pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		podB.pod = nil // what the cgroup says stays: container and comm
		labnet.Eventually(t, 5*time.Second, func() error {
			sc = scrapeMetrics(t, d.addr)
			if v := sc.values("pod"); slices.Contains(v, "ledger-0") {
				return fmt.Errorf("pod values %v: the deleted pod is still there", v)
			}
			if err := sc.labelled(podB.netns(), podB.labels()); err != nil {
				return err
			}
			if got, want := sc.entries(podB.netns()), podB.made; got != want {
				return fmt.Errorf("netns %s: %d entries, want %d", podB.netns(), got, want)
			}
			return sc.labelled(podA.netns(), podA.labels())
		})
		t.Logf("after pod %s was deleted:\n%s", "payments/ledger-0", sc.lines("ctagent_conntrack_entries{", podB.netns()))
	})

	t.Run("namespace removed", func(t *testing.T) {
		gone := host.netns()
		if sc.series(gone, "ctagent_conntrack_created_total") == 0 {
			t.Fatalf("netns %s has no ctagent_conntrack_created_total series to expire", gone)
		}
		host.proc.Stop()
		host.ns.Delete()
		start := time.Now()
		var gaugesGone time.Duration
		labnet.Eventually(t, staleAfter+10*time.Second, func() error {
			sc = scrapeMetrics(t, d.addr)
			if gaugesGone == 0 {
				if n := sc.series(gone, "ctagent_conntrack_entries"); n > 0 {
					return fmt.Errorf("netns %s: %d ctagent_conntrack_entries series left", gone, n)
				}
				gaugesGone = time.Since(start)
				// Its counters stay for the stale period.
				if sc.series(gone, "ctagent_conntrack_created_total") == 0 {
					t.Errorf("netns %s: counters gone with the table gauges, %s after removal; want them for %s", gone, gaugesGone, staleAfter)
				}
			}
			if n := sc.series(gone, ""); n > 0 {
				return fmt.Errorf("netns %s: %d series left %s after it was removed", gone, n, time.Since(start).Round(time.Millisecond))
			}
			if v := sc.values("netns_name"); slices.Contains(v, host.ns.Name) {
				return fmt.Errorf("netns_name values %v: the removed namespace is still there", v)
			}
			return nil
		})
		t.Logf("netns %s removed: its table gauges went after %s, all its series after %s (stale after %s)",
			gone, gaugesGone.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), staleAfter)
	})

	t.Run("processes exit mid-scan", func(t *testing.T) {
		// A process that the daemon knows exits: until its next rescan the
		// daemon lists the namespace by a /proc/PID/ns/net that is gone.
		brief := labnet.StartProc(t, nil, "ct-brief")
		briefNetns := strconv.FormatUint(uint64(labnet.NetnsInode(t, brief.PID)), 10)
		labnet.Eventually(t, 5*time.Second, func() error {
			sc = scrapeMetrics(t, d.addr)
			if sc.series(briefNetns, "ctagent_conntrack_kernel_entries") == 0 {
				return fmt.Errorf("netns %s of process %d is not listed yet", briefNetns, brief.PID)
			}
			return sc.labelled(briefNetns, map[string]string{"comm": "ct-brief", "pod": "", "netns_name": ""})
		})
		brief.Stop()
		for range 5 {
			sc = scrapeMetrics(t, d.addr) // fails the test on an HTTP or parse error
		}

		// Then short-lived processes, each in a network namespace of its
		// own, come and go while the daemon rescans (every second) and is
		// scraped (every 50ms); each prints its namespace first.
		churn := exec.Command("sh", "-c", `while :; do unshare -n sh -c 'readlink /proc/self/ns/net; sleep 0.05'; done`)
		churn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		out, err := churn.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := churn.Start(); err != nil {
			t.Fatal(err)
		}
		stopChurn := func() {
			_ = syscall.Kill(-churn.Process.Pid, syscall.SIGKILL)
			_ = churn.Wait()
		}
		t.Cleanup(stopChurn)
		type churned struct {
			inodes map[string]bool // the kernel hands freed inode numbers out again at once
			procs  int
		}
		done := make(chan churned, 1)
		go func() {
			c := churned{inodes: map[string]bool{}}
			lines := bufio.NewScanner(out)
			for lines.Scan() {
				c.inodes[strings.TrimSuffix(strings.TrimPrefix(lines.Text(), "net:["), "]")] = true
				c.procs++
			}
			done <- c
		}()
		scrapes, seenByDaemon := 0, map[string]bool{}
		for start := time.Now(); time.Since(start) < 2500*time.Millisecond; scrapes++ {
			sc = scrapeMetrics(t, d.addr) // fails the test on an HTTP or parse error
			for _, v := range sc.values("netns") {
				seenByDaemon[v] = true
			}
			time.Sleep(50 * time.Millisecond)
		}
		stopChurn()
		c := <-done
		nss := c.inodes
		caught := 0
		for ns := range nss {
			if seenByDaemon[ns] {
				caught++
			}
		}
		t.Logf("%d short-lived processes in namespaces of their own (%d inode numbers), %d of these in some of %d scrapes; "+
			"%d times the daemon found a namespace gone from its path, as it is meant to (debug log)",
			c.procs, len(nss), caught, scrapes, strings.Count(d.logs.String(), "gone: its path no longer opens it"))
		if c.procs < 10 {
			t.Errorf("only %d short-lived processes", c.procs)
		}
		nss[briefNetns] = true
		labnet.Eventually(t, staleAfter+10*time.Second, func() error {
			sc = scrapeMetrics(t, d.addr)
			for _, v := range sc.values("netns") {
				if nss[v] {
					return fmt.Errorf("series of exited namespace %s remain", v)
				}
			}
			return nil
		})
		if err := sc.labelled(podA.netns(), podA.labels()); err != nil {
			t.Error(err)
		}
	})

	// None of it was an error: the scrapes did not count any, and the
	// daemon logged none.
	if errs := sc.scrapeErrors(); !maps.Equal(errs, errsBefore) {
		t.Errorf("ctagent_scrape_errors_total went from %v to %v", errsBefore, errs)
	}
	if n := sc.value("ctagent_reconcile_errors_total"); n != 0 {
		t.Errorf("ctagent_reconcile_errors_total %v", n)
	}
	for _, l := range strings.Split(d.logs.String(), "\n") {
		if !strings.Contains(l, `"level":"error"`) && !strings.Contains(l, `"level":"warn"`) {
			continue
		}
		// A sandbox's PID 1 may be closed even to root (this host's is):
		// the resolver says so once, at start.
		if strings.Contains(l, `"msg":"Not allowed to read the network namespace of some processes`) {
			t.Logf("expected warning: %s", l)
			continue
		}
		t.Errorf("daemon logged %s", l)
	}
}

func testPod(node, namespace, name, uid string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID(uid), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
	}
}

func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrape is one scrape of /metrics: the text and what expfmt parsed.
type scrape struct {
	text string
	mfs  map[string]*dto.MetricFamily
}

// scrapeMetrics gets /metrics and parses it; an HTTP or a parse error
// fails the test.
func scrapeMetrics(t *testing.T, addr string) *scrape {
	t.Helper()
	code, body := httpGet(t, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return &scrape{text: body, mfs: mfs}
}

// metricLabel is the value of m's label name; "" if m has none.
func metricLabel(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// labelMap is m's labels by name.
func labelMap(m *dto.Metric) map[string]string {
	l := make(map[string]string, len(m.GetLabel()))
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

// each calls f with every series of the families named name ("": all) and
// label netns=netns ("": any).
func (s *scrape) each(netns, name string, f func(family string, l map[string]string, m *dto.Metric)) {
	for _, family := range slices.Sorted(maps.Keys(s.mfs)) {
		if name != "" && family != name {
			continue
		}
		for _, m := range s.mfs[family].GetMetric() {
			if l := labelMap(m); netns == "" || l["netns"] == netns {
				f(family, l, m)
			}
		}
	}
}

// entries sums ctagent_conntrack_entries of netns over family and protocol.
func (s *scrape) entries(netns string) int {
	sum := 0
	s.each(netns, "ctagent_conntrack_entries", func(_ string, _ map[string]string, m *dto.Metric) {
		sum += int(m.GetGauge().GetValue())
	})
	return sum
}

// series counts the series of netns in the family name ("": all).
func (s *scrape) series(netns, name string) int {
	n := 0
	s.each(netns, name, func(string, map[string]string, *dto.Metric) { n++ })
	return n
}

// labelled checks that netns has series and that each carries want.
func (s *scrape) labelled(netns string, want map[string]string) error {
	var errs []string
	n := 0
	s.each(netns, "", func(family string, l map[string]string, _ *dto.Metric) {
		n++
		for k, v := range want {
			if got, ok := l[k]; !ok || got != v {
				errs = append(errs, fmt.Sprintf("%s%v: %s=%q, want %q", family, l, k, got, v))
			}
		}
	})
	if n == 0 {
		return fmt.Errorf("netns %s has no series", netns)
	}
	if len(errs) > 0 {
		return fmt.Errorf("netns %s: %d series with other labels, e.g. %s", netns, len(errs), errs[0])
	}
	return nil
}

// values returns the values of label name across all series.
func (s *scrape) values(name string) []string {
	seen := map[string]bool{}
	s.each("", "", func(_ string, l map[string]string, _ *dto.Metric) {
		if v, ok := l[name]; ok {
			seen[v] = true
		}
	})
	return slices.Sorted(maps.Keys(seen))
}

// labelNames returns every label name in the scrape.
func (s *scrape) labelNames() []string {
	seen := map[string]bool{}
	s.each("", "", func(_ string, l map[string]string, _ *dto.Metric) {
		for k := range l {
			seen[k] = true
		}
	})
	return slices.Sorted(maps.Keys(seen))
}

// value returns the value of the family's only series.
func (s *scrape) value(name string) float64 {
	ms := s.mfs[name].GetMetric()
	if len(ms) != 1 {
		return -1
	}
	return ms[0].GetCounter().GetValue() + ms[0].GetGauge().GetValue()
}

// scrapeErrors returns ctagent_scrape_errors_total by source.
func (s *scrape) scrapeErrors() map[string]float64 {
	out := map[string]float64{}
	s.each("", "ctagent_scrape_errors_total", func(_ string, l map[string]string, m *dto.Metric) {
		out[l["source"]] = m.GetCounter().GetValue()
	})
	return out
}

// lines returns the lines of the scrape text that start with prefix and
// have one of the netns label values.
func (s *scrape) lines(prefix string, netns ...string) string {
	var out []string
	for _, l := range strings.Split(s.text, "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		for _, ns := range netns {
			if strings.Contains(l, `netns="`+ns+`"`) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// runClient runs a client command of ctagent (list, top) in process and
// returns what it printed; it fails the test unless the command succeeds.
func runClient(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("ctagent %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}
