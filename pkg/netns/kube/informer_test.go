package kube

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ctagent/ctagent/pkg/netns"
)

func pod(node, ns, name, uid string, labels map[string]string, hostNetwork bool) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(uid), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, HostNetwork: hostNetwork, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
	}
}

const (
	uidWeb   = "1234abcd-5678-90ef-1234-567890abcdef"
	uidAgent = "22222222-2222-2222-2222-222222222222"
	uidOther = "33333333-3333-3333-3333-333333333333"
	uidEtcd  = "44444444-4444-4444-4444-444444444444"
	hashEtcd = "6f1b2c3d4e5f60718293a4b5c6d7e8f9"
)

func startInformer(t *testing.T, client *fake.Clientset) *PodInformer {
	t.Helper()
	inf, err := NewPodInformer(client, "node-a", []string{"app", "team"}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		inf.factory.Shutdown()
	})
	inf.Start(ctx)
	syncCtx, syncCancel := context.WithTimeout(ctx, 10*time.Second)
	defer syncCancel()
	if !inf.WaitForSync(syncCtx) {
		t.Fatal("informer did not sync")
	}
	return inf
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPodInformer(t *testing.T) {
	etcd := pod("node-a", "kube-system", "etcd-node-a", uidEtcd, map[string]string{"component": "etcd"}, true)
	etcd.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: hashEtcd, "big": "annotation"}
	client := fake.NewClientset(
		pod("node-a", "shop", "web-0", uidWeb, map[string]string{"app": "web", "team": "blue", "pod-template-hash": "abc"}, false),
		pod("node-a", "kube-system", "agent-x", uidAgent, map[string]string{"app": "agent"}, true),
		pod("node-b", "shop", "web-1", uidOther, map[string]string{"app": "web"}, false),
		etcd,
	)
	inf := startInformer(t, client)

	// The informer asks the API server for this node's pods only.
	var selectors []string
	for _, a := range client.Actions() {
		if l, ok := a.(k8stesting.ListActionImpl); ok && a.GetResource().Resource == "pods" {
			selectors = append(selectors, l.GetListRestrictions().Fields.String())
		}
	}
	if len(selectors) == 0 || selectors[0] != "spec.nodeName=node-a" {
		t.Errorf("pod list field selectors %q, want spec.nodeName=node-a", selectors)
	}

	for _, tt := range []struct {
		uid  string
		want netns.PodInfo
		ok   bool
	}{
		{uidWeb, netns.PodInfo{Name: "web-0", Namespace: "shop", Labels: map[string]string{"app": "web", "team": "blue"}}, true},
		{uidAgent, netns.PodInfo{Name: "agent-x", Namespace: "kube-system", Labels: map[string]string{"app": "agent"}, HostNetwork: true}, true},
		{hashEtcd, netns.PodInfo{Name: "etcd-node-a", Namespace: "kube-system", HostNetwork: true}, true},
		{uidEtcd, netns.PodInfo{Name: "etcd-node-a", Namespace: "kube-system", HostNetwork: true}, true},
		{uidOther, netns.PodInfo{}, false}, // another node's pod
		{"55555555-5555-5555-5555-555555555555", netns.PodInfo{}, false},
		{"", netns.PodInfo{}, false},
	} {
		got, ok := inf.PodByUID(tt.uid)
		if ok != tt.ok || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("PodByUID(%q) = %+v, %v\nwant %+v, %v", tt.uid, got, ok, tt.want, tt.ok)
		}
	}

	// Callers own the labels they get.
	got, _ := inf.PodByUID(uidWeb)
	got.Labels["app"] = "changed"
	if again, _ := inf.PodByUID(uidWeb); again.Labels["app"] != "web" {
		t.Errorf("a caller changed the cache: %v", again.Labels)
	}

	// The cache keeps only what is needed.
	obj, ok, err := inf.informer.GetStore().GetByKey("kube-system/etcd-node-a")
	if err != nil || !ok {
		t.Fatalf("etcd pod not in the store: %v %v", ok, err)
	}
	if p := obj.(*corev1.Pod); len(p.Spec.Containers) != 0 || len(p.Annotations) != 1 || p.Labels != nil {
		t.Errorf("stored pod not trimmed: %+v", p)
	}

	ctx := context.Background()
	updated := pod("node-a", "shop", "web-0", uidWeb, map[string]string{"app": "web", "team": "red"}, false)
	if _, err := client.CoreV1().Pods("shop").Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the label update arrives", func() bool {
		p, _ := inf.PodByUID(uidWeb)
		return p.Labels["team"] == "red"
	})

	if err := client.CoreV1().Pods("shop").Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted pod is gone", func() bool {
		_, ok := inf.PodByUID(uidWeb)
		return !ok
	})
}

func TestNewPodInformerErrors(t *testing.T) {
	if _, err := NewPodInformer(nil, "node-a", nil, nil); err == nil {
		t.Error("no error without a client")
	}
	if _, err := NewPodInformer(fake.NewClientset(), "", nil, nil); err == nil {
		t.Error("no error without a node name")
	}
}

func TestNewClient(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if c, err := NewClient(""); c != nil || err != nil {
		t.Errorf("outside a cluster NewClient(\"\") = %v, %v; want nil, nil", c, err)
	}

	if _, err := NewClient(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("no error for a missing kubeconfig")
	}

	kubeconfig := filepath.Join(t.TempDir(), "config")
	const cfg = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := NewClient(kubeconfig); c == nil || err != nil {
		t.Errorf("NewClient(kubeconfig) = %v, %v", c, err)
	}

	// In a cluster without a mounted service account token: an error, not
	// silence.
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, err := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/token"); err == nil {
		t.Skip("a service account token is mounted here")
	}
	if c, err := NewClient(""); err == nil {
		t.Errorf("in a cluster without a token NewClient(\"\") = %v, nil; want an error", c)
	}
}

func TestNodeName(t *testing.T) {
	t.Setenv(NodeNameEnv, "from-env")
	if got := NodeName("from-flag"); got != "from-flag" {
		t.Errorf("NodeName(flag) = %q", got)
	}
	if got := NodeName(""); got != "from-env" {
		t.Errorf("NodeName(\"\") = %q, want from-env", got)
	}
}
