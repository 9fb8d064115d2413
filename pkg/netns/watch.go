package netns

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// mountinfoPath is the mount table WatchNamed watches: ctagent's own, the
// one netnsBindMounts reads and scanNetnsDirs checks names against.
const mountinfoPath = "/proc/self/mountinfo"

// WatchNamed calls changed whenever a named network namespace appears in
// or leaves one of Options.NetnsDirs ("ip netns add" and "ip netns del", a
// CNI plugin), and once when it starts watching, since anything may have
// changed before; it returns when ctx ends, or with the error that stopped
// it. changed runs on WatchNamed's goroutine: it should only signal
// someone to Refresh.
//
// It waits on the mount table, not on the directories: "ip netns add"
// creates the name as an empty file first and bind-mounts the namespace
// on it a moment later, and a mount raises no inotify event; the kernel
// marks /proc/self/mountinfo (POLLPRI) whenever a mount is added or
// removed. Only changes to the network namespace mounts directly in
// NetnsDirs call changed. A name made in another mount namespace and not
// propagated to ours is no namespace for Refresh either.
func (r *Resolver) WatchNamed(ctx context.Context, changed func()) error {
	// A raw descriptor, not an os.File: os.Open adds a file that can be
	// polled to the Go runtime's epoll set, and the runtime's poll of the
	// mount table would consume the change (the kernel keeps one mark per
	// open file) before ours sees it.
	fd, err := unix.Open(mountinfoPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("watching named network namespaces: open %s: %w", mountinfoPath, err)
	}
	defer unix.Close(fd)
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watching named network namespaces: eventfd: %w", err)
	}
	defer unix.Close(wake)
	stop := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	})
	defer stop()

	// Opened first, read second: a change between the two is in last,
	// and the caller's Refresh after the first changed sees it; a change
	// after the read marks fd for the first poll.
	last, err := r.netnsMounts()
	if err != nil {
		return fmt.Errorf("watching named network namespaces: %w", err)
	}
	changed()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}, {Fd: int32(wake), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("watching named network namespaces: poll %s: %w", mountinfoPath, err)
		}
		if ctx.Err() != nil {
			return nil
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) == 0 {
			continue
		}
		now, err := r.netnsMounts()
		if err != nil {
			r.log.Debug("Reading the mount table after it changed", zap.Error(err))
			continue
		}
		if !maps.Equal(now, last) {
			last = now
			changed()
		}
	}
}

// netnsMounts returns the network namespace bind mounts in r.netnsDirs:
// mount point → namespace inode.
func (r *Resolver) netnsMounts() (map[string]uint32, error) {
	// Mount points are real paths; a directory may be a symlink
	// (/var/run is /run), and may not exist yet.
	dirs := make(map[string]bool, len(r.netnsDirs))
	for _, d := range r.netnsDirs {
		dirs[realPath(d)] = true
	}
	mounts, err := netnsBindMounts()
	if err != nil {
		return nil, err
	}
	maps.DeleteFunc(mounts, func(point string, _ uint32) bool { return !dirs[filepath.Dir(point)] })
	return mounts, nil
}

// realPath resolves the symlinks of p, and of its longest part that exists
// when p does not.
func realPath(p string) string {
	p = filepath.Clean(p)
	rest := ""
	for {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(real, rest)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return filepath.Join(p, rest)
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}
