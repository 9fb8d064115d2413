package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/kmod"
	"github.com/ctagent/ctagent/pkg/server"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// The kernel modules ctagent needs: nf_conntrack holds the table and the
// functions the eBPF backends attach to; nf_conntrack_netlink (ctnetlink,
// which depends on nf_conntrack) serves the table dumps and the netlink
// backend.
const (
	modConntrack = "nf_conntrack"
	modCtnetlink = "nf_conntrack_netlink"
)

// modulePoll is how often the daemon looks for nf_conntrack while it waits
// for it (one stat of /sys/module/nf_conntrack).
const modulePoll = time.Second

// conntrackLoaded reports whether nf_conntrack is loaded or built in.
func conntrackLoaded() bool { return kmod.Loaded(kmod.DefaultSysfs, modConntrack) }

// awaitConntrack returns once nf_conntrack is loaded, so that a tracer can
// attach: on a fresh host the module is often loaded only after ctagent
// starts (by the firewall, kube-proxy or Docker). With load, it first
// loads nf_conntrack_netlink, and so nf_conntrack, where they are missing
// and it may: as root run by hand. The systemd unit
// (ProtectKernelModules=yes) and the DaemonSet grant no CAP_SYS_MODULE, on
// purpose (least privilege): there the load fails, which is logged once,
// and ctagent waits for the module, with /readyz saying why (503) and
// ctagent_conntrack_module_loaded 0, until something else loads it. It
// returns an error only when ctx ends.
//
// While it waits, ctagent opens no ctnetlink socket: a request or a group
// subscription there makes the kernel load nf_conntrack_netlink, and
// nf_conntrack with it, for any process with CAP_NET_ADMIN
// (request_module("nfnetlink-subsys-1") in nfnetlink_rcv_msg and
// nfnetlink_bind, run by the kernel's modprobe helper outside any
// sandbox), which would undo the choice of --no-conntrack.load-modules.
func awaitConntrack(ctx context.Context, load bool, srv *server.Server, log *zap.Logger) error {
	why := "loading modules is off (--no-conntrack.load-modules)"
	if load {
		err := loadConntrack(log)
		if err == nil && conntrackLoaded() {
			return nil
		}
		why = "loading it failed"
		if err != nil {
			why = fmt.Sprintf("loading it failed: %v", err)
		}
	}
	if conntrackLoaded() {
		return nil
	}
	log.Warn("Kernel module nf_conntrack is not loaded; waiting for it: the tracer attaches as soon as it is",
		zap.String("reason", why), zap.Duration("poll", modulePoll))
	srv.NotReady(fmt.Sprintf("kernel module nf_conntrack is not loaded (%s); the tracer attaches as soon as it is", why))
	start := time.Now()
	if err := kmod.Wait(ctx, kmod.DefaultSysfs, modConntrack, modulePoll); err != nil {
		return err
	}
	log.Info("Kernel module nf_conntrack loaded; attaching the tracer", zap.Duration("waited", time.Since(start).Round(time.Millisecond)))
	return nil
}

// loadConntrack loads nf_conntrack_netlink, and nf_conntrack and the rest
// it depends on, unless loaded or built in. It logs what it loaded; its
// error says why it could not (errors.Is unix.EPERM: not allowed here).
func loadConntrack(log *zap.Logger) error {
	if kmod.Loaded(kmod.DefaultSysfs, modCtnetlink) {
		return nil
	}
	tree, err := kmod.ForRelease(tracer.KernelRelease())
	if err != nil {
		if conntrackLoaded() {
			// A kernel with ctnetlink built in need not list it in
			// /sys/module (it has no parameters), and a container need
			// not have the module tree: nothing to do, or the kernel
			// loads it at the first ctnetlink message.
			log.Debug("Not loading nf_conntrack_netlink: no module tree to tell whether it is built in", zap.Error(err))
			return nil
		}
		return err
	}
	if builtin, _ := tree.Builtin(modCtnetlink); builtin {
		return nil
	}
	loaded, err := tree.Load(kmod.DefaultSysfs, modCtnetlink)
	if len(loaded) > 0 {
		log.Info("Loaded kernel modules", zap.Strings("modules", loaded))
	}
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w (no CAP_SYS_MODULE, or a sandbox forbids loading modules)", err)
		}
		if conntrackLoaded() {
			// nf_conntrack is there: the tracer attaches; the table
			// dumps load ctnetlink through the kernel or fail with a
			// reason of their own.
			log.Warn("Kernel module nf_conntrack_netlink not loaded", zap.Error(err))
			return nil
		}
		return err
	}
	return nil
}
