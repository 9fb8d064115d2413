package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/metrics"
	"github.com/ctagent/ctagent/pkg/tracer"
)

func TestParseArgsDefaults(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a")
	cfg, err := parseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.command != "run" || !slices.Equal(*cfg.web.WebListenAddresses, []string{":10371"}) || cfg.telemetryPath != "/metrics" ||
		cfg.tracer.Backend != tracer.BackendAuto || cfg.logLevel != "info" || cfg.logFormat != "logfmt" ||
		!cfg.tracer.BPFStats || cfg.metrics.DisableKernelStats || cfg.tracer.ForcePerfBuffer || *cfg.web.WebSystemdSocket ||
		cfg.tracer.MaxNamespaces != 1024 || cfg.metrics.RescanInterval != 10*time.Second || cfg.netns.ProcRoot != "/proc" ||
		cfg.tracer.PinPath != "/sys/fs/bpf/ctagent" {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg.kube.NodeName != "node-a" {
		t.Errorf("node name %q, want $NODE_NAME", cfg.kube.NodeName)
	}
	if !slices.Equal(cfg.metrics.Labels, metrics.IdentityLabels) {
		t.Errorf("labels %v", cfg.metrics.Labels)
	}
}

// --conntrack.load-modules is on by default; --no-conntrack.load-modules
// and =false turn it off; it takes no other value.
func TestParseArgsLoadModules(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--conntrack.load-modules"}, true},
		{[]string{"--no-conntrack.load-modules"}, false},
		{[]string{"--conntrack.load-modules=false"}, false},
		{[]string{"run", "--conntrack.load-modules=true"}, true},
	} {
		cfg, err := parseArgs(tc.args, io.Discard)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if cfg.loadModules != tc.want {
			t.Errorf("%v: load modules %v, want %v", tc.args, cfg.loadModules, tc.want)
		}
	}
	var ue *usageError
	if _, err := parseArgs([]string{"--conntrack.load-modules=maybe"}, io.Discard); !errors.As(err, &ue) {
		t.Errorf("--conntrack.load-modules=maybe: %v, want a usage error", err)
	}
}

