package agentspec

import (
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/connfleet"
)

// Helpers of the connection rebalancer's scenarios (test/nftnetns,
// test/ipvsvm) and benchmark (test/rebalancebench): annotated Services,
// the agent's /metrics, and test/connfleet clients on a Topology.

// RebalanceAnnotations are the annotations of a Service opted in to
// rebalancing with these knobs, in a dry run when dryRun.
func RebalanceAnnotations(tolerance, maxResets float64, minAge time.Duration, dryRun bool) map[string]string {
	ann := map[string]string{
		dataplane.AnnotationRebalance:          "true",
		dataplane.AnnotationRebalanceTolerance: strconv.FormatFloat(tolerance, 'f', -1, 64),
		dataplane.AnnotationRebalanceMaxResets: strconv.FormatFloat(maxResets, 'f', -1, 64),
		dataplane.AnnotationRebalanceMinAge:    minAge.String(),
	}
	if dryRun {
		ann[dataplane.AnnotationRebalanceDryRun] = "true"
	}
	return ann
}

// WriteAnnotated writes s (its Service and EndpointSlice, as WriteService
// does) with annotations on the Service; without annotations it is
// WriteService.
func (a *Agent) WriteAnnotated(s Service, ann map[string]string) {
	a.t.Helper()
	if len(ann) == 0 {
		a.WriteService(s)
		return
	}
	if s.Scheduler != "" {
		a.t.Fatal("WriteAnnotated: the Service already has an annotations block (Scheduler)")
	}
	head := fmt.Sprintf("kind: Service\nmetadata:\n  name: %s\n  namespace: %s\n", s.Name, Namespace)
	doc := s.YAML()
	if strings.Count(doc, head) != 1 {
		a.t.Fatalf("WriteAnnotated: no Service metadata %q in:\n%s", head, doc)
	}
	var b strings.Builder
	b.WriteString(head + "  annotations:\n")
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		fmt.Fprintf(&b, "    %s: %q\n", k, ann[k])
	}
	a.Write(s.Name+".yaml", strings.Replace(doc, head, b.String(), 1))
}

// PortName is the Service port's name as the agent's metrics label it.
func PortName(s Service) string {
	return Namespace + "/" + s.Name + ":p/" + strings.ToLower(s.Proto())
}

// Metrics is the agent's /metrics (its default address), read from the
// node's namespace.
func (e *Env) Metrics() (string, error) {
	code, body, err := httpGet(e.Node, "127.0.0.1:10249", "/metrics")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("HTTP %d", code)
	}
	return body, err
}

// MustMetrics is Metrics failing the test on error.
func (e *Env) MustMetrics(t *testing.T) string {
	t.Helper()
	text, err := e.Metrics()
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return text
}

// Sample is the value of the series (name{labels}, exact) in metrics
// text, and whether it is there.
func Sample(text, series string) (float64, bool) {
	return metricValue(text, regexp.QuoteMeta(series))
}

// RebalanceSeries are the switchyard_rebalance_* samples of a Service
// port (PortName) in metrics text.
func RebalanceSeries(text, port string) []string {
	rx := regexp.MustCompile(`(?m)^switchyard_rebalance_\w+\{[^}]*service="` + regexp.QuoteMeta(port) + `"[^}]*\} \S+$`)
	return rx.FindAllString(text, -1)
}

// RebalanceMetric is one switchyard_rebalance_* sample of a Service port
// (labels besides service as `k="v",` in Prometheus order), 0 when
// absent.
func RebalanceMetric(text, name, labels, port string) (float64, bool) {
	return Sample(text, fmt.Sprintf(`switchyard_rebalance_%s{%sservice="%s"}`, name, labels, port))
}

// WaitRebalanceRounds waits (up to timeout) until the rebalancer has
// counted n more rounds of outcome for port than from.
func (a *Agent) WaitRebalanceRounds(port, outcome string, from float64, n int, timeout time.Duration) {
	a.t.Helper()
	a.Eventually(fmt.Sprintf("%d more rebalancer rounds %q of %s", n, outcome, port), timeout, func() (bool, string) {
		text, err := a.env.Metrics()
		if err != nil {
			return false, err.Error()
		}
		got, _ := RebalanceMetric(text, "rounds_total", `outcome="`+outcome+`",`, port)
		return got >= from+float64(n), fmt.Sprintf("%v rounds (from %v); series: %v", got, from, RebalanceSeries(text, port))
	})
}

// SourceCheck checks the source a backend saw on a client's connection
// (local: the connection's own address).
type SourceCheck func(be Backend, local, seen netip.AddrPort) error

// MasqueradedSource: the client is outside --cluster-cidr and the
// dataplane masquerades it: the backend sees the node's address on its
// link.
func MasqueradedSource(be Backend, _, seen netip.AddrPort) error {
	if seen.Addr() != Masqueraded(be) {
		return fmt.Errorf("%s saw source %s, want the node's %s (masqueraded)", be.ID, seen, Masqueraded(be))
	}
	return nil
}

// TranslatedSource: the socket load balancer connected the client's
// socket straight to the backend, which sees the socket's own address.
func TranslatedSource(be Backend, local, seen netip.AddrPort) error {
	if seen != local {
		return fmt.Errorf("%s saw source %s, want the client's own %s (translated)", be.ID, seen, local)
	}
	return nil
}

// BackendIDs are the backends' IDs, in their order.
func BackendIDs(bes []Backend) []string {
	ids := make([]string, len(bes))
	for i, be := range bes {
		ids[i] = be.ID
	}
	return ids
}

// NewFleet makes the clients (test/connfleet) of Service s from the
// topology's client namespace: cfg gives the name and the knobs; any of
// the topology's backends may be reported, those of s may answer (Allow
// more before a scale-up), and every answer must come with the source
// source expects. t.Cleanup stops them.
func NewFleet(t *testing.T, cfg connfleet.Config, topo *Topology, s Service, source SourceCheck) *connfleet.Fleet {
	t.Helper()
	cfg.NS, cfg.Addr, cfg.Backends = topo.Client, s.Addr(), BackendIDs(topo.Backends)
	cfg.CheckSource = func(id string, local, seen netip.AddrPort) error {
		be, ok := topo.Backend(id)
		if !ok {
			return fmt.Errorf("no backend %q in the topology", id)
		}
		return source(be, local, seen)
	}
	f, err := connfleet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	Allow(t, f, s.Backends)
	return f
}

// Allow lets bes answer f's clients (call it before they are written).
func Allow(t *testing.T, f *connfleet.Fleet, bes []Backend) {
	t.Helper()
	if err := f.Allow(BackendIDs(bes)...); err != nil {
		t.Fatal(err)
	}
}

// Establish opens n connections of f spread exactly evenly over bes.
func Establish(t *testing.T, f *connfleet.Fleet, n int, bes []Backend) {
	t.Helper()
	if err := f.Establish(n, BackendIDs(bes)); err != nil {
		t.Fatal(err)
	}
}
