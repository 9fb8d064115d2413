package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ebpftracer"
)

// errCheckFailed: check found no backend that attaches.
var errCheckFailed = errors.New("check failed: no tracer backend can attach")

// runCheck validates what parseArgs could not (the kernel side), really
// attaches the backend that run would pick, detaches it and reports.
func runCheck(ctx context.Context, cfg *config, stdout io.Writer, log *zap.Logger) error {
	p := func(key, format string, args ...any) {
		fmt.Fprintf(stdout, "%-11s %s\n", key+":", fmt.Sprintf(format, args...))
	}
	p("version", "%s (revision %s)", Version, Revision)
	p("flags", "ok")
	if src, err := ebpftracer.BTFSource(cfg.tracer.BTFPath); err != nil {
		p("btf", "not available: %v (the eBPF backends cannot run)", err)
	} else {
		p("btf", "%s", src)
	}

	r := newResolver(cfg, nil, log)
	if err := r.Refresh(); err != nil {
		p("namespaces", "%d found, with an error: %v", len(r.Namespaces()), err)
	} else {
		p("namespaces", "%d found under %s and %s", len(r.Namespaces()), cfg.netns.ProcRoot, strings.Join(cfg.netns.NetnsDirs, ","))
	}

	// Without nf_conntrack no backend attaches, and trying would make the
	// kernel load it (see awaitConntrack): check loads nothing.
	if !conntrackLoaded() {
		p("conntrack", "kernel module nf_conntrack is not loaded: ctagent run would load it where allowed (--conntrack.load-modules), else wait for it, not ready")
		return errCheckFailed
	}
	p("conntrack", "nf_conntrack loaded")

	// Only the current namespace: enough to prove that ctnetlink works,
	// without opening a socket in every namespace of the host.
	opts := tracerOptions(cfg, log)
	opts.DisableEvents = true
	t, err := tracer.Open(ctx, opts)
	if err != nil {
		p("backend", "none (requested %s)", cfg.tracer.Backend)
		p("error", "%v", err)
		return errCheckFailed
	}
	info := t.Info()
	closeErr := t.Close()
	p("backend", "%s (requested %s)", info.Backend, cfg.tracer.Backend)
	if len(info.Hooks) > 0 {
		p("hooks", "%s", strings.Join(info.Hooks, ", "))
	}
	for _, h := range info.HookStatus {
		switch {
		case h.Active:
			p("hook", "%s serves %s (%s), self-test %s: %s", h.Hook, h.Group, strings.Join(h.Serves, ", "), h.State, h.Detail)
		case h.State != tracer.HookStandby && h.State != tracer.HookUnavailable:
			p("hook", "%s not used for %s: %s: %s", h.Hook, h.Group, h.State, h.Detail)
		}
	}
	for _, b := range info.RefusedBackends() {
		p("refused", "%s: %s", b, info.Refused[b])
	}
	p("kernel", "%s", info.Kernel)
	p("pins", "%s", pinState(cfg.tracer.PinPath))
	if closeErr != nil {
		p("close", "%v", closeErr)
		return errCheckFailed
	}
	p("result", "ok: ctagent run would use the %s backend", info.Backend)
	return nil
}

// pinState says what run's --bpf.pin-path holds: the pinned versions.
func pinState(path string) string {
	if path == "" {
		return "off (--bpf.pin-path is empty)"
	}
	entries, err := os.ReadDir(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "none under " + path
	case err != nil:
		return fmt.Sprintf("%s: %v", path, err)
	}
	var versions []string
	for _, e := range entries {
		versions = append(versions, e.Name())
	}
	if len(versions) == 0 {
		return "none under " + path
	}
	return fmt.Sprintf("%s under %s (ctagent uninstall removes them)", strings.Join(versions, ", "), path)
}
