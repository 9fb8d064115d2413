package netns

import (
	"bytes"
	"strings"
)

// Container runtimes, as reported in CgroupInfo.Runtime and Identity.Runtime.
const (
	// RuntimeContainerd is containerd's CRI plugin ("cri-containerd-<id>.scope").
	RuntimeContainerd = "containerd"
	// RuntimeCRIO is CRI-O ("crio-<id>.scope", "crio-<id>").
	RuntimeCRIO = "cri-o"
	// RuntimeDocker is Docker or cri-dockerd ("docker-<id>.scope", "/docker/<id>").
	RuntimeDocker = "docker"
	// RuntimePodman is Podman ("libpod-<id>.scope").
	RuntimePodman = "podman"
)

// CgroupInfo is what a process's cgroup path says about the container and
// the Kubernetes pod it runs in.
type CgroupInfo struct {
	// ContainerID is the full container ID (64 lowercase hex digits), or ""
	// when the process is not in a container.
	ContainerID string
	// Runtime is one of the Runtime constants, or "" when the path does not
	// tell. The kubelet's cgroupfs driver names container cgroups by the bare
	// ID for both containerd and Docker, so those report ContainerID with an
	// empty Runtime.
	Runtime string
	// PodUID is the Kubernetes pod UID in its canonical dashed form (or the
	// 32-hex config hash of a static pod), or "" outside kubepods.
	PodUID string
}

// runtimePrefixes maps cgroup name prefixes of container scopes to runtimes.
// The conmon scopes of CRI-O and Podman ("crio-conmon-<id>.scope") do not
// match because "conmon-<id>" is not a container ID.
var runtimePrefixes = []struct{ prefix, runtime string }{
	{"cri-containerd-", RuntimeContainerd}, // containerd, systemd driver
	{"crio-", RuntimeCRIO},                 // CRI-O, both drivers
	{"docker-", RuntimeDocker},             // Docker and cri-dockerd, systemd driver
	{"libpod-", RuntimePodman},             // Podman, systemd driver
}

// ParseCgroup extracts container and pod from the content of /proc/PID/cgroup:
// lines "hierarchy-ID:controllers:path", "0::path" for cgroup v2. Malformed
// lines are skipped. When several hierarchies name a container (cgroup v1, or
// hybrid), the line that tells the most wins, the v2 line on a tie.
func ParseCgroup(data []byte) CgroupInfo {
	var best CgroupInfo
	bestScore, bestV2 := -1, false
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		id, rest, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		controllers, path, ok := bytes.Cut(rest, []byte{':'})
		if !ok || len(path) == 0 || path[0] != '/' {
			continue
		}
		v2 := string(id) == "0" && len(controllers) == 0
		info := ParseCgroupPath(string(path))
		score := info.score()
		if score > bestScore || score == bestScore && v2 && !bestV2 {
			best, bestScore, bestV2 = info, score, v2
		}
	}
	return best
}

func (c CgroupInfo) score() int {
	s := 0
	if c.ContainerID != "" {
		s += 2
	}
	if c.PodUID != "" {
		s++
	}
	return s
}

// ParseCgroupPath extracts container and pod from one cgroup path, as written
// by the kubelet's systemd driver
//
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//	/kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope
//
// or its cgroupfs driver
//
//	/kubepods/besteffort/pod<uid>/<id>
//	/kubepods/pod<uid>/crio-<id>
//
// or by Docker and Podman outside Kubernetes (/docker/<id>,
// /system.slice/docker-<id>.scope, libpod-<id>.scope). A kubelet --cgroup-root
// prefix (/kubelet.slice/kubelet-kubepods.slice/...) and the "/../.." that a
// reader in another cgroup namespace sees are fine. The deepest container
// component wins, so Docker in Docker yields the inner container.
func ParseCgroupPath(path string) CgroupInfo {
	var info CgroupInfo
	kube := false
	prev := ""
	for path != "" {
		var c string
		c, path, _ = strings.Cut(path, "/")
		switch c {
		case "", ".":
			continue
		case "..":
			// A reader in another cgroup namespace sees paths relative to
			// its own cgroup; what lies above is unknown, maybe kubepods.
			kube = true
			continue
		}
		if !kube && strings.Contains(c, "kubepods") {
			kube = true
		}
		if kube {
			if uid, ok := podUID(c); ok {
				info.PodUID = uid
			}
		}
		if id, rt, ok := containerID(c, prev); ok {
			info.ContainerID, info.Runtime = id, rt
		}
		prev = c
	}
	return info
}

// podUID recognizes "pod<uid>" (cgroupfs) and "kubepods-<qos>-pod<uid_>.slice"
// (systemd, dashes of the UID turned into underscores).
func podUID(c string) (string, bool) {
	s := strings.TrimSuffix(c, ".slice")
	i := strings.LastIndex(s, "pod")
	if i < 0 || i > 0 && s[i-1] != '-' {
		return "", false
	}
	s = s[i+len("pod"):]
	switch len(s) {
	case 32: // static pod: the kubelet uses the config hash as UID
		if !isHex(s) {
			return "", false
		}
		return strings.ToLower(s), true
	case 36:
		b := []byte(s)
		for j, ch := range b {
			switch j {
			case 8, 13, 18, 23:
				if ch != '-' && ch != '_' {
					return "", false
				}
				b[j] = '-'
			default:
				if !isHexDigit(ch) {
					return "", false
				}
				if 'A' <= ch && ch <= 'F' {
					b[j] = ch + 'a' - 'A'
				}
			}
		}
		return string(b), true
	}
	return "", false
}

// containerID recognizes a container's cgroup: "<prefix><id>[.scope]" or a
// bare 64-hex ID, which is Docker's under "docker".
func containerID(c, parent string) (id, runtime string, ok bool) {
	s := strings.TrimSuffix(c, ".scope")
	for _, p := range runtimePrefixes {
		if rest, found := strings.CutPrefix(s, p.prefix); found {
			if isContainerID(rest) {
				return rest, p.runtime, true
			}
			return "", "", false
		}
	}
	if s != c || !isContainerID(s) {
		return "", "", false
	}
	if parent == "docker" {
		return s, RuntimeDocker, true
	}
	return s, "", true
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if ch := s[i]; !('0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'f') {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isHexDigit(s[i]) {
			return false
		}
	}
	return true
}

func isHexDigit(ch byte) bool {
	return '0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'f' || 'A' <= ch && ch <= 'F'
}
