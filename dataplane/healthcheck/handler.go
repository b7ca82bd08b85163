package healthcheck

import (
	"encoding/json"
	"net/http"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// response is the body kube-proxy serves; load balancers look only at the
// status code, people and scripts at the body.
type response struct {
	Service             serviceRef `json:"service"`
	LocalEndpoints      int        `json:"localEndpoints"`
	ServiceProxyHealthy bool       `json:"serviceProxyHealthy"`
}

type serviceRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// handler answers every method and path for svc, as kube-proxy does.
func (s *ServiceHealthServer) handler(svc *hcService) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeResponse(w, svc.name, int(svc.endpoints.Load()), s.proxyHealthy())
	})
}

// writeResponse writes 200 when the node has local endpoints and the proxy
// is healthy, 503 otherwise, with kube-proxy's tab-indented JSON body
// (no trailing newline).
func writeResponse(w http.ResponseWriter, name dataplane.ServiceName, localEndpoints int, proxyHealthy bool) {
	body, err := json.MarshalIndent(response{
		Service:             serviceRef{Namespace: name.Namespace, Name: name.Name},
		LocalEndpoints:      localEndpoints,
		ServiceProxyHealthy: proxyHealthy,
	}, "", "\t")
	if err != nil { // cannot happen: strings, an int and a bool
		klog.ErrorS(err, "Encoding health check response", "service", name)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if localEndpoints > 0 && proxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write(body)
}
