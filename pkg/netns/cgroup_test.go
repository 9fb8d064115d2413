package netns

import (
	"strings"
	"testing"
)

const (
	cid  = "4e6c1a0f5b9d7e2c3a8b1f0e9d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c"
	cid2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	uid  = "1234abcd-5678-90ef-1234-567890abcdef"
	uidU = "1234abcd_5678_90ef_1234_567890abcdef" // as the systemd driver writes it
	hash = "6f1b2c3d4e5f60718293a4b5c6d7e8f9"     // static pod config hash
)

func TestParseCgroupPath(t *testing.T) {
	tests := []struct {
		name, path string
		want       CgroupInfo
	}{
		{"systemd containerd burstable",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"systemd cri-o burstable",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-" + cid + ".scope",
			CgroupInfo{cid, RuntimeCRIO, uid}},
		{"systemd containerd besteffort",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"systemd containerd guaranteed",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"systemd cri-o guaranteed",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + cid + ".scope",
			CgroupInfo{cid, RuntimeCRIO, uid}},
		{"systemd cri-o container subgroup",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + cid + ".scope/container",
			CgroupInfo{cid, RuntimeCRIO, uid}},
		{"systemd cri-o conmon is no container",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope",
			CgroupInfo{PodUID: uid}},
		{"systemd cri-dockerd",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope",
			CgroupInfo{cid, RuntimeDocker, uid}},
		{"systemd pod slice only",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice",
			CgroupInfo{PodUID: uid}},
		{"systemd kubelet cgroup root (kind)",
			"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"cgroupfs burstable",
			"/kubepods/burstable/pod" + uid + "/" + cid,
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"cgroupfs besteffort",
			"/kubepods/besteffort/pod" + uid + "/" + cid,
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"cgroupfs guaranteed",
			"/kubepods/pod" + uid + "/" + cid,
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"cgroupfs cri-o",
			"/kubepods/burstable/pod" + uid + "/crio-" + cid,
			CgroupInfo{cid, RuntimeCRIO, uid}},
		{"cgroupfs static pod",
			"/kubepods/besteffort/pod" + hash + "/" + cid,
			CgroupInfo{ContainerID: cid, PodUID: hash}},
		{"cgroupfs upper case UID",
			"/kubepods/pod" + strings.ToUpper(uid) + "/" + cid,
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"other cgroup namespace, systemd",
			"/../../../kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"other cgroup namespace, cgroupfs",
			"/../../../pod" + uid + "/" + cid,
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"docker cgroupfs", "/docker/" + cid, CgroupInfo{ContainerID: cid, Runtime: RuntimeDocker}},
		{"docker systemd", "/system.slice/docker-" + cid + ".scope", CgroupInfo{ContainerID: cid, Runtime: RuntimeDocker}},
		{"docker in docker", "/docker/" + cid + "/docker/" + cid2, CgroupInfo{ContainerID: cid2, Runtime: RuntimeDocker}},
		{"podman", "/machine.slice/libpod-" + cid + ".scope", CgroupInfo{ContainerID: cid, Runtime: RuntimePodman}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + cid + ".scope", CgroupInfo{}},
		{"bare ID elsewhere", "/system.slice/" + cid, CgroupInfo{ContainerID: cid}},
		{"user session", "/user.slice/user-1000.slice/session-2.scope", CgroupInfo{}},
		{"init", "/init.scope", CgroupInfo{}},
		{"root", "/", CgroupInfo{}},
		{"empty", "", CgroupInfo{}},
		{"pod outside kubepods", "/system.slice/pod" + uid + "/x", CgroupInfo{}},
		{"short ID", "/docker/" + cid[:63], CgroupInfo{}},
		{"upper case ID", "/docker/" + strings.ToUpper(cid), CgroupInfo{}},
		{"bare ID with scope suffix", "/system.slice/" + cid + ".scope", CgroupInfo{}},
		{"prefix with short ID", "/system.slice/docker-" + cid[:12] + ".scope", CgroupInfo{}},
		{"UID with wrong separators", "/kubepods/pod1234abcd-5678-90ef-1234_567890abcdef0/" + cid, CgroupInfo{ContainerID: cid}},
		{"not a pod component", "/kubepods/burstable/xpod" + uid + "/" + cid, CgroupInfo{ContainerID: cid}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseCgroupPath(tt.path); got != tt.want {
				t.Errorf("ParseCgroupPath(%q)\n got %+v\nwant %+v", tt.path, got, tt.want)
			}
		})
	}
}

