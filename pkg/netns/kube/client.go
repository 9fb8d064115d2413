package kube

import (
	"errors"
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// NodeNameEnv is the environment variable that NodeName reads; set it from
// the downward API (fieldRef: spec.nodeName).
const NodeNameEnv = "NODE_NAME"

// NewClient returns a Kubernetes client from the kubeconfig file if one is
// given, else from the in-cluster service account. Outside a cluster and with
// no kubeconfig it returns nil and no error: pods are then simply not named.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "ctagent"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// NodeName returns flagValue if set, else $NODE_NAME.
func NodeName(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return os.Getenv(NodeNameEnv)
}
