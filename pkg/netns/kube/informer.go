// Package kube names the pods of network namespaces: a netns.PodSource fed
// by a pod informer that watches only the pods of one node.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/ctagent/ctagent/pkg/netns"
)

// uidIndex indexes pods by metadata.uid and, for mirror pods of static pods,
// by the config hash that the kubelet uses as UID in cgroup paths.
const uidIndex = "uid"

// PodInformer keeps the pods of one node in memory and implements
// netns.PodSource.
type PodInformer struct {
	nodeName string
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

var _ netns.PodSource = (*PodInformer)(nil)

// NewPodInformer returns an informer for the pods with spec.nodeName ==
// nodeName. It keeps only the labels in labelAllowList. Call Start, then
// WaitForSync.
func NewPodInformer(client kubernetes.Interface, nodeName string, labelAllowList []string, logger *zap.Logger) (*PodInformer, error) {
	if client == nil {
		return nil, errors.New("pod informer: no Kubernetes client")
	}
	if nodeName == "" {
		return nil, fmt.Errorf("pod informer: node name unknown (set %s or the node name flag)", NodeNameEnv)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	allow := make(map[string]bool, len(labelAllowList))
	for _, l := range labelAllowList {
		allow[l] = true
	}
	selector := fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }),
		informers.WithTransform(func(obj any) (any, error) { return trimPod(obj, allow), nil }),
	)
	inf := factory.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{uidIndex: podUIDs}); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	log := logger.With(zap.String("node", nodeName))
	err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		switch {
		case errors.Is(err, io.EOF):
		case apierrors.IsResourceExpired(err) || apierrors.IsGone(err):
			log.Debug("Pod watch expired; relisting", zap.Error(err))
		default:
			log.Warn("Watching pods failed; retrying", zap.Error(err))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	return &PodInformer{nodeName: nodeName, factory: factory, informer: inf}, nil
}

// Start lists and watches pods in the background until ctx is done.
func (p *PodInformer) Start(ctx context.Context) {
	p.factory.StartWithContext(ctx)
}

// WaitForSync waits until the first list is in memory. It returns false if
// ctx ends first.
func (p *PodInformer) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced)
}

// PodByUID implements netns.PodSource.
func (p *PodInformer) PodByUID(uid string) (netns.PodInfo, bool) {
	objs, err := p.informer.GetIndexer().ByIndex(uidIndex, uid)
	if err != nil {
		return netns.PodInfo{}, false
	}
	for _, obj := range objs {
		pod, ok := obj.(*corev1.Pod)
		// The API server applies the field selector; fakes may not.
		if !ok || pod.Spec.NodeName != p.nodeName {
			continue
		}
		return netns.PodInfo{
			Name:        pod.Name,
			Namespace:   pod.Namespace,
			Labels:      maps.Clone(pod.Labels),
			HostNetwork: pod.Spec.HostNetwork,
		}, true
	}
	return netns.PodInfo{}, false
}

func podUIDs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	uids := []string{string(pod.UID)}
	if hash := pod.Annotations[corev1.MirrorPodAnnotationKey]; hash != "" && hash != string(pod.UID) {
		uids = append(uids, hash)
	}
	return uids, nil
}

// trimPod keeps only what PodByUID needs, to save memory.
func trimPod(obj any, allow map[string]bool) any {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj
	}
	t := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            pod.Name,
			Namespace:       pod.Namespace,
			UID:             pod.UID,
			ResourceVersion: pod.ResourceVersion,
		},
		Spec: corev1.PodSpec{NodeName: pod.Spec.NodeName, HostNetwork: pod.Spec.HostNetwork},
	}
	for k, v := range pod.Labels {
		if allow[k] {
			if t.Labels == nil {
				t.Labels = make(map[string]string)
			}
			t.Labels[k] = v
		}
	}
	if hash, ok := pod.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		t.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: hash}
	}
	return t
}
