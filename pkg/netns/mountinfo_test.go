package netns

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
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

func TestParseMountinfo(t *testing.T) {
	mounts, err := parseMountinfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 8 {
		t.Fatalf("got %d mounts, want 8", len(mounts))
	}
	want := mount{
		id: 633, parent: 612, major: 0, minor: 4,
		root: "net:[4026532281]", mountPoint: "/run/netns/blue", options: "rw",
		optional: []string{"shared:233"}, fsType: "nsfs", source: "nsfs", superOptions: "rw",
	}
	if !reflect.DeepEqual(mounts[4], want) {
		t.Errorf("got %+v\nwant %+v", mounts[4], want)
	}
	want = mount{
		id: 700, parent: 27, major: 0, minor: 50, root: "/", mountPoint: `/var/lib/my\dir`, options: "rw",
		optional: []string{"master:3", "propagate_from:2", "unbindable"}, fsType: "ext4", source: "/dev/my disk", superOptions: "rw",
	}
	if !reflect.DeepEqual(mounts[7], want) {
		t.Errorf("got %+v\nwant %+v", mounts[7], want)
	}

	var got []string
	for _, m := range mounts {
		if ino, ok := m.netNsInode(); ok {
			got = append(got, fmt.Sprintf("%s=%d", m.mountPoint, ino))
		}
	}
	wantNs := []string{"/run/netns/blue=4026532281", "/run/netns/cni-6a1b 2=4026532350"}
	if !reflect.DeepEqual(got, wantNs) {
		t.Errorf("netns bind mounts: got %q, want %q", got, wantNs)
	}
}

func TestParseMountinfoLineErrors(t *testing.T) {
	for _, line := range []string{
		"",
		"1 2 3:4 / /mnt rw",                   // too short
		"x 2 3:4 / /mnt rw - ext4 /dev/x rw",  // mount ID
		"1 y 3:4 / /mnt rw - ext4 /dev/x rw",  // parent ID
		"1 2 34 / /mnt rw - ext4 /dev/x rw",   // device
		"1 2 a:4 / /mnt rw - ext4 /dev/x rw",  // major
		"1 2 3:b / /mnt rw - ext4 /dev/x rw",  // minor
		"1 2 3:4 / /mnt rw shared:1 ext4 x y", // no separator
		"1 2 3:4 / /mnt rw shared:1 -",        // no fs type
	} {
		if m, err := parseMountinfoLine(line); err == nil {
			t.Errorf("parseMountinfoLine(%q) = %+v, want an error", line, m)
		}
	}
	if _, err := parseMountinfo(strings.NewReader("22 27 0:21 / /proc rw - proc proc rw\nbroken\n")); err == nil ||
		!strings.Contains(err.Error(), "line 2") {
		t.Errorf("parseMountinfo error %v, want one about line 2", err)
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:            "plain",
		`a\040b`:           "a b",
		`tab\011nl\012`:    "tab\tnl\n",
		`back\134slash`:    `back\slash`,
		`trailing\`:        `trailing\`,
		`short\04`:         `short\04`,
		`not\999octal`:     `not\999octal`,
		`too\777big`:       `too\777big`,
		`\040\040\040`:     "   ",
		`\\040`:            `\ `,
		"utf8 \u00e9\\040": "utf8 \u00e9 ",
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseMountinfo(f *testing.F) {
	for _, l := range strings.Split(sampleMountinfo, "\n") {
		f.Add(l)
	}
	f.Add(sampleMountinfo)
	f.Add("1 2 3:4 net:[ /x rw - nsfs nsfs rw")
	f.Add("1 2 3:4 net:[99999999999] /x rw - nsfs nsfs rw")
	f.Add("1 2 3:4 / /x rw -")
	f.Add("1 2 3:4 / /x rw - t")
	f.Add(`1 2 3:4 \ \0 \01 - \134 \040`)
	f.Fuzz(func(t *testing.T, data string) {
		_, _ = parseMountinfo(strings.NewReader(data))
		m, err := parseMountinfoLine(data)
		if err != nil {
			return
		}
		m.netNsInode()
		// What parses must survive a round trip through the kernel's format.
		again, err := parseMountinfoLine(formatMount(m))
		if err != nil {
			t.Fatalf("reparsing %q: %v", formatMount(m), err)
		}
		if !reflect.DeepEqual(m, again) {
			t.Errorf("round trip of %q:\n got %+v\nwant %+v", data, again, m)
		}
	})
}

func formatMount(m mount) string {
	esc := strings.NewReplacer(`\`, `\134`, " ", `\040`, "\t", `\011`, "\n", `\012`).Replace
	f := []string{fmt.Sprint(m.id), fmt.Sprint(m.parent), fmt.Sprintf("%d:%d", m.major, m.minor),
		esc(m.root), esc(m.mountPoint), m.options}
	f = append(f, m.optional...)
	f = append(f, "-", esc(m.fsType), esc(m.source), m.superOptions)
	return strings.Join(f, " ")
}
