package source

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
)

const (
	// Protobuf is cheaper to decode than JSON for the large, frequent
	// EndpointSlice updates of big clusters; kube-proxy uses the same. JSON
	// stays acceptable for resources that have no protobuf encoding.
	contentType        = "application/vnd.kubernetes.protobuf"
	acceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"

	// The agent only lists and watches (three of each at startup and after
	// a watch expires), so kube-proxy's small defaults leave headroom while
	// keeping thousands of nodes from overwhelming the API server on a
	// simultaneous restart.
	clientQPS   = 5
	clientBurst = 10

	userAgent = "switchyard"
)

// ClientFromFlags builds an API client from --kubeconfig and --master:
// the kubeconfig file (if given) with master overriding its server (if
// given), else the in-cluster service account configuration.
func ClientFromFlags(kubeconfig, master string) (kubernetes.Interface, error) {
	cfg, err := restConfigFromFlags(kubeconfig, master)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating kubernetes client: %w", err)
	}
	return client, nil
}

func restConfigFromFlags(kubeconfig, master string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" && master == "" {
		klog.InfoS("Neither --kubeconfig nor --master given, using the in-cluster configuration")
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("no --kubeconfig or --master given and not running in a pod (KUBERNETES_SERVICE_HOST/PORT unset); use --kubeconfig, or --manifests for standalone mode: %w", err)
		}
		if err != nil {
			return nil, fmt.Errorf("loading in-cluster configuration: %w", err)
		}
	} else {
		// ExplicitPath, unlike the default loading rules, makes a missing
		// file an error instead of silently falling back to ~/.kube/config.
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: master}},
		).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig %q (master %q): %w", kubeconfig, master, err)
		}
	}
	cfg.ContentType = contentType
	cfg.AcceptContentTypes = acceptContentTypes
	cfg.QPS = clientQPS
	cfg.Burst = clientBurst
	return rest.AddUserAgent(cfg, userAgent), nil
}
