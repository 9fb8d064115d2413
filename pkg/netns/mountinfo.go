package netns

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// netnsBindMounts returns the network namespace bind mounts of our own
// mount namespace: mount point → namespace inode. The mount table is read
// and unescaped (a space in a mount point is \040 there) by
// github.com/moby/sys/mountinfo, from /proc/thread-self/mountinfo: the
// same table as /proc/self/mountinfo, since the threads of a Go process
// share one mount namespace.
func netnsBindMounts() (map[string]uint32, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("nsfs"))
	if err != nil {
		return nil, fmt.Errorf("read the mount table: %w", err)
	}
	return netnsMountpoints(mounts), nil
}

// netnsMountpoints picks the network namespaces out of mounts: mount point
// → namespace inode. Never nil.
func netnsMountpoints(mounts []*mountinfo.Info) map[string]uint32 {
	out := make(map[string]uint32)
	for _, m := range mounts {
		if ino, ok := netNsInode(m); ok {
			out[m.Mountpoint] = ino
		}
	}
	return out
}

// netNsInode returns the inode of a network namespace bind mount: nsfs
// with root "net:[<inode>]" (nsfs also holds the other kinds of namespace,
// "mnt:[...]", "uts:[...]"). The mountinfo library leaves the root of an
// nsfs mount as the kernel writes it, so this small parse is ours.
func netNsInode(m *mountinfo.Info) (uint32, bool) {
	if m.FSType != "nsfs" {
		return 0, false
	}
	s, ok := strings.CutPrefix(m.Root, "net:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(ino), true
}
