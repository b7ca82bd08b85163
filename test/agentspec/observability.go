package agentspec

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// FeatureConnectionMetrics: per-backend connection counts
// (switchyard_backend_connections) come from the dataplane's counters.
const FeatureConnectionMetrics Feature = "connection-metrics"

// FeatureTrafficMetrics: per-backend and per-frontend bytes and packets
// (switchyard_backend_bytes_total, ...) come from the dataplane's counters.
const FeatureTrafficMetrics Feature = "traffic-metrics"

// httpGet fetches http://addr/path from ns (nil = this process's
// namespace), bounded by 5 s.
func httpGet(ns *netnstest.NS, addr, path string) (int, string, error) {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
				return netnstest.Dial(ns, network, addr, 3*time.Second)
			},
		},
	}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metricValue returns the value of the first sample of /metrics text
// matching the series regexp (name and labels), and whether there is one.
func metricValue(body, series string) (float64, bool) {
	rx := regexp.MustCompile(`(?m)^` + series + ` (\S+)$`)
	m := rx.FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// metricSum returns the sum of every sample of /metrics text matching the
// series regexp, and how many matched.
func metricSum(body, series string) (float64, int) {
	rx := regexp.MustCompile(`(?m)^` + series + ` (\S+)$`)
	sum, n := 0.0, 0
	for _, m := range rx.FindAllStringSubmatch(body, -1) {
		if v, err := strconv.ParseFloat(m[1], 64); err == nil {
			sum += v
			n++
		}
	}
	return sum, n
}

// driftRepairs is switchyard_drift_repairs_total summed over the
// dataplane parts, read from the agent's default metrics address in the
// node's namespace.
func driftRepairs(env *Env) (float64, error) {
	code, body, err := httpGet(env.Node, "127.0.0.1:10249", "/metrics")
	if err != nil {
		return 0, err
	}
	sum, n := metricSum(body, `switchyard_drift_repairs_total\{dataplane="[^"]*"\}`)
	if code != http.StatusOK || n == 0 {
		return 0, fmt.Errorf("HTTP %d, %d switchyard_drift_repairs_total series", code, n)
	}
	return sum, nil
}

// Observability: the agent serves /healthz and /livez (kube-proxy's JSON,
// 200 once synced) and Prometheus metrics on its default addresses in the
// node's namespace: the sync and change metrics after real syncs, the
// dataplane in use, an open connection on the backend it reached (backend
// connections and conntrack entries), and, where the dataplane counts
// traffic, the connection's bytes and packets.
func Observability(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: ip("10.96.0.60"), Port: 80, Backends: topo.Backends}
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)

	a.Eventually("/healthz 200 with nodeEligible", Deadline, func() (bool, string) {
		code, body, err := httpGet(env.Node, "127.0.0.1:10256", "/healthz")
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK && strings.Contains(body, `"nodeEligible": true`) && !strings.Contains(body, `"lastUpdated": "0001-`),
			fmt.Sprintf("HTTP %d %s", code, body)
	})
	if code, body, err := httpGet(env.Node, "127.0.0.1:10256", "/livez"); err != nil || code != http.StatusOK {
		t.Errorf("/livez: HTTP %d %q %v", code, body, err)
	}

	var body string
	a.Eventually("metrics after the first sync", Deadline, func() (bool, string) {
		code, b, err := httpGet(env.Node, "127.0.0.1:10249", "/metrics")
		if err != nil {
			return false, err.Error()
		}
		body = b
		n, ok := metricValue(body, `kubeproxy_sync_full_proxy_rules_duration_seconds_count`)
		return code == http.StatusOK && ok && n >= 1, fmt.Sprintf("HTTP %d, full syncs %v", code, n)
	})
	for _, series := range []string{
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
		`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`,
		`kubeproxy_sync_proxy_rules_service_changes_total`,
		`kubeproxy_sync_proxy_rules_endpoint_changes_total`,
		`switchyard_service_ports`,
		`switchyard_dataplane_info\{dataplane="[^"]*` + regexp.QuoteMeta(env.DP.Name()) + `[^"]*"\}`,
	} {
		if v, ok := metricValue(body, series); !ok || v <= 0 {
			t.Errorf("metric %s: %v (present %v), want > 0", series, v, ok)
		}
	}

	// An open connection shows on its backend: with IPVS once a full
	// resync (every 2 s here, slower in the VM) read the kernel, the change
	// nudging the loop along; on every dataplane in conntrack, listed by
	// the metrics refresher (every 1 s here). Without IPVS counters
	// (FeatureConnectionMetrics), the backend connections come from that
	// listing too.
	backend, _ := HoldConnection(t, topo, topo.Client, web.Addr())
	a.WriteService(web, Service{Name: "nudge", ClusterIP: ip("10.96.0.61"), Port: 80, Backends: topo.Backends[:1]})
	be := regexp.QuoteMeta(netip.AddrPortFrom(backend.Addr, TargetPort).String())
	fe := regexp.QuoteMeta(web.Addr() + "/TCP")
	ns := regexp.QuoteMeta(Namespace)
	held := []string{
		fmt.Sprintf(`switchyard_backend_connections\{backend="%s",frontend="%s",service="[^"]*",state="active"\}`, be, fe),
		fmt.Sprintf(`switchyard_backend_conntrack_entries\{backend="%s",frontend="%s",service="%s/web[^"]*",state="ESTABLISHED"\}`, be, fe, ns),
		fmt.Sprintf(`switchyard_conntrack_entries\{service="%s/web[^"]*",state="ESTABLISHED"\}`, ns),
	}
	a.Eventually("the open connection in the backend and conntrack metrics", Deadline, func() (bool, string) {
		_, b, err := httpGet(env.Node, "127.0.0.1:10249", "/metrics")
		if err != nil {
			return false, err.Error()
		}
		for _, s := range held {
			if v, ok := metricValue(b, s); !ok || v != 1 {
				return false, fmt.Sprintf("%s = %v (present %v), want 1", s, v, ok)
			}
		}
		return true, ""
	})

	if !env.DP.Supports(FeatureTrafficMetrics) {
		return
	}
	// The held connection's request and reply, in the counters of its
	// backend and of the frontend, once the refresher (every 1 s here)
	// read them; the kernel updates byte and packet counters every ~2 s.
	var traffic []string
	for _, dir := range []string{"in", "out"} {
		traffic = append(traffic,
			fmt.Sprintf(`switchyard_backend_bytes_total\{backend="%s",direction="%s",frontend="%s",service="%s/web[^"]*"\}`, be, dir, fe, ns),
			fmt.Sprintf(`switchyard_backend_packets_total\{backend="%s",direction="%s",frontend="%s",service="%s/web[^"]*"\}`, be, dir, fe, ns),
			fmt.Sprintf(`switchyard_service_bytes_total\{direction="%s",frontend="%s",service="%s/web[^"]*"\}`, dir, fe, ns),
			fmt.Sprintf(`switchyard_service_packets_total\{direction="%s",frontend="%s",service="%s/web[^"]*"\}`, dir, fe, ns))
	}
	a.Eventually("the held connection's traffic in the byte and packet counters", Deadline, func() (bool, string) {
		_, b, err := httpGet(env.Node, "127.0.0.1:10249", "/metrics")
		if err != nil {
			return false, err.Error()
		}
		for _, s := range traffic {
			if v, ok := metricValue(b, s); !ok || v <= 0 {
				return false, fmt.Sprintf("%s = %v (present %v)", s, v, ok)
			}
		}
		return true, ""
	})
}
