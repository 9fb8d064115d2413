package kube

import (
	"context"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/ctagent/ctagent/pkg/netns"
)

// DefaultSyncTimeout bounds Start's wait for the first pod list.
const DefaultSyncTimeout = 30 * time.Second

// Config configures Start.
type Config struct {
	// Client, if not nil, is used instead of one from NewClient(Kubeconfig),
	// e.g. client-go's fake clientset in tests.
	Client     kubernetes.Interface
	Kubeconfig string // a kubeconfig file; "": the in-cluster service account
	// NodeName is this node's name; empty: $NODE_NAME (see NodeName).
	NodeName string
	// PodLabels are the label keys the pods keep (see NewPodInformer).
	PodLabels []string
	// SyncTimeout bounds the wait for the first pod list;
	// 0: DefaultSyncTimeout.
	SyncTimeout time.Duration
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
}

// Start starts a pod informer for this node's pods when a cluster is at
// hand (in one, with a kubeconfig, or with a Client), and waits for its
// first list at most SyncTimeout: pods are named once it is in. Outside a
// cluster pods are not named and the source is nil. stop ends the
// informer.
func Start(ctx context.Context, cfg Config) (src netns.PodSource, stop func(), err error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	client := cfg.Client
	if client == nil {
		if client, err = NewClient(cfg.Kubeconfig); err != nil {
			return nil, nil, err
		}
	}
	if client == nil {
		log.Debug("Not in a Kubernetes cluster and no --kubernetes.kubeconfig: pods are not named")
		return nil, func() {}, nil
	}
	node := NodeName(cfg.NodeName)
	inf, err := NewPodInformer(client, node, cfg.PodLabels, log.Named("kube"))
	if err != nil {
		return nil, nil, err
	}
	timeout := cfg.SyncTimeout
	if timeout <= 0 {
		timeout = DefaultSyncTimeout
	}
	pctx, cancel := context.WithCancel(ctx)
	inf.Start(pctx)
	wctx, wcancel := context.WithTimeout(pctx, timeout)
	defer wcancel()
	if inf.WaitForSync(wctx) {
		log.Info("Watching the pods of this node", zap.String("node", node))
	} else if ctx.Err() == nil {
		log.Warn("Pod list not synced yet; pods are named once it is", zap.String("node", node),
			zap.Duration("waited", timeout))
	}
	return inf, cancel, nil
}
