package netns

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
)

// Lines from a host after "ip netns add blue" and from a pod's view.
const sampleMountinfo = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
612 27 0:25 /netns /run/netns rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1628400k,mode=755
633 612 0:4 net:[4026532281] /run/netns/blue rw shared:233 - nsfs nsfs rw
634 612 0:4 net:[4026532350] /run/netns/cni-6a1b\0402 rw shared:234 - nsfs nsfs rw
635 612 0:4 mnt:[4026532351] /run/netns/not-a-netns rw - nsfs nsfs rw
700 27 0:50 / /var/lib/my\134dir rw master:3 propagate_from:2 unbindable - ext4 /dev/my\040disk rw
`

// The network namespaces of a mount table, by their unescaped mount
// points; other nsfs mounts and other filesystems are none, with or
// without the library's filter.
func TestNetnsMountpoints(t *testing.T) {
	want := map[string]uint32{"/run/netns/blue": 4026532281, "/run/netns/cni-6a1b 2": 4026532350}
	for name, filter := range map[string]mountinfo.FilterFunc{"nsfs": mountinfo.FSTypeFilter("nsfs"), "none": nil} {
		mounts, err := mountinfo.GetMountsFromReader(strings.NewReader(sampleMountinfo), filter)
		if err != nil {
			t.Fatal(err)
		}
		if got := netnsMountpoints(mounts); !maps.Equal(got, want) {
			t.Errorf("filter %s: got %v, want %v", name, got, want)
		}
		if filter == nil {
			// What the names rely on: the library unescapes paths.
			if m := mounts[7]; m.Mountpoint != `/var/lib/my\dir` || m.Source != "/dev/my disk" || m.Root != "/" {
				t.Errorf("escaped line read as %+v", m)
			}
		}
	}
	if got := netnsMountpoints(nil); got == nil || len(got) != 0 {
		t.Errorf("no mounts: got %#v, want an empty map", got)
	}
}

// A table that is not one is an error (scanNetnsDirs then checks the
// filesystem of each name instead).
func TestNetnsMountpointsBrokenTable(t *testing.T) {
	for _, table := range []string{
		"22 27 0:21 / /proc rw - proc proc rw\nbroken\n",
		"1 2 3:4 / /mnt rw shared:1 ext4 x y", // no separator
		"1 2 34 / /mnt rw - ext4 /dev/x rw",   // device
	} {
		if m, err := mountinfo.GetMountsFromReader(strings.NewReader(table), nil); err == nil {
			t.Errorf("%q read as %+v, want an error", table, m)
		}
	}
}

func TestNetNsInode(t *testing.T) {
	for _, c := range []struct {
		fsType, root string
		want         uint32
		ok           bool
	}{
		{"nsfs", "net:[4026532281]", 4026532281, true},
		{"nsfs", "net:[0]", 0, true},
		{"nsfs", "mnt:[4026532351]", 0, false},
		{"nsfs", "net:[", 0, false},
		{"nsfs", "net:[12", 0, false},
		{"nsfs", "net:[x]", 0, false},
		{"nsfs", "net:[-1]", 0, false},
		{"nsfs", "net:[99999999999]", 0, false},
		{"tmpfs", "net:[12]", 0, false},
	} {
		ino, ok := netNsInode(&mountinfo.Info{FSType: c.fsType, Root: c.root})
		if ino != c.want || ok != c.ok {
			t.Errorf("%s %q: got %d, %v, want %d, %v", c.fsType, c.root, ino, ok, c.want, c.ok)
		}
	}
}

// netnsBindMounts reads this kernel's mount table: names with a space and a
// backslash (escaped there as \040 and \134) are found under their own
// paths.
func TestNetnsBindMounts(t *testing.T) {
	labnet.Require(t)
	dir := t.TempDir()
	ns := "/proc/thread-self/ns/net"
	var st unix.Stat_t
	if err := unix.Stat(ns, &st); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{}
	for _, name := range []string{"blue", "with space", `back\slash`, "tab\tname"} {
		target := filepath.Join(dir, name)
		if err := os.WriteFile(target, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(ns, target, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind %s on %q: %v", ns, target, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(target, unix.MNT_DETACH) })
		want[realPath(target)] = uint32(st.Ino)
	}
	got, err := netnsBindMounts()
	if err != nil {
		t.Fatal(err)
	}
	for point, ino := range want {
		if got[point] != ino {
			t.Errorf("%q: got inode %d, want %d (all: %v)", point, got[point], ino, got)
		}
	}
}

// Any mount table is read or rejected, never a panic, and only network
// namespace mounts come out.
func FuzzNetnsMountpoints(f *testing.F) {
	for l := range strings.SplitSeq(sampleMountinfo, "\n") {
		f.Add(l)
	}
	f.Add(sampleMountinfo)
	f.Add("1 2 3:4 net:[ /x rw - nsfs nsfs rw")
	f.Add("1 2 3:4 net:[99999999999] /x rw - nsfs nsfs rw")
	f.Add("1 2 3:4 / /x rw -")
	f.Add(`1 2 3:4 net:[1] \0 \01 - nsfs \040 rw`)
	f.Fuzz(func(t *testing.T, data string) {
		mounts, err := mountinfo.GetMountsFromReader(strings.NewReader(data), nil)
		if err != nil {
			return
		}
		got := netnsMountpoints(mounts)
		if len(got) > len(mounts) {
			t.Fatalf("%d network namespaces out of %d mounts", len(got), len(mounts))
		}
		for point := range got {
			if !strings.Contains(data, "nsfs") || !strings.Contains(data, "net:[") {
				t.Fatalf("%q taken for a network namespace in %q", point, data)
			}
		}
	})
}