// events: --output defaults to json; --netns is --events.netns.
func TestParseArgsEvents(t *testing.T) {
	cfg, err := parseArgs([]string{"events"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.eventsOutput != "json" {
		t.Errorf("events: output %q, want json", cfg.eventsOutput)
	}
	cfg, err = parseArgs([]string{"events", "-o", "text", "--netns", "blue"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.eventsOutput != "text" || cfg.eventsNetns != "blue" {
		t.Errorf("events -o text --netns blue: output %q netns %q", cfg.eventsOutput, cfg.eventsNetns)
	}
}

func TestParseArgsCommands(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--log.level=debug"}, "run"},
		{[]string{"check"}, "check"},
		{[]string{"--config.check"}, "check"},
		{[]string{"events", "--events.netns=foo"}, "events"},
		{[]string{"version"}, "version"},
		{[]string{"uninstall", "--bpf.pin-path=/sys/fs/bpf/x"}, "uninstall"},
	} {
		cfg, err := parseArgs(tc.args, io.Discard)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if cfg.command != tc.want {
			t.Errorf("%v: command %q, want %q", tc.args, cfg.command, tc.want)
		}
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"check", "--help"}} {
		var out bytes.Buffer
		if _, err := parseArgs(args, &out); !errors.Is(err, errShown) {
			t.Errorf("%v: %v", args, err)
		}
		for _, want := range []string{"--web.listen-address=:10371", "--[no-]tracer.bpf-stats", "--events.netns=", "events"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%v: help does not list %s:\n%s", args, want, out.String())
			}
		}
	}
	for _, args := range [][]string{{"--version"}, {"run", "--version"}} {
		var out bytes.Buffer
		if _, err := parseArgs(args, &out); !errors.Is(err, errShown) || !strings.HasPrefix(out.String(), "ctagent, version ") {
			t.Errorf("%v: %v %q", args, err, out.String())
		}
	}
}

func TestParseArgsValues(t *testing.T) {
	cfg, err := parseArgs([]string{
		"--web.listen-address=127.0.0.1:0", "--tracer.backend=netlink", "--tracer.ringbuf-size=8MiB",
		"--tracer.perf-buffer-size=512KiB", "--metrics.labels=pod, comm,pod", "--kubernetes.pod-labels=app,app.kubernetes.io/name",
		"--log.format=json", "--reconcile.interval=30s", "--tracer.netlink-buffer-size=8388608",
		"--tracer.bpf-stats=false", "--no-metrics.kernel-stats", "--tracer.perf-buffer=true", "--web.listen-address=[::1]:0",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tc, m := cfg.tracer, cfg.metrics
	if tc.Backend != tracer.BackendNetlink || tc.RingBufferSize != 8<<20 || tc.PerfBufferSize != 512<<10 ||
		tc.NetlinkBufferSize != 8<<20 || !slices.Equal(m.Labels, []string{"pod", "comm"}) || len(m.PodLabels) != 2 ||
		m.ReconcileInterval != 30*time.Second || tc.BPFStats || !m.DisableKernelStats || !tc.ForcePerfBuffer ||
		!slices.Equal(*cfg.web.WebListenAddresses, []string{"127.0.0.1:0", "[::1]:0"}) {
		t.Errorf("parsed %+v", cfg)
	}
}

func TestParseArgsUsageErrors(t *testing.T) {
	dir := t.TempDir()
	notBTF := filepath.Join(dir, "not-btf")
	if err := os.WriteFile(notBTF, []byte("this is not BTF at all, just text\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"frobnicate"},
		{"run", "extra"},
		{"--tracer.backend=uprobe"},
		{"--btf.path=/nonexistent/vmlinux"},
		{"--btf.path=" + notBTF},
		{"--btf.path=" + dir},
		{"--web.listen-address=10371"},
		{"--web.listen-address=:http-alt"},
		{"--web.telemetry-path=metrics"},
		{"--web.telemetry-path=/readyz"},
		{"--web.config.file=/nonexistent.yml"},
		{"--tracer.ringbuf-size=3MiB"},
		{"--tracer.ringbuf-size=lots"},
		{"--tracer.perf-buffer-size=100"},
		{"--tracer.netlink-buffer-size=-1"},
		{"--tracer.netlink-stats-interval=-1s"},
		{"--tracer.bpf-stats=maybe"},
		{"-web.listen-address=:1"},
		{"--log.level=trace"},
		{"--log.format=xml"},
		{"--reconcile.interval=0s"},
		{"--reconcile.interval=soon"},
		{"--metrics.max-namespaces=-1"},
		{"--tracer.lifetime-entries=-1"},
		{"--tracer.lifetime-entries=100000000"},
		{"--metrics.labels=netns,pod"},
		{"--netns.rescan-interval=-1s"},
		{"--kubernetes.pod-labels=-bad-"},
		{"--kubernetes.pod-labels=app_kubernetes_io/name"},
		{"--kubernetes.pod-labels=app.kubernetes.io/name,app-kubernetes-io/name"},
		{"--kubernetes.kubeconfig=/nonexistent/kubeconfig"},
		{"--events.netns=x"},
		{"events", "--output=yaml"},
		{"check", "--config.check"},
	} {
		_, err := parseArgs(args, io.Discard)
		var u *usageError
		if !errors.As(err, &u) {
			t.Errorf("%v: got %v, want a usage error", args, err)
		}
	}
}

// A --btf.path that cannot be this kernel's BTF is exit status 2 and one
// line naming the flag, the file and what is wrong, for run and check.
func TestBadBTFPathExit2(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := map[string]string{
		filepath.Join(dir, "missing"): "open " + filepath.Join(dir, "missing") + ": no such file or directory",
		write("empty", nil):           "empty file, not BTF",
		// The magic of BTF written by a big-endian kernel (s390x).
		write("big-endian", append([]byte{0xeb, 0x9f, 1, 0, 0, 0, 0, 24}, make([]byte, 16)...)): "big-endian BTF, from a kernel of another architecture",
	}
	if raw, err := os.ReadFile("/sys/kernel/btf/vmlinux"); err == nil {
		cases[write("vmlinux-half", raw[:len(raw)/2])] = "truncated: the BTF header says"
	}
	if _, err := os.Stat("/bin/true"); err == nil {
		cases["/bin/true"] = "an ELF file without a .BTF section"
	}
	for path, want := range cases {
		for _, cmd := range []string{"run", "check"} {
			var stderr bytes.Buffer
			err := run(context.Background(), []string{cmd, "--btf.path=" + path}, io.Discard, &stderr)
			if code := exitCode(err, &stderr); code != exitUsage {
				t.Errorf("%s %s: exit %d, want %d (%v)", cmd, path, code, exitUsage, err)
			}
			line, _, _ := strings.Cut(stderr.String(), "\n")
			if prefix := "ctagent: --btf.path: btf " + path + ": "; !strings.HasPrefix(line, prefix) || !strings.Contains(line, want) {
				t.Errorf("%s %s: stderr %q, want %q ... %q", cmd, path, stderr.String(), prefix, want)
			}
		}
	}
}

// Two pod label keys that make the same metric label name: exit status 2,
// and the message names both keys and the label.
func TestPodLabelCollisionExit2(t *testing.T) {
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"--kubernetes.pod-labels=team,app.kubernetes.io/name,app-kubernetes.io/name"}, io.Discard, &stderr)
	if code := exitCode(err, &stderr); code != exitUsage {
		t.Errorf("exit %d, want %d (%v)", code, exitUsage, err)
	}
	want := `ctagent: --kubernetes.pod-labels: pod label keys "app.kubernetes.io/name" and "app-kubernetes.io/name" both become the label pod_label_app_kubernetes_io_name`
	if !strings.HasPrefix(stderr.String(), want) {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

func TestExitCode(t *testing.T) {
	var buf bytes.Buffer
	for _, tc := range []struct {
		err  error
		want int
		msg  string
	}{
		{nil, 0, ""},
		{errShown, 0, ""},
		{usageErrorf("--log.level: bad"), 2, "ctagent: --log.level: bad\n"},
		{&loggedError{errors.New("x")}, 1, ""},
		{errCheckFailed, 1, "ctagent: check failed"},
	} {
		buf.Reset()
		if got := exitCode(tc.err, &buf); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.err, got, tc.want)
		}
		if !strings.HasPrefix(buf.String(), tc.msg) || (tc.msg == "" && buf.Len() > 0) {
			t.Errorf("%v: printed %q", tc.err, buf.String())
		}
	}
}

// Only run pins: check and events must neither adopt nor replace a
// daemon's pins.
func TestOnlyRunPins(t *testing.T) {
	for cmd, want := range map[string]string{"run": "/sys/fs/bpf/ctagent", "check": "", "events": ""} {
		cfg, err := parseArgs([]string{cmd}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if got := tracerOptions(cfg, zap.NewNop()).PinPath; got != want {
			t.Errorf("%s: pin path %q, want %q", cmd, got, want)
		}
	}
}

// uninstall says when nothing is pinned, refuses a path that is not below
// a bpffs mount (exit 1), and an empty one (exit 2).
func TestUninstall(t *testing.T) {
	var out bytes.Buffer
	missing := filepath.Join(t.TempDir(), "none")
	if err := run(t.Context(), []string{"uninstall", "--bpf.pin-path=" + missing}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "nothing pinned") {
		t.Errorf("uninstall of a missing path: %v, %q", err, out.String())
	}
	plain := t.TempDir()
	err := run(t.Context(), []string{"uninstall", "--bpf.pin-path=" + plain}, io.Discard, io.Discard)
	if code := exitCode(err, io.Discard); code != exitFailure {
		t.Errorf("uninstall of a tmpfs directory: exit %d (%v), want %d", code, err, exitFailure)
	}
	if _, serr := os.Stat(plain); serr != nil {
		t.Errorf("refused, but removed: %v", serr)
	}
	err = run(t.Context(), []string{"uninstall", "--bpf.pin-path="}, io.Discard, io.Discard)
	if code := exitCode(err, io.Discard); code != exitUsage {
		t.Errorf("uninstall with an empty path: exit %d (%v), want %d", code, err, exitUsage)
	}
}