func TestParseCgroup(t *testing.T) {
	cgroupfsV1 := "/kubepods/burstable/pod" + uid + "/" + cid
	systemdV2 := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope"
	tests := []struct {
		name, data string
		want       CgroupInfo
	}{
		{"cgroup v2", "0::" + systemdV2 + "\n", CgroupInfo{cid, RuntimeContainerd, uid}},
		{"cgroup v2 without newline", "0::" + systemdV2, CgroupInfo{cid, RuntimeContainerd, uid}},
		{"cgroup v1 cgroupfs",
			"12:pids:" + cgroupfsV1 + "\n11:memory:" + cgroupfsV1 + "\n2:cpu,cpuacct:" + cgroupfsV1 + "\n1:name=systemd:" + cgroupfsV1 + "\n0::/\n",
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"hybrid, v2 tells",
			"9:name=systemd:/\n4:memory:/process_api/c9445f10d4349f1a70dbb51120121e47\n1:cpu:/\n0::" + systemdV2 + "\n",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"v2 wins a tie",
			"1:name=systemd:/docker/" + cid2 + "\n0::" + systemdV2 + "\n",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"container beats pod only",
			"3:pids:/kubepods/pod" + uid + "\n2:cpu:" + cgroupfsV1 + "\n0::/kubepods/pod" + uid + "\n",
			CgroupInfo{ContainerID: cid, PodUID: uid}},
		{"host process", "0::/user.slice/user-0.slice/session-1.scope\n", CgroupInfo{}},
		{"malformed lines skipped",
			"garbage\n1:cpu\n\n2:cpu:relative/path\n0::" + systemdV2 + "\n",
			CgroupInfo{cid, RuntimeContainerd, uid}},
		{"colon in path", "0::/docker/" + cid + ":x\n", CgroupInfo{}},
		{"empty", "", CgroupInfo{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseCgroup([]byte(tt.data)); got != tt.want {
				t.Errorf("ParseCgroup(%q)\n got %+v\nwant %+v", tt.data, got, tt.want)
			}
		})
	}
}

func FuzzParseCgroup(f *testing.F) {
	for _, s := range []string{
		"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n",
		"0::/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + cid + ".scope\n",
		"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope\n",
		"12:pids:/kubepods/burstable/pod" + uid + "/" + cid + "\n1:name=systemd:/kubepods/pod" + uid + "/" + cid + "\n0::/\n",
		"0::/kubepods/besteffort/pod" + hash + "/crio-" + cid + "\n",
		"0::/../../kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope\n",
		"0::/docker/" + cid + "\n",
		"0::/system.slice/docker-" + cid + ".scope\n",
		"0::/machine.slice/libpod-" + cid + ".scope\n",
		"0::/user.slice/user-1000.slice/session-2.scope\n",
		"9:name=systemd:/\n4:memory:/process_api/c9445f10d4349f1a70dbb51120121e47\n0::/\n",
		"", ":", "::", "0::", "0::/", "a:b:c:d\n", "\n\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		info := ParseCgroup([]byte(data))
		checkCgroupInfo(t, info)
		checkCgroupInfo(t, ParseCgroupPath(data))
		if strings.HasPrefix(data, "/") && !strings.Contains(data, "\n") {
			if a, b := ParseCgroup([]byte("0::"+data)), ParseCgroupPath(data); a != b {
				t.Errorf("ParseCgroup(0::%q) = %+v, ParseCgroupPath = %+v", data, a, b)
			}
		}
	})
}

func checkCgroupInfo(t *testing.T, c CgroupInfo) {
	t.Helper()
	if c.ContainerID != "" && !isContainerID(c.ContainerID) {
		t.Errorf("container ID %q is not 64 lower-case hex digits", c.ContainerID)
	}
	if c.Runtime != "" && c.ContainerID == "" {
		t.Errorf("runtime %q without a container ID", c.Runtime)
	}
	switch len(c.PodUID) {
	case 0:
	case 32:
		if strings.ToLower(c.PodUID) != c.PodUID || !isHex(c.PodUID) {
			t.Errorf("pod UID %q is not a lower-case config hash", c.PodUID)
		}
	case 36:
		for i, ch := range []byte(c.PodUID) {
			dash := i == 8 || i == 13 || i == 18 || i == 23
			if dash != (ch == '-') || !dash && !('0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'f') {
				t.Errorf("pod UID %q is not canonical", c.PodUID)
				break
			}
		}
	default:
		t.Errorf("pod UID %q has length %d", c.PodUID, len(c.PodUID))
	}
}
