package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxOutput bounds what parseArgs writes to stdout (the help text).
const maxOutput = 64 << 10

// FuzzParseArgs: any command line (arguments separated by NUL) parses,
// shows help or version, or is a usage error (exit status 2) whose message
// is bounded by the input; never a panic, never another error.
func FuzzParseArgs(f *testing.F) {
	for _, args := range [][]string{
		{},
		{"run", "--web.listen-address=127.0.0.1:0", "--tracer.backend=netlink"},
		{"check", "--config.check"},
		{"events", "--events.netns=blue", "--log.format=json"},
		{"--help"}, {"help", "events"}, {"version"}, {"--version"},
		{"--tracer.ringbuf-size=8MiB", "--tracer.perf-buffer-size=256KiB", "--tracer.netlink-buffer-size=8388608"},
		{"--tracer.ringbuf-size=3MiB"}, {"--tracer.lifetime-entries=-1"},
		{"--metrics.labels=pod, comm,pod,", "--kubernetes.pod-labels=app,app.kubernetes.io/name"},
		{"--kubernetes.pod-labels=app.kubernetes.io/name,app-kubernetes.io/name"},
		{"--tracer.bpf-stats=false", "--no-metrics.kernel-stats", "--tracer.perf-buffer=true"},
		{"--reconcile.interval=-1s", "--metrics.stale-after=1h", "--netns.rescan-interval=0"},
		{"--web.telemetry-path=/healthz"}, {"--web.listen-address=[::1]:99999"},
		{"--btf.path=/nonexistent"}, {"--btf.path="}, {"--netns.dirs=,,"}, {"--netns.proc-root="},
		{"-h"}, {"--"}, {"-"}, {"--=x"}, {"--log.level"},
	} {
		f.Add(strings.Join(args, "\x00"))
	}
	f.Fuzz(func(t *testing.T, in string) {
		var args []string
		if in != "" {
			args = strings.Split(in, "\x00")
		}
		for _, a := range args {
			// Arguments that read files (kingpin's @file expansion, and
			// BTF and kubeconfig paths) are left to the unit tests.
			if strings.HasPrefix(a, "@") {
				return
			}
		}
		var stdout bytes.Buffer
		cfg, err := parseArgs(args, &stdout)
		if stdout.Len() > maxOutput {
			t.Fatalf("%q: %d bytes of output", args, stdout.Len())
		}
		var usage *usageError
		switch {
		case err == nil:
			if cfg == nil || cfg.command == "" {
				t.Fatalf("%q: no command", args)
			}
		case errors.Is(err, errShown):
		case !errors.As(err, &usage):
			t.Fatalf("%q: %v is not a usage error", args, err)
		case exitCode(err, &bytes.Buffer{}) != exitUsage:
			t.Fatalf("%q: %v does not exit with status 2", args, err)
		case len(err.Error()) > 1024+8*len(in):
			t.Fatalf("%q: %d-byte error", args, len(err.Error()))
		}
	})
}

// FuzzWebConfig feeds arbitrary YAML to --web.config.file, which
// exporter-toolkit's web.Validate checks at flag parsing: the file is
// accepted or refused with a usage error, never a panic.
func FuzzWebConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
		"tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    AAAA\n    -----END CERTIFICATE-----\n  key: x\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
		"tls_server_config:\n  min_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n  curve_preferences: [X25519]\n",
		"basic_auth_users:\n  prometheus: $2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi\n",
		"http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n",
		"rate_limit:\n  interval: 1s\n  burst: 5\n",
		"tls_server_config: {}\nunknown_key: 1\n",
		"- a\n- b\n", "{", ": :", "&a [*a]",
	} {
		f.Add(s)
	}
	dir := f.TempDir()
	path := filepath.Join(dir, "web-config.yml")
	f.Fuzz(func(t *testing.T, yaml string) {
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := parseArgs([]string{"--web.config.file=" + path}, &bytes.Buffer{})
		var usage *usageError
		if err != nil && (!errors.As(err, &usage) || !strings.HasPrefix(err.Error(), "--web.config.file: ")) {
			t.Fatalf("%q: %v is not a usage error naming the flag", yaml, err)
		}
	})
}
