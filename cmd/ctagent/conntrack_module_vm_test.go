package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/kmod"
)

// The daemon started before nf_conntrack is loaded, with module loading
// off (as under the systemd unit and the DaemonSet, which grant no
// CAP_SYS_MODULE): it stays up, /readyz says 503 with the reason, the
// module gauge says 0, and it loads nothing itself. Then the module is
// loaded (modprobe, as a firewall or kube-proxy would): the daemon
// attaches, and the entries made afterwards are counted exactly.
func TestVMConntrackModuleWait(t *testing.T) {
	labnet.RequireVM(t, "ip", "conntrack", "modprobe")
	unloadConntrack(t)

	d := startWaiting(t, []string{"--web.listen-address=127.0.0.1:0", "--bpf.pin-path=", "--log.format=json", "--no-conntrack.load-modules"},
		"Kernel module nf_conntrack is not loaded; waiting for it: the tracer attaches as soon as it is")
	code, body := httpGet(t, d.addr, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "kernel module nf_conntrack is not loaded (loading modules is off") {
		t.Errorf("/readyz while waiting: %d %q, want 503 saying nf_conntrack is not loaded", code, body)
	}
	if code, _ := httpGet(t, d.addr, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while waiting: %d", code)
	}
	sc := scrapeMetrics(t, d.addr)
	if got := moduleGauge(t, sc); got != 0 {
		t.Errorf("ctagent_conntrack_module_loaded %v while waiting, want 0", got)
	}
	if n := sc.series("", "ctagent_tracer_info"); n != 0 {
		t.Errorf("%d ctagent_tracer_info series while no tracer runs", n)
	}
	// check says why no backend would attach, and loads nothing either.
	var out strings.Builder
	if err := run(context.Background(), []string{"check", "--log.level=error"}, &out, io.Discard); !errors.Is(err, errCheckFailed) ||
		!strings.Contains(out.String(), "conntrack:  kernel module nf_conntrack is not loaded") {
		t.Errorf("check without nf_conntrack: %v, want %v, and a line that says so:\n%s", err, errCheckFailed, out.String())
	}
	// Checked after the daemon's scrape and readiness answers: it loaded
	// nothing, and caused no load through ctnetlink.
	if kmod.Loaded("", modConntrack) || kmod.Loaded("", modCtnetlink) {
		t.Fatalf("nf_conntrack or nf_conntrack_netlink loaded while the daemon waited with loading off:\n%s", d.logs.String())
	}
	select {
	case <-d.done:
		t.Fatalf("the daemon returned %v while it should wait:\n%s", d.err, d.logs.String())
	default:
	}

	modprobe(t, modCtnetlink) // nf_conntrack with it
	d.waitReady(t, 2*time.Minute)
	if code, body := httpGet(t, d.addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after the module was loaded: %d %s", code, body)
	}
	if !strings.Contains(d.logs.String(), `"msg":"Kernel module nf_conntrack loaded; attaching the tracer"`) {
		t.Errorf("no log line of the module's arrival:\n%s", d.logs.String())
	}
	checkCountsExactly(t, d)
}

