package kube

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/client-go/kubernetes/fake"
)

func TestStart(t *testing.T) {
	client := fake.NewClientset(pod("node-a", "shop", "web", uidWeb, map[string]string{"app": "web", "tier": "x"}, false))
	core, logs := observer.New(zap.DebugLevel)
	src, stop, err := Start(context.Background(), Config{Client: client, NodeName: "node-a", PodLabels: []string{"app"}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	p, ok := src.PodByUID(uidWeb)
	if !ok || p.Name != "web" || len(p.Labels) != 1 || p.Labels["app"] != "web" {
		t.Errorf("pod %+v %v", p, ok)
	}
	if logs.FilterMessage("Watching the pods of this node").Len() != 1 {
		t.Errorf("logs %v", logs.All())
	}

	t.Setenv(NodeNameEnv, "node-a")
	src, stop2, err := Start(context.Background(), Config{Client: client})
	if err != nil {
		t.Fatalf("node from $%s: %v", NodeNameEnv, err)
	}
	defer stop2()
	if _, ok := src.PodByUID(uidWeb); !ok {
		t.Errorf("node from $%s: pod not found", NodeNameEnv)
	}
	t.Setenv(NodeNameEnv, "")
	if _, _, err := Start(context.Background(), Config{Client: client}); err == nil {
		t.Error("no node name: no error")
	}
}

// A stopped context ends the wait for the first list without a warning.
func TestStartCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	core, logs := observer.New(zap.DebugLevel)
	start := time.Now()
	src, stop, err := Start(ctx, Config{Client: fake.NewClientset(), NodeName: "node-a", Logger: zap.New(core)})
	if err != nil || src == nil {
		t.Fatalf("%v %v", src, err)
	}
	stop()
	if took := time.Since(start); took > 5*time.Second || logs.FilterMessage("Pod list not synced yet; pods are named once it is").Len() != 0 {
		t.Errorf("took %s, logged %v", took, logs.All())
	}
}
