package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Usage errors end with status 2 and one message on stderr, before
// anything touches the kernel; they need no root.
func TestUsageErrors(t *testing.T) {
	notBTF := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(notBTF, []byte("#!/bin/sh\necho this is not BTF\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--no-such-flag"}, "unknown long flag '--no-such-flag'"},
		{"unknown command", []string{"frobnicate"}, "unexpected frobnicate"},
		{"bad backend", []string{"--tracer.backend=uprobe"}, `unknown tracer backend "uprobe"`},
		{"missing BTF", []string{"--btf.path=/nonexistent"}, "--btf.path: btf /nonexistent: open /nonexistent: no such file or directory"},
		{"not BTF", []string{"--btf.path=" + notBTF}, "--btf.path: btf " + notBTF + ": not BTF: neither an ELF file nor raw BTF (magic 0xeb9f)"},
		{"BTF is a directory", []string{"--btf.path=/tmp"}, "--btf.path: btf /tmp: is a directory, not a BTF file"},
		{"bad log level", []string{"--log.level=loud"}, `invalid value "loud" for flag --log.level: enum value must be one of debug,info,warn,error`},
		{"bad log format", []string{"--log.format=xml"}, `invalid value "xml" for flag --log.format: enum value must be one of logfmt,json`},
		{"bad listen address", []string{"--web.listen-address=localhost"}, "--web.listen-address"},
		{"bad duration", []string{"--reconcile.interval=often"}, `invalid value "often" for flag --reconcile.interval: time: invalid duration`},
		{"bad size", []string{"--tracer.netlink-buffer-size=lots"}, `invalid value "lots" for flag --tracer.netlink-buffer-size`},
		{"bad boolean", []string{"--tracer.bpf-stats=maybe"}, "unexpected maybe"},
		{"single dash", []string{"-web.listen-address=:1"}, "unknown short flag '-w'"},
		{"bad ring buffer", []string{"--tracer.ringbuf-size=3MiB"}, "--tracer.ringbuf-size: 3MiB is not a power-of-two"},
		{"bad label", []string{"--metrics.labels=pod,node"}, `--metrics.labels: unknown label "node"`},
		{"check with bad BTF", []string{"check", "--btf.path=/nonexistent"}, "--btf.path"},
		{"events with bad flag", []string{"events", "--bogus"}, "unknown long flag '--bogus'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, 10*time.Second, tc.args...)
			if r.code != 2 {
				t.Errorf("exit status %d, want 2\nstderr: %s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q does not say %q", r.stderr, tc.want)
			}
			if lines := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; lines > 2 {
				t.Errorf("stderr has %d lines, want the error and a hint:\n%s", lines, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout not empty: %q", r.stdout)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"run", "--version"}} {
		r := runCLI(t, 10*time.Second, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "ctagent, version "+testVersion+" (revision: e2e)") || r.stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

// --help lists every flag: --name=DEFAULT, or --[no-]name for a boolean.
func TestHelp(t *testing.T) {
	r := runCLI(t, 10*time.Second, "--help")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	for _, flag := range []string{"web.listen-address", "web.telemetry-path", "web.config.file", "tracer.backend",
		"btf.path", "tracer.ringbuf-size", "tracer.perf-buffer-size", "tracer.event-buffer", "tracer.lifetime-entries",
		"tracer.netlink-buffer-size", "log.level", "log.format", "reconcile.interval", "metrics.max-namespaces",
		"metrics.stale-after", "metrics.labels", "netns.rescan-interval", "netns.proc-root", "netns.dirs",
		"kubernetes.kubeconfig", "kubernetes.node-name", "kubernetes.pod-labels", "events.netns", "bpf.pin-path"} {
		if !strings.Contains(r.stdout, "--"+flag+"=") {
			t.Errorf("--help does not list --%s", flag)
		}
	}
	for _, flag := range []string{"config.check", "version", "web.systemd-socket", "tracer.perf-buffer", "tracer.bpf-stats", "metrics.kernel-stats"} {
		if !strings.Contains(r.stdout, "--[no-]"+flag+" ") {
			t.Errorf("--help does not list --%s", flag)
		}
	}
	for _, cmd := range []string{"\nrun*\n", "\ncheck\n", "\nevents [<flags>]\n", "\nversion\n", "\nuninstall\n"} {
		if !strings.Contains(r.stdout, cmd) {
			t.Errorf("--help does not list the command %q:\n%s", cmd, r.stdout)
		}
	}
}

// check really attaches the backend run would use, reports it, and exits 0.
func TestCheck(t *testing.T) {
	requireRoot(t)
	want := expectedBackend()
	r := runCLI(t, 60*time.Second, "check", "--log.level=warn")
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, line := range []string{"flags:      ok", "conntrack:  nf_conntrack loaded", "backend:    " + want + " (requested auto)", "result:     ok"} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("check output lacks %q:\n%s", line, r.stdout)
		}
	}
	if want == "netlink" && !strings.Contains(r.stdout, "refused:    fentry: ") {
		t.Errorf("check does not say why fentry was refused:\n%s", r.stdout)
	}

	// A backend that cannot attach here: exit 1 with the reason.
	if want == "netlink" {
		r := runCLI(t, 60*time.Second, "--config.check", "--tracer.backend=fentry", "--log.level=error")
		if r.code != 1 || !strings.Contains(r.stdout, "backend:    none (requested fentry)") {
			t.Errorf("check with fentry: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
	}
}

// expectedBackend is the backend auto picks on this machine: netlink on the
// project's dev and CI machines, where eBPF programs load but cannot attach.
// CTAGENT_E2E_BACKEND overrides it elsewhere.
func expectedBackend() string {
	if b := os.Getenv("CTAGENT_E2E_BACKEND"); b != "" {
		return b
	}
	return "netlink"
}