// The daemon started before nf_conntrack is loaded, with module loading on
// (the default) and the privilege for it (root): it loads nf_conntrack and
// nf_conntrack_netlink itself and is ready.
func TestVMConntrackModuleLoad(t *testing.T) {
	labnet.RequireVM(t, "ip", "conntrack", "modprobe")
	unloadConntrack(t)

	d := startInProcess(t, func(ctx context.Context, logs io.Writer) error {
		return run(ctx, []string{"--web.listen-address=127.0.0.1:0", "--bpf.pin-path=", "--log.format=json"}, io.Discard, logs)
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	for _, m := range []string{modConntrack, modCtnetlink} {
		if !kmod.Loaded("", m) {
			t.Errorf("%s not loaded by the daemon", m)
		}
	}
	var loaded []string
	for _, l := range logLines(d.logs.String()) {
		if l["msg"] == "Loaded kernel modules" {
			for _, m := range l["modules"].([]any) {
				loaded = append(loaded, m.(string))
			}
		}
		if l["level"] == "warn" || l["level"] == "error" {
			t.Errorf("daemon logged %v", l)
		}
	}
	if len(loaded) == 0 || loaded[len(loaded)-1] != modCtnetlink || !strings.Contains(strings.Join(loaded, " "), modConntrack) {
		t.Errorf("the daemon says it loaded %q, want nf_conntrack and then nf_conntrack_netlink last", loaded)
	}
	t.Logf("the daemon loaded %v", loaded)
	if code, body := httpGet(t, d.addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	checkCountsExactly(t, d)
}

// checkCountsExactly makes 40 entries in a new namespace and polls the
// scrapes until that namespace's created counter and entry gauge are 40:
// no more, no fewer.
func checkCountsExactly(t *testing.T, d *inProcess) {
	t.Helper()
	if got := moduleGauge(t, scrapeMetrics(t, d.addr)); got != 1 {
		t.Errorf("ctagent_conntrack_module_loaded %v once attached, want 1", got)
	}
	n := labnet.New(t)
	const inserts = 40
	lines := make([]string, inserts)
	for i := range lines {
		lines[i] = fmt.Sprintf("-I -s 192.0.2.1 -d 192.0.2.2 -p udp --sport %d --dport 53 -t 600", 20000+i)
	}
	n.CTLoad(lines)
	if c := n.CTCount(); c != inserts {
		t.Fatalf("conntrack -C %d after %d inserts", c, inserts)
	}
	netns := strconv.FormatUint(uint64(n.Inode), 10)
	var backend string
	labnet.Eventually(t, 30*time.Second, func() error {
		sc := scrapeMetrics(t, d.addr)
		created := 0.0
		sc.each(netns, "ctagent_conntrack_created_total", func(_ string, _ map[string]string, m *dto.Metric) {
			created += m.GetCounter().GetValue()
		})
		sc.each("", "ctagent_tracer_info", func(_ string, l map[string]string, _ *dto.Metric) { backend = l["backend"] })
		if created != inserts || sc.entries(netns) != inserts {
			return fmt.Errorf("netns %s: ctagent_conntrack_created_total %v, ctagent_conntrack_entries %d; want %d each",
				netns, created, sc.entries(netns), inserts)
		}
		return nil
	})
	t.Logf("backend %s: %d entries made after the attach, %d counted created and %d entries", backend, inserts, inserts, inserts)
}

// moduleGauge is the value of ctagent_conntrack_module_loaded in sc; it
// fails t unless there is exactly one series.
func moduleGauge(t *testing.T, sc *scrape) float64 {
	t.Helper()
	var vals []float64
	sc.each("", "ctagent_conntrack_module_loaded", func(_ string, _ map[string]string, m *dto.Metric) {
		vals = append(vals, m.GetGauge().GetValue())
	})
	if len(vals) != 1 {
		t.Fatalf("%d series of ctagent_conntrack_module_loaded, want 1", len(vals))
	}
	return vals[0]
}

// startWaiting runs the daemon with args until it logs msg, and takes the
// address it listens on from its "HTTP server listening" line. t.Cleanup
// stops it and prints its log if t failed.
func startWaiting(t *testing.T, args []string, msg string) *inProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &inProcess{logs: &syncBuffer{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		d.err = run(ctx, args, io.Discard, d.logs)
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.stop(t); err != nil {
			t.Errorf("daemon: %v", err)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := false
		for _, l := range logLines(d.logs.String()) {
			if l["msg"] == "HTTP server listening" && d.addr == "" {
				d.addr, _ = l["address"].(string)
			}
			seen = seen || l["msg"] == msg
		}
		if seen && d.addr != "" {
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("the daemon returned %v before it logged %q:\n%s", d.err, msg, d.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line within 30s:\n%s", msg, d.logs.String())
		}
	}
}

// waitReady waits up to timeout for the daemon's "Ready" log line.
func (d *inProcess) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range logLines(d.logs.String()) {
			if l["msg"] == "Ready" {
				return
			}
		}
		select {
		case <-d.done:
			t.Fatalf("the daemon returned %v before it was ready:\n%s", d.err, d.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within %s:\n%s", timeout, d.logs.String())
		}
	}
}

// logLines parses JSON log lines; others are skipped.
func logLines(s string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// modprobe loads a module as an administrator's tool would.
func modprobe(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.Command("modprobe", name).CombinedOutput(); err != nil {
		t.Fatalf("modprobe %s: %v: %s", name, err, out)
	}
}

// unloadConntrack unloads nf_conntrack and every module that uses it
// (nf_conntrack_netlink, nf_nat, nft_ct, ...; the guest loads them at
// boot), users first, and loads them again in t.Cleanup, so that the tests
// after this one find the kernel as the guest's init left it. A module
// still in use (by a pinned BPF link, a ruleset, a namespace being torn
// down) is retried for up to 30s, then the test fails saying which.
func unloadConntrack(t *testing.T) {
	t.Helper()
	if !kmod.Loaded("", modConntrack) {
		t.Fatal("nf_conntrack is not loaded at the start of the test: the guest's init loads it")
	}
	if _, err := os.Stat(filepath.Join(kmod.DefaultSysfs, modConntrack, "initstate")); err != nil {
		t.Fatalf("nf_conntrack is built into this kernel (no %s/%s/initstate): it cannot be unloaded", kmod.DefaultSysfs, modConntrack)
	}
	var removed []string
	t.Cleanup(func() {
		// Users last removed are loaded first; modprobe brings what
		// each needs.
		for i := len(removed) - 1; i >= 0; i-- {
			if !kmod.Loaded("", removed[i]) {
				if out, err := exec.Command("modprobe", removed[i]).CombinedOutput(); err != nil {
					t.Errorf("restoring %s: modprobe: %v: %s", removed[i], err, out)
				}
			}
		}
	})
	var remove func(name string) error
	remove = func(name string) error {
		holders, _ := os.ReadDir(filepath.Join(kmod.DefaultSysfs, name, "holders"))
		for _, h := range holders {
			if err := remove(h.Name()); err != nil {
				return err
			}
		}
		if !kmod.Loaded("", name) {
			return nil
		}
		var err error
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if err = unix.DeleteModule(name, unix.O_NONBLOCK); err == nil || !(errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EBUSY)) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			refcnt, _ := os.ReadFile(filepath.Join(kmod.DefaultSysfs, name, "refcnt"))
			return fmt.Errorf("unloading %s (refcnt %s): %w", name, strings.TrimSpace(string(refcnt)), err)
		}
		removed = append(removed, name)
		return nil
	}
	if err := remove(modConntrack); err != nil {
		t.Fatalf("cannot unload the conntrack modules to start without them: %v (unloaded so far: %v; pinned BPF links on nf_conntrack functions, or nftables rulesets with ct expressions, keep it)", err, removed)
	}
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_max"); err == nil {
		t.Fatal("nf_conntrack unloaded, but its sysctls are still there")
	}
	t.Logf("unloaded %v", removed)
}
