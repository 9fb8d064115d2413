package e2e

import (
	"bufio"
	"bytes"
	jsonenc "encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func deployPath(parts ...string) string {
	return filepath.Join(append([]string{repoRoot, "deploy"}, parts...)...)
}

// The alert rules parse, and their unit tests pass (promtool ships with
// Debian's prometheus package).
func TestAlertRules(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", deployPath("prometheus", "alerts.yml")},
		{"test", "rules", deployPath("prometheus", "alerts_test.yml")},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(deployPath("grafana", "ctagent-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := jsonenc.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&dash); err != nil {
		t.Fatal(err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("dashboard without uid or title")
	}
	ids := map[int]bool{}
	metrics := map[string]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range []string{"ctagent_conntrack_entries", "ctagent_conntrack_kernel_entries", "ctagent_conntrack_created_total",
				"ctagent_conntrack_destroyed_total", "ctagent_conntrack_insert_failed_total", "ctagent_conntrack_lifetime_seconds_bucket",
				"ctagent_events_lost_total", "ctagent_tracer_info"} {
				if strings.Contains(tg.Expr, m) {
					metrics[m] = true
				}
			}
		}
	}
	if len(metrics) != 8 {
		t.Errorf("dashboard shows only %v", metrics)
	}
}

// The unit file is valid for systemd (systemd-analyze verify).
func TestSystemdUnit(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile(deployPath("systemd", "ctagent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(unit, []byte("ExecStart=/usr/local/bin/ctagent run")) {
		t.Fatal("unexpected ExecStart")
	}
	// verify checks that ExecStart exists: point it at the binary under test.
	dir := t.TempDir()
	unit = bytes.ReplaceAll(unit, []byte("/usr/local/bin/ctagent"), []byte(binary))
	path := filepath.Join(dir, "ctagent.service")
	if err := os.WriteFile(path, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The capabilities TestVMLeastPrivilege measured as needed
	// (docs/security.md), and no other.
	want := []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}
	for _, c := range want {
		if bytes.Count(unit, []byte(c)) < 3 { // bounding set, ambient set, and the comment saying why
			t.Errorf("%s is not in both capability sets with a reason", c)
		}
	}
	for _, line := range strings.Split(string(unit), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || (k != "CapabilityBoundingSet" && k != "AmbientCapabilities") {
			continue
		}
		if got := strings.Fields(v); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
			t.Errorf("%s: %v, want %v", k, got, want)
		}
	}
}

// The Kubernetes manifests decode strictly (no unknown or duplicate fields)
// into the API types, and the DaemonSet has what ctagent needs.
func TestKubernetesManifests(t *testing.T) {
	ser := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
	files, err := filepath.Glob(deployPath("kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	kinds := map[string]int{}
	var ds *appsv1.DaemonSet
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, gvk, err := ser.Decode(doc, nil, nil)
			if err != nil {
				t.Errorf("%s: %v", filepath.Base(f), err)
				continue
			}
			kinds[gvk.Kind]++
			if d, ok := obj.(*appsv1.DaemonSet); ok {
				ds = d
			}
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s objects, want 1", kinds[k], k)
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostPID || !spec.HostNetwork {
		t.Error("DaemonSet needs hostPID and hostNetwork")
	}
	c := spec.Containers[0]
	var nodeName bool
	for _, e := range c.Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("NODE_NAME does not come from the downward API")
	}
	caps := map[corev1.Capability]bool{}
	for _, cp := range c.SecurityContext.Capabilities.Add {
		caps[cp] = true
	}
	for _, cp := range []corev1.Capability{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"} {
		if !caps[cp] {
			t.Errorf("capability %s missing", cp)
		}
		delete(caps, cp)
	}
	if len(caps) > 0 {
		t.Errorf("capabilities not measured as needed (docs/security.md): %v", caps)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for _, p := range []string{"/sys/kernel/btf", "/sys/fs/bpf", "/host/proc", "/var/run/netns", "/sys/fs/cgroup"} {
		if _, ok := mounts[p]; !ok {
			t.Errorf("no mount at %s", p)
		}
	}
	if m := mounts["/var/run/netns"]; m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Error("/var/run/netns needs mountPropagation HostToContainer")
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("probes must be /healthz (liveness) and /readyz (readiness)")
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--netns.proc-root=/host/proc") {
		t.Error("--netns.proc-root must point at the host's /proc mount")
	}
}

// Every file that tells where ctagent listens names the port the binary
// listens on by default, and none the port it used before (9695, which the
// Prometheus port allocations give to the CIFS exporter).
func TestDefaultPortEverywhere(t *testing.T) {
	r := runCLI(t, 10*time.Second, "--help")
	m := regexp.MustCompile(`--web\.listen-address=:(\d+) `).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("--help shows no default --web.listen-address:\n%s", r.stdout)
	}
	oldPort := regexp.MustCompile(`[:" ]9695\b`)
	for _, f := range []string{"README.md", "Makefile", "deploy/README.md", "deploy/Dockerfile", "deploy/kubernetes/daemonset.yaml",
		"deploy/kubernetes/service.yaml", "deploy/prometheus/alerts_test.yml"} {
		data, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), m[1]) || oldPort.Match(data) {
			t.Errorf("%s does not name port %s, or listens on 9695", f, m[1])
		}
	}
}
