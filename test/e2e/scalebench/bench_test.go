package scalebench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard/switchyard/test/cluster/controlplane"
)

// namespace holds the benchmark's objects.
const namespace = "bench"

// endpointPort is every endpoint's port (the Services' targetPort).
const endpointPort = 8080

// Bounds: a cold sync, one change, the whole test (see the Makefile's
// -timeout).
const (
	coldDeadline   = 15 * time.Minute
	changeDeadline = 60 * time.Second
)

// TestScaleBench is `make bench-scale` (see the package doc and
// docs/benchmarks.md).
func TestScaleBench(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	var scales []int
	for _, s := range strings.Split(*scalesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 60000 {
			t.Fatalf("-scale.services: bad number %q (1 to 60000)", s)
		}
		scales = append(scales, n)
	}
	slices.Sort(scales)
	scales = slices.Compact(scales)
	kinds := strings.Split(*proxiesFlag, ",")
	for _, k := range kinds {
		if k != Switchyard && k != KPNFT && k != KPIPT {
			t.Fatalf("-scale.proxies: unknown %q", k)
		}
	}

	cp := controlplane.StartT(t, controlplane.Options{
		Binaries: bins,
		// Parallel writers and three proxies' lists of tens of
		// thousands of objects: lift the default in-flight caps.
		APIServerArgs: []string{"--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000"},
	})
	cfg := cp.AdminConfig()
	cfg.QPS, cfg.Burst = -1, 1000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.CreateNode(ctx, nodeName, "192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	w := &world{c: client, slices: make([]*discoveryv1.EndpointSlice, scales[len(scales)-1]), eps: *epsFlag}

	var results []*Scale
	var report strings.Builder
	for _, n := range scales {
		res := &Scale{Services: n, Endpoints: w.eps}
		ok := t.Run(strconv.Itoa(n), func(t *testing.T) { runScale(t, cp, w, res, kinds) })
		if len(res.Proxies) > 0 {
			results = append(results, res)
			var b strings.Builder
			res.WriteMarkdown(&b)
			fmt.Printf("\n%s", b.String())
			report.WriteString(b.String())
		}
		if !ok {
			break
		}
	}
	if *mdFlag != "" {
		if err := os.WriteFile(*mdFlag, []byte(report.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	if *pngFlag != "" && len(results) > 0 {
		if err := WritePNG(*pngFlag, results); err != nil {
			t.Errorf("png: %v", err)
		} else {
			t.Logf("chart written to %s", *pngFlag)
		}
	}
}

// world is the API objects: Service i is bench/svc-i with ClusterIP
// clusterIP(i), port "p" 80/TCP, and one EndpointSlice with w.eps ready
// endpoints on port 8080.
type world struct {
	c      kubernetes.Interface
	eps    int
	have   int
	slices []*discoveryv1.EndpointSlice // by Service; the last written
	nextIP atomic.Uint32
	// lastChanged and lastEndpointChanged: the last churn change's
	// Service and new endpoint; resumedAt when the paused proxies were
	// resumed.
	lastChanged         int
	lastEndpointChanged netip.AddrPort
	resumedAt           time.Time
}

func svcName(i int) string    { return fmt.Sprintf("svc-%05d", i) }
func svcKey(i int) string     { return namespace + "/" + svcName(i) }
func clusterIP(i int) string  { x := i + 256; return fmt.Sprintf("10.96.%d.%d", x>>8, x&255) }
func endpointIP(x int) string { return fmt.Sprintf("10.%d.%d.%d", 128+x>>16, (x>>8)&255, x&255) }

// freshIP is an endpoint address never used before (10.200.0.0/13).
func (w *world) freshIP() string {
	x := int(w.nextIP.Add(1))
	return fmt.Sprintf("10.%d.%d.%d", 200+x>>16, (x>>8)&255, x&255)
}

// grow writes Services and EndpointSlices w.have..n-1 with parallel
// workers.
func (w *world) grow(ctx context.Context, n int) error {
	const workers = 32
	idx := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := w.create(ctx, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := w.have; i < n; i++ {
		select {
		case idx <- i:
		case err = <-errs:
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err == nil {
		w.have = n
	}
	return err
}

func (w *world) create(ctx context.Context, i int) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName(i), Namespace: namespace},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: clusterIP(i),
			Ports:     []corev1.ServicePort{{Name: "p", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(endpointPort)}},
		},
	}
	if _, err := w.c.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %d: %w", i, err)
	}
	eps := make([]discoveryv1.Endpoint, w.eps)
	for j := range eps {
		eps[j] = discoveryv1.Endpoint{
			Addresses:  []string{endpointIP(i*w.eps + j)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
		}
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svcName(i) + "-1", Namespace: namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName(i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("p"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(endpointPort))}},
		Endpoints:   eps,
	}
	got, err := w.c.DiscoveryV1().EndpointSlices(namespace).Create(ctx, sl, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create EndpointSlice %d: %w", i, err)
	}
	w.slices[i] = got
	return nil
}

func ptr[T any](v T) *T { return &v }

// lastEndpoint is Service i's last endpoint as the API has it.
func (w *world) lastEndpoint(i int) netip.AddrPort {
	eps := w.slices[i].Endpoints
	return netip.AddrPortFrom(netip.MustParseAddr(eps[len(eps)-1].Addresses[0]), endpointPort)
}

// change replaces one endpoint address of Service i (endpoint j) with a
// fresh one; at is just before the update was sent. Callers never change
// one Service concurrently.
func (w *world) change(ctx context.Context, i, j int) (ep netip.AddrPort, at time.Time, err error) {
	sl := w.slices[i].DeepCopy()
	ip := w.freshIP()
	sl.Endpoints[j].Addresses = []string{ip}
	at = time.Now()
	got, err := w.c.DiscoveryV1().EndpointSlices(namespace).Update(ctx, sl, metav1.UpdateOptions{})
	if err != nil {
		return ep, at, fmt.Errorf("update EndpointSlice of %s: %w", svcName(i), err)
	}
	w.slices[i] = got
	return netip.AddrPortFrom(netip.MustParseAddr(ip), endpointPort), at, nil
}

// runScale grows the objects to res.Services, starts each proxy cold in
// turn (one at a time: they would otherwise share the 2 cores), then with
// all of them running measures idle CPU, single-change latency and churn.
func runScale(t *testing.T, cp *controlplane.ControlPlane, w *world, res *Scale, kinds []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	defer cancel()
	n := res.Services
	logf := func(format string, args ...any) {
		t.Logf("%s %s", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}

	began, from := time.Now(), w.have
	if err := w.grow(ctx, n); err != nil {
		t.Fatal(err)
	}
	res.Create, res.Created = time.Since(began), n-from
	logf("%d Services and EndpointSlices written in %s", n-from, res.Create.Round(time.Millisecond))

	last, lastEP := svcKey(n-1), w.lastEndpoint(n-1)
	var ps []*proxy
	var rs []*Proxy
	for _, kind := range kinds {
		if kind == KPIPT && n > *iptMaxFlag {
			logf("%s left out at %d Services (-scale.iptables-max %d)", kind, n, *iptMaxFlag)
			continue
		}
		r := &Proxy{Name: kind}
		res.Proxies = append(res.Proxies, r)
		p := startProxy(t, cp, kind)
		hctx, hcancel := context.WithCancel(ctx)
		hdone := make(chan struct{})
		go func() {
			defer close(hdone)
			for hctx.Err() == nil {
				if p.healthy() {
					r.Healthz = time.Since(p.Started)
					return
				}
				select {
				case <-hctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		cctx, ccancel := context.WithTimeout(ctx, coldDeadline)
		at, err := p.waitProgrammed(cctx, last, lastEP, 10*time.Millisecond)
		ccancel()
		if err != nil {
			hcancel()
			<-hdone
			r.Err = "cold sync: " + err.Error()
			t.Errorf("%s: %v", kind, err)
			p.Stop()
			continue
		}
		r.Cold = at.Sub(p.Started)
		select {
		case <-hdone:
		case <-time.After(10 * time.Second):
		}
		hcancel()
		<-hdone
		settled := settle(p, 60*time.Second)
		r.RSSSynced, _ = p.mem()
		logf("%s: cold sync %s (healthz %s), settled after %s more, RSS %d MiB", kind,
			r.Cold.Round(time.Millisecond), r.Healthz.Round(time.Millisecond), settled.Round(time.Second), r.RSSSynced>>20)
		ps, rs = append(ps, p), append(rs, r)
	}
	if len(ps) == 0 {
		t.Fatal("no proxy synced")
	}

	// Idle: nothing changes.
	c0 := cpus(ps)
	time.Sleep(*idleFlag)
	res.Idle = *idleFlag
	for k, c := range cpus(ps) {
		rs[k].CPUIdle = c - c0[k]
	}
	logf("idle CPU measured over %s", res.Idle)

	// Each proxy alone for the changes and the churn: the others are
	// stopped (SIGSTOP to their process groups, kube-proxy's nft and
	// iptables-restore children included), so none waits for a core
	// another one's sync holds (2 cores; kube-proxy iptables at 10k spends
	// about a second per change), then resumed and given time to catch up.
	rnd := rand.New(rand.NewPCG(uint64(n), 1))
	res.Churn = *churnFlag
	for k, p := range ps {
		var others []*proxy
		for o, q := range ps {
			if o != k {
				others = append(others, q)
			}
		}
		signal(others, syscall.SIGSTOP)
		measure(ctx, t, w, n, p, rs[k], res, rnd, logf)
		signal(others, syscall.SIGCONT)
		// The resumed ones catch up with what they missed (not measured).
		last := w.lastChanged
		var wg sync.WaitGroup
		for _, q := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Minute)
				defer dcancel()
				at, err := q.waitProgrammed(dctx, svcKey(last), w.lastEndpointChanged, 10*time.Millisecond)
				if err != nil {
					t.Errorf("%s did not catch up after being resumed: %v", q.kind, err)
					return
				}
				logf("%s caught up %s after being resumed", q.kind, at.Sub(w.resumedAt).Round(time.Millisecond))
			}()
		}
		w.resumedAt = time.Now()
		wg.Wait()
		for _, q := range others {
			settle(q, 30*time.Second)
		}
	}
	for k, p := range ps {
		rs[k].RSSEnd, rs[k].RSSPeak = p.mem()
		if p.Exited() {
			t.Errorf("%s exited during the run: %s", p.kind, p.LogTail(20))
		}
	}
}

// signal sends sig to each proxy's process group.
func signal(ps []*proxy, sig syscall.Signal) {
	for _, p := range ps {
		_ = syscall.Kill(-p.Pid(), sig)
	}
}

// measure runs the single changes and the churn with p the only proxy
// running.
func measure(ctx context.Context, t *testing.T, w *world, n int, p *proxy, r *Proxy, res *Scale, rnd *rand.Rand, logf func(string, ...any)) {
	// Single changes, spaced: the pause after each exceeds the default
	// --min-sync-period (1 s) of every proxy, so no change waits for the
	// previous one's rate limit.
	for s := range *samplesFlag {
		i, j := rnd.IntN(n), rnd.IntN(w.eps)
		ep, at, err := w.change(ctx, i, j)
		if err != nil {
			t.Fatal(err)
		}
		dctx, dcancel := context.WithDeadline(ctx, at.Add(changeDeadline))
		seen, err := p.waitProgrammed(dctx, svcKey(i), ep, 2*time.Millisecond)
		dcancel()
		if err != nil {
			r.Missed++
			t.Logf("change %d: %v", s, err)
		} else {
			r.Latencies = append(r.Latencies, seen.Sub(at))
		}
		time.Sleep(1200 * time.Millisecond)
	}
	logf("%s: %d single changes: p50 %s, p99 %s", p.kind, *samplesFlag,
		r.Percentile(0.5).Round(10*time.Microsecond), r.Percentile(0.99).Round(10*time.Microsecond))

	// Churn: -scale.churn-rate changes per second to random Services, by
	// a few writers (never two on one Service at once).
	var c0 time.Duration
	lastSvc, lastEP, churnEnd, count := churn(ctx, t, w, n, *rateFlag, *churnFlag, rnd,
		func() { c0 = p.cpu() }, func() { r.CPUChurn = p.cpu() - c0 })
	res.ChurnChanges = max(res.ChurnChanges, count)
	w.lastChanged, w.lastEndpointChanged = lastSvc, lastEP
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Minute)
	defer dcancel()
	seen, err := p.waitProgrammed(dctx, svcKey(lastSvc), lastEP, 2*time.Millisecond)
	if err != nil {
		r.Err = "after churn: " + err.Error()
		t.Errorf("after churn: %v", err)
		return
	}
	r.CatchUp = max(0, seen.Sub(churnEnd))
	logf("%s: churn %d changes in %s, CPU %s, last change in the kernel %s after the churn", p.kind, count, *churnFlag,
		r.CPUChurn, r.CatchUp.Round(time.Millisecond))
}

// settle waits until p uses under 5% of a core over a second (its
// post-sync work done), at most limit; it returns how long it waited.
func settle(p *proxy, limit time.Duration) time.Duration {
	began := time.Now()
	for time.Since(began) < limit {
		c := p.cpu()
		time.Sleep(time.Second)
		if p.cpu()-c < 50*time.Millisecond {
			break
		}
	}
	return time.Since(began)
}

func cpus(ps []*proxy) []time.Duration {
	out := make([]time.Duration, len(ps))
	for k, p := range ps {
		out[k] = p.cpu()
	}
	return out
}

// churn writes rate endpoint changes per second to random Services for d;
// start and stop run at the window's ends. It returns the last change
// written (Service, new endpoint), when its update returned, and the
// number of changes.
func churn(ctx context.Context, t *testing.T, w *world, n, rate int, d time.Duration, rnd *rand.Rand,
	start, stop func()) (lastSvc int, lastEP netip.AddrPort, lastAt time.Time, count int) {
	const writers = 8
	type job struct{ i, j int }
	jobs := make(chan job, rate)
	var mu sync.Mutex
	busy := map[int]bool{}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for jb := range jobs {
				ep, _, err := w.change(ctx, jb.i, jb.j)
				done := time.Now()
				mu.Lock()
				delete(busy, jb.i)
				if err == nil {
					count++
					if done.After(lastAt) {
						lastSvc, lastEP, lastAt = jb.i, ep, done
					}
				} else if failed.Add(1) <= 3 {
					t.Logf("churn: %v", err)
				}
				mu.Unlock()
			}
		}()
	}
	start()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.After(d)
loop:
	for {
		select {
		case <-end:
			break loop
		case <-tick.C:
			mu.Lock()
			i := rnd.IntN(n)
			for busy[i] {
				i = rnd.IntN(n)
			}
			busy[i] = true
			mu.Unlock()
			select {
			case jobs <- job{i, rnd.IntN(w.eps)}:
			default:
				// Writers behind: skip this tick.
				mu.Lock()
				delete(busy, i)
				mu.Unlock()
			}
		}
	}
	tick.Stop()
	stop()
	close(jobs)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Errorf("churn: %d updates failed", f)
	}
	return lastSvc, lastEP, lastAt, count
}
