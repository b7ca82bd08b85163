package ipvsvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/vm"
)

// The IPVS side of the agent spec (agentspec.Dataplane and
// agentspec.IPVS): the node is the VM's root namespace, the agent picks
// the IPVS dataplane by itself (--dataplane auto: the VM's kernel has
// IPVS), and everything is read back with netlink (IPVS, links) and the
// iptables and ipset binaries.

// ipvsDataplane is one scenario's IPVS hooks.
type ipvsDataplane struct {
	// baselineVS are the virtual servers present before the scenario (other
	// tests' leftovers would otherwise be blamed on the agent); foreignVS
	// are those the scenario made itself.
	baselineVS map[ipvs.Key]bool
	foreignVS  map[ipvs.Key]bool
	// env is the scenario's Env (its NodeIPs decide the firewall's
	// SOURCE-IP set).
	env *agentspec.Env
}

var (
	_ agentspec.Dataplane = (*ipvsDataplane)(nil)
	_ agentspec.IPVS      = (*ipvsDataplane)(nil)
)

// newIPVSEnv is the Env for one scenario. Call it at the scenario's start.
func newIPVSEnv(t *testing.T) *agentspec.Env {
	t.Helper()
	if _, err := os.Stat(vm.AgentPath); err != nil {
		t.Skipf("agent binary not in the VM (vmtest -agent=): %v", err)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables not in the VM (vmtest -no-host-bins)")
	}
	dp := &ipvsDataplane{baselineVS: map[ipvs.Key]bool{}, foreignVS: map[ipvs.Key]bool{}}
	for _, vs := range listVS(t) {
		dp.baselineVS[vs.Key] = true
	}
	dp.env = &agentspec.Env{DP: dp, AgentPath: vm.AgentPath, Node: nil, NodeName: "vm"}
	return dp.env
}

func (*ipvsDataplane) Name() string         { return "ipvs" }
func (*ipvsDataplane) StartParts() []string { return []string{"iptables", "ipvs"} }
func (*ipvsDataplane) Args() []string       { return nil }

func (*ipvsDataplane) Supports(f agentspec.Feature) bool {
	switch f {
	case agentspec.FeatureRoundRobin, agentspec.FeatureIPVSScheduler, agentspec.FeatureGracefulDrain,
		agentspec.FeatureConnectionMetrics, agentspec.FeatureTrafficMetrics:
		return true
	}
	return false
}

func key(fe agentspec.Frontend) ipvs.Key {
	return ipvs.Key{IP: fe.Addr, Protocol: dataplane.Protocol(fe.Protocol), Port: fe.Port}
}

// wantRealServers is what frontend fe of s should have on node: the
// Backends it serves at weight 1, the Draining ones at 0 (under a Local
// policy only those on node: the others are no real servers at all).
// An external frontend of an externalTrafficPolicy Local Service without
// a backend on node falls back to all of them, as kube-proxy's IPVS mode
// (for the node's and its pods' traffic: the iptables filter drops the
// rest); Draining backends are taken to have served it before.
func wantRealServers(s agentspec.Service, fe agentspec.Frontend, node string) map[netip.AddrPort]int {
	ready, draining := s.Serving(fe, node)
	if s.External(fe) && s.NoLocalEndpoint(node) {
		ready, draining = s.Backends, s.Draining
	}
	m := map[netip.AddrPort]int{}
	for _, ep := range agentspec.Endpoints(ready) {
		m[ep] = 1
	}
	for _, ep := range agentspec.Endpoints(draining) {
		m[ep] = 0
	}
	return m
}

// WaitProgrammed waits for one virtual server per frontend (NodePorts on
// the node's client-side address) with exactly the wanted real servers and
// weights, leaving out keys foreign virtual servers hold, and for the
// firewall sets to filter each load-balancer IP as wanted.
func (d *ipvsDataplane) WaitProgrammed(t *testing.T, a *agentspec.Agent, svcs ...agentspec.Service) {
	t.Helper()
	for _, s := range svcs {
		a.Eventually(fmt.Sprintf("firewall sets for %s (ranges %v)", s.Name, s.LoadBalancerSourceRanges), agentspec.Deadline, func() (bool, string) {
			return d.firewallState(t, s)
		})
		for _, fe := range s.Frontends() {
			if d.foreignVS[key(fe)] {
				continue
			}
			d.WaitRealServers(t, a, fe, wantRealServers(s, fe, a.NodeName()), agentspec.Deadline)
		}
	}
}

func (*ipvsDataplane) WaitRealServers(t *testing.T, a *agentspec.Agent, fe agentspec.Frontend, want map[netip.AddrPort]int, timeout time.Duration) {
	t.Helper()
	k := key(fe)
	a.Eventually(fmt.Sprintf("virtual server %s with real servers %s", k, formatWeights(want)), timeout, func() (bool, string) {
		got, err := realServerWeights(k)
		if err != nil {
			return false, err.Error()
		}
		return maps.Equal(got, want), "have " + formatWeights(got)
	})
}

func (*ipvsDataplane) Scheduler(fe agentspec.Frontend) (string, error) { return scheduler(key(fe)) }

func (*ipvsDataplane) ActiveConns(t *testing.T, fe agentspec.Frontend, rs netip.AddrPort) int {
	t.Helper()
	r, ok := realServers(t, key(fe))[rs]
	if !ok {
		t.Fatalf("no real server %s in %s", rs, key(fe))
	}
	return r.ActiveConns
}

func (*ipvsDataplane) StateFile(a *agentspec.Agent) string {
	return filepath.Join(a.StateDir, ipvs.StateFileName)
}

// Absent: no virtual server of the scenario's agent on any of the
// Service's own addresses, nor on its NodePort on any node address
// (foreign virtual servers aside).
func (d *ipvsDataplane) Absent(t *testing.T, s agentspec.Service) (bool, string) {
	t.Helper()
	addrs := map[netip.Addr]bool{}
	for _, fe := range s.Frontends() {
		if !fe.NodePort {
			addrs[fe.Addr] = true
		}
	}
	var found []string
	for _, vs := range listVS(t) {
		if d.foreignVS[vs.Key] || d.baselineVS[vs.Key] {
			continue
		}
		nodePort := s.NodePort != 0 && vs.Key.Port == s.NodePort && string(vs.Key.Protocol) == s.Proto()
		if addrs[vs.Key.IP] || nodePort {
			found = append(found, vs.Key.String())
		}
	}
	return len(found) == 0, "virtual servers " + strings.Join(found, ", ")
}

// The loadBalancerSourceRanges firewall's sets (package iptables).
const (
	setFW         = "SWITCHYARD-LOAD-BALANCER-FW"
	setSourceCIDR = "SWITCHYARD-LB-SOURCE-CIDR"
	setSourceIP   = "SWITCHYARD-LB-SOURCE-IP"
)

// The no-local-endpoint sets (package iptables): external frontends of
// externalTrafficPolicy Local Services without a local endpoint; the
// NodePort ones end in the protocol.
const (
	setNoLocal         = "SWITCHYARD-NO-LOCAL-ENDPOINT"
	setNoLocalNodePort = "SWITCHYARD-NO-LOCAL-EP-NP-"
)

// firewallMembers are the members s needs in the firewall sets: its
// load-balancer IP and port in FW, with each range in SOURCE-CIDR, and
// with itself in SOURCE-IP when a node IP is inside a range; none
// without ranges. Networks are written as `ipset list` prints them.
func (d *ipvsDataplane) firewallMembers(s agentspec.Service) map[string][]string {
	out := map[string][]string{setFW: nil, setSourceCIDR: nil, setSourceIP: nil}
	if !s.Firewalled() {
		return out
	}
	m := fmt.Sprintf("%s,%s:%d", s.LoadBalancerIP, strings.ToLower(s.Proto()), s.Port)
	out[setFW] = []string{m}
	for _, p := range s.LoadBalancerSourceRanges {
		p = p.Masked()
		if p.IsSingleIP() {
			out[setSourceCIDR] = append(out[setSourceCIDR], m+","+p.Addr().String())
		} else {
			out[setSourceCIDR] = append(out[setSourceCIDR], m+","+p.String())
		}
	}
	if s.AllowFromNode(d.env.NodeIPs) {
		out[setSourceIP] = []string{m + "," + s.LoadBalancerIP.String()}
	}
	return out
}

// firewallState tells whether the firewall sets hold exactly what s needs
// among the members for its load-balancer IP and port (a set the agent
// has not created yet is a "not yet").
func (d *ipvsDataplane) firewallState(t *testing.T, s agentspec.Service) (bool, string) {
	t.Helper()
	if !s.LoadBalancerIP.IsValid() {
		return true, ""
	}
	prefix := fmt.Sprintf("%s,%s:%d", s.LoadBalancerIP, strings.ToLower(s.Proto()), s.Port)
	want := d.firewallMembers(s)
	for _, set := range []string{setFW, setSourceCIDR, setSourceIP} {
		out, err := command("ipset", "list", set)
		if err != nil {
			return false, err.Error()
		}
		_, members, ok := strings.Cut(out, "Members:\n")
		if !ok {
			return false, "ipset list " + set + ": no member list"
		}
		var got []string
		for _, m := range strings.Fields(members) {
			if m == prefix || strings.HasPrefix(m, prefix+",") {
				got = append(got, m)
			}
		}
		slices.Sort(got)
		slices.Sort(want[set])
		if !slices.Equal(got, want[set]) {
			return false, fmt.Sprintf("%s holds %v for %s, want %v", set, got, prefix, want[set])
		}
	}
	return true, ""
}

// CheckKernel: the dummy link holds exactly the Services' addresses, and
// the ipsets the iptables rules match hold exactly their frontends (the
// *-LOCAL ones, which exempt externalTrafficPolicy Local traffic from SNAT,
// exactly the external frontends of Services with that policy; the
// no-local-endpoint ones, whose outside traffic is dropped, exactly those
// of such Services without a backend on the node; the firewall ones
// exactly the load-balancer frontends of Services with
// loadBalancerSourceRanges).
func (d *ipvsDataplane) CheckKernel(t *testing.T, svcs []agentspec.Service) {
	t.Helper()
	var wantAddrs []string
	want := map[string][]string{ // set -> members; NodePort sets: proto:port
		"SWITCHYARD-CLUSTER-IP": nil, "SWITCHYARD-LOAD-BALANCER": nil, "SWITCHYARD-EXTERNAL-IP": nil,
		"SWITCHYARD-NODE-PORT-TCP": nil, "SWITCHYARD-NODE-PORT-UDP": nil,
		"SWITCHYARD-LOAD-BALANCER-LOCAL": nil, "SWITCHYARD-EXTERNAL-IP-LOCAL": nil,
		"SWITCHYARD-NODE-PORT-LOCAL-TCP": nil, "SWITCHYARD-NODE-PORT-LOCAL-UDP": nil,
		setNoLocal: nil, setNoLocalNodePort + "TCP": nil, setNoLocalNodePort + "UDP": nil,
		setFW: nil, setSourceCIDR: nil, setSourceIP: nil,
	}
	// add puts m into set, into its *-LOCAL twin under
	// externalTrafficPolicy Local, and into noLocal without a backend on
	// the node.
	add := func(s agentspec.Service, set, local, noLocal, m string) {
		want[set] = append(want[set], m)
		if s.ExternalLocal {
			want[local] = append(want[local], m)
		}
		if s.NoLocalEndpoint(d.env.NodeName) {
			want[noLocal] = append(want[noLocal], m)
		}
	}
	for _, s := range svcs {
		proto := strings.ToLower(s.Proto())
		member := func(a netip.Addr, port uint16) string { return fmt.Sprintf("%s,%s:%d", a, proto, port) }
		for _, fe := range s.Frontends() {
			if !fe.NodePort {
				wantAddrs = append(wantAddrs, netip.PrefixFrom(fe.Addr, 32).String())
			}
		}
		want["SWITCHYARD-CLUSTER-IP"] = append(want["SWITCHYARD-CLUSTER-IP"], member(s.ClusterIP, s.Port))
		if s.LoadBalancerIP.IsValid() {
			add(s, "SWITCHYARD-LOAD-BALANCER", "SWITCHYARD-LOAD-BALANCER-LOCAL", setNoLocal, member(s.LoadBalancerIP, s.Port))
		}
		for _, ip := range s.ExternalIPs {
			add(s, "SWITCHYARD-EXTERNAL-IP", "SWITCHYARD-EXTERNAL-IP-LOCAL", setNoLocal, member(ip, s.Port))
		}
		if s.NodePort != 0 {
			add(s, "SWITCHYARD-NODE-PORT-"+s.Proto(), "SWITCHYARD-NODE-PORT-LOCAL-"+s.Proto(), setNoLocalNodePort+s.Proto(),
				fmt.Sprintf("%s:%d", proto, s.NodePort))
		}
		for set, ms := range d.firewallMembers(s) {
			want[set] = append(want[set], ms...)
		}
	}
	slices.Sort(wantAddrs)
	wantAddrs = slices.Compact(wantAddrs)
	if addrs, ok := dummyAddrs(t); !ok || strings.Join(addrs, ",") != strings.Join(wantAddrs, ",") {
		t.Errorf("%s addresses %v (present %v), want %v", ipvs.DefaultLinkName, addrs, ok, wantAddrs)
	}
	for _, set := range slices.Sorted(maps.Keys(want)) {
		var got []string
		for _, m := range ipsetMembers(t, set) {
			if strings.HasPrefix(set, "SWITCHYARD-NODE-PORT-") || strings.HasPrefix(set, setNoLocalNodePort) { // LOCAL too
				// 0.0.0.0/1,tcp:30080 and 128.0.0.0/1,tcp:30080: any address.
				_, m, _ = strings.Cut(m, ",")
			}
			got = append(got, m)
		}
		slices.Sort(got)
		got = slices.Compact(got)
		slices.Sort(want[set])
		if !slices.Equal(got, want[set]) {
			t.Errorf("%s holds %v, want %v", set, got, want[set])
		}
	}
}

// ipsetMembers lists a set's members as `ipset list` prints them.
func ipsetMembers(t *testing.T, set string) []string {
	t.Helper()
	_, members, ok := strings.Cut(mustCommand(t, "ipset", "list", set), "Members:\n")
	if !ok {
		t.Fatalf("ipset list %s: no member list", set)
	}
	return strings.Fields(members)
}

// Snapshot renders everything the agent programs (and foreign objects next
// to it) without counters: IPVS virtual and real servers with their
// configuration, the dummy link's addresses, iptables-save and ipset save.
func (*ipvsDataplane) Snapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	vss := listVS(t)
	slices.SortFunc(vss, func(x, y ipvs.VirtualServer) int { return x.Key.Compare(y.Key) })
	for _, vs := range vss {
		fmt.Fprintf(&b, "vs %s %s flags=%#x timeout=%d\n", vs.Key, vs.Scheduler, uint32(vs.Flags), vs.Timeout)
		rss := realServers(t, vs.Key)
		for _, addr := range slices.SortedFunc(maps.Keys(rss), netip.AddrPort.Compare) {
			rs := rss[addr]
			fmt.Fprintf(&b, "  rs %s %s weight=%d\n", addr, rs.Forward, rs.Weight)
		}
	}
	addrs, ok := dummyAddrs(t)
	fmt.Fprintf(&b, "link %s present=%v addrs=%v\n", ipvs.DefaultLinkName, ok, addrs)
	b.WriteString("--- iptables-save\n" + iptablesSave(t) + "\n")
	b.WriteString("--- ipset save\n" + ipsetSave(t) + "\n")
	return b.String()
}

// CheckAdopted: the new agent's first sync logged no write, neither to
// IPVS and the dummy link nor to iptables and ipsets.
func (*ipvsDataplane) CheckAdopted(t *testing.T, when, log string) {
	t.Helper()
	for _, write := range []string{"Added virtual server", "Updated virtual server", "Deleted virtual server",
		"Deleted real server", "Draining real server", "Inserted hook", "Deleted duplicate or stale hook"} {
		if strings.Contains(log, `"`+write+`"`) {
			t.Errorf("%s: the new agent logged %q", when, write)
		}
	}
	m := regexp.MustCompile(`"Synced iptables and ipsets".*`).FindString(log)
	for _, c := range []string{"memberAdds", "memberDels", "setCreates", "setGrows", "ruleWrites", "chainCreates"} {
		if !strings.Contains(m, " "+c+"=0") {
			t.Errorf("%s: first iptables sync wrote something: %s", when, m)
			break
		}
	}
}

// Drift kinds: a virtual server (netlink), an ipset member, a rule in a
// SWITCHYARD chain and a hook rule (iptables binaries), and at once a real
// server, a service address and a whole chain's content.
const (
	driftVirtualServer = "deleted virtual server"
	driftIPSetMember   = "deleted ipset member"
	driftChainRule     = "deleted SWITCHYARD chain rule"
	driftHookRule      = "deleted hook rule"
	driftSeveral       = "deleted real server, service address and chain content"
)

func (*ipvsDataplane) DriftKinds() []string {
	return []string{driftVirtualServer, driftIPSetMember, driftChainRule, driftHookRule, driftSeveral}
}

func (*ipvsDataplane) DeleteSomething(t *testing.T, kind string, web, np agentspec.Service) {
	t.Helper()
	webKey := key(web.Frontends()[0])
	switch kind {
	case driftVirtualServer:
		if err := withHandle(func(h *ipvs.KernelHandle) error { return h.DeleteVirtualServer(webKey) }); err != nil {
			t.Fatal(err)
		}
	case driftIPSetMember:
		mustCommand(t, "ipset", "del", "SWITCHYARD-CLUSTER-IP", fmt.Sprintf("%s,tcp:%d", web.ClusterIP, web.Port))
	case driftChainRule:
		n := ruleNumber(t, "nat", "SWITCHYARD-SERVICES", "cluster IP traffic from outside the cluster CIDR")
		mustCommand(t, "iptables", "-t", "nat", "-D", "SWITCHYARD-SERVICES", n)
	case driftHookRule:
		n := ruleNumber(t, "nat", "POSTROUTING", "switchyard postrouting rules")
		mustCommand(t, "iptables", "-t", "nat", "-D", "POSTROUTING", n)
	case driftSeveral:
		if err := withHandle(func(h *ipvs.KernelHandle) error {
			return h.DeleteRealServer(key(np.Frontends()[0]), agentspec.Endpoints(np.Backends)[0])
		}); err != nil {
			t.Fatal(err)
		}
		deleteAddr(t, ipvs.DefaultLinkName, web.ClusterIP)
		mustCommand(t, "iptables", "-t", "nat", "-F", "SWITCHYARD-POSTROUTING")
	default:
		t.Fatalf("unknown drift kind %q", kind)
	}
}

// ExpectNothingLeft checks what --cleanup promises: no dummy link, no
// virtual server the scenario did not find or make itself, no SWITCHYARD
// chain, hook rule (commented "switchyard ...") or set, no state file.
func (d *ipvsDataplane) ExpectNothingLeft(t *testing.T, a *agentspec.Agent, when string) {
	t.Helper()
	if addrs, ok := dummyAddrs(t); ok {
		t.Errorf("%s: link %s still exists (addresses %v)", when, ipvs.DefaultLinkName, addrs)
	}
	for _, vs := range listVS(t) {
		if !d.baselineVS[vs.Key] && !d.foreignVS[vs.Key] {
			t.Errorf("%s: virtual server %s left", when, vs.Key)
		}
	}
	for _, l := range strings.Split(iptablesSave(t), "\n") {
		if strings.Contains(strings.ToLower(l), "switchyard") {
			t.Errorf("%s: iptables still has %q", when, l)
		}
	}
	for _, name := range strings.Fields(mustCommand(t, "ipset", "list", "-n")) {
		if strings.HasPrefix(name, "SWITCHYARD") {
			t.Errorf("%s: ipset %s left", when, name)
		}
	}
	if _, err := os.Stat(filepath.Join(a.StateDir, ipvs.StateFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: state file left: %v", when, err)
	}
}

// foreignObjects are kernel objects another program on the node owns: IPVS
// virtual servers on 172.16.0.1:80 (an address switchyard never has) and on
// the node's 10.99.0.1:30081 (a NodePort key), each with one real server of
// weight 7; a chain FOREIGN in nat and filter with a rule and jumps to it
// from POSTROUTING and FORWARD; an ipset foreign-set with one member.
type foreignObjects struct {
	vss []ipvs.Key
}

const foreignNodePort = 30081

var foreignIPTables = [][]string{
	{"-t", "nat", "-N", "FOREIGN"},
	{"-t", "nat", "-A", "FOREIGN", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "foreign-rule", "-j", "RETURN"},
	{"-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
	{"-t", "filter", "-N", "FOREIGN"},
	{"-t", "filter", "-A", "FOREIGN", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "foreign-rule", "-j", "RETURN"},
	{"-t", "filter", "-A", "FORWARD", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
}

// AddForeign makes the foreign objects (real servers on be); t.Cleanup
// removes them.
func (d *ipvsDataplane) AddForeign(t *testing.T, be agentspec.Backend) agentspec.Foreign {
	t.Helper()
	f := &foreignObjects{vss: []ipvs.Key{
		{IP: netip.MustParseAddr("172.16.0.1"), Protocol: dataplane.TCP, Port: 80},
		{IP: agentspec.NodeAddr, Protocol: dataplane.TCP, Port: foreignNodePort},
	}}
	t.Cleanup(func() {
		for _, k := range f.vss {
			if err := withHandle(func(h *ipvs.KernelHandle) error { return h.DeleteVirtualServer(k) }); err != nil && !ipvs.IsNotFound(err) {
				t.Errorf("delete foreign virtual server %s: %v", k, err)
			}
		}
		for _, args := range [][]string{
			{"iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
			{"iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
			{"iptables", "-t", "nat", "-F", "FOREIGN"}, {"iptables", "-t", "nat", "-X", "FOREIGN"},
			{"iptables", "-t", "filter", "-F", "FOREIGN"}, {"iptables", "-t", "filter", "-X", "FOREIGN"},
			{"ipset", "destroy", "foreign-set"},
		} {
			if _, err := command(args...); err != nil {
				t.Errorf("remove foreign object: %v", err)
			}
		}
	})
	for _, k := range f.vss {
		d.foreignVS[k] = true
		if err := withHandle(func(h *ipvs.KernelHandle) error {
			if err := h.AddVirtualServer(ipvs.VirtualServer{Key: k, Scheduler: "wlc"}); err != nil {
				return err
			}
			return h.AddRealServer(k, ipvs.RealServer{Addr: netip.AddrPortFrom(be.Addr, agentspec.TargetPort), Weight: 7, Forward: ipvs.ForwardMasq})
		}); err != nil {
			t.Fatalf("foreign virtual server %s: %v", k, err)
		}
	}
	for _, args := range foreignIPTables {
		mustCommand(t, append([]string{"iptables"}, args...)...)
	}
	mustCommand(t, "ipset", "create", "foreign-set", "hash:ip")
	mustCommand(t, "ipset", "add", "foreign-set", "192.0.2.7")
	return f
}

func (*foreignObjects) HeldNodePort() uint16 { return foreignNodePort }

// AfterFirstSync: the agent reported the foreign virtual server on the
// NodePort key it wants, and left it alone.
func (*foreignObjects) AfterFirstSync(t *testing.T, a *agentspec.Agent) {
	t.Helper()
	a.WaitLog(`"A virtual server switchyard does not own holds a wanted key; leaving it alone" virtualServer="10\.99\.0\.1:30081/TCP"`)
}

// Interfere puts a foreign rule in front of the agent's hook: the agent
// moves its hook back to the top and leaves the foreign rule, which is
// removed again afterwards.
func (*foreignObjects) Interfere(t *testing.T, a *agentspec.Agent) {
	t.Helper()
	mustCommand(t, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-m", "comment", "--comment", "foreign-first", "-j", "FOREIGN")
	a.Eventually("switchyard hook first in POSTROUTING again", agentspec.Deadline, func() (bool, string) {
		rules := chainRules(t, "nat", "POSTROUTING")
		return len(rules) > 0 && strings.Contains(rules[0], "switchyard postrouting rules"), strings.Join(rules, "; ")
	})
	if !strings.Contains(strings.Join(chainRules(t, "nat", "POSTROUTING"), "\n"), "foreign-first") {
		t.Error("the agent removed the foreign rule put in front of its hook")
	}
	mustCommand(t, "iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "foreign-first", "-j", "FOREIGN")
}

// Snapshot renders the foreign objects.
func (f *foreignObjects) Snapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, k := range f.vss {
		s, err := scheduler(k)
		fmt.Fprintf(&b, "vs %s %s %v\n", k, s, err)
		if err == nil {
			rss := realServers(t, k)
			for _, addr := range slices.SortedFunc(maps.Keys(rss), netip.AddrPort.Compare) {
				fmt.Fprintf(&b, "  rs %s %s weight=%d\n", addr, rss[addr].Forward, rss[addr].Weight)
			}
		}
	}
	for _, tc := range [][2]string{{"nat", "FOREIGN"}, {"filter", "FOREIGN"}, {"nat", "POSTROUTING"}, {"filter", "FORWARD"}} {
		out, err := command("iptables", "-t", tc[0], "-S", tc[1])
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "FOREIGN") || err != nil {
				fmt.Fprintf(&b, "%s: %s\n", tc[0], l)
			}
		}
	}
	out, err := command("ipset", "save", "foreign-set")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(lines)
	fmt.Fprintf(&b, "ipset (%v):\n%s\n", err, strings.Join(lines, "\n"))
	return b.String()
}

// withHandle runs f with a fresh IPVS handle (the agent's own runs in
// another process; a handle per call keeps tests independent).
func withHandle(f func(h *ipvs.KernelHandle) error) error {
	h, err := ipvs.NewHandle("")
	if err != nil {
		return err
	}
	defer h.Close()
	return f(h)
}

func realServerWeights(k ipvs.Key) (map[netip.AddrPort]int, error) {
	out := map[netip.AddrPort]int{}
	err := withHandle(func(h *ipvs.KernelHandle) error {
		rss, err := h.ListRealServers(k)
		for _, rs := range rss {
			out[rs.Addr] = rs.Weight
		}
		return err
	})
	return out, err
}

func realServers(t *testing.T, k ipvs.Key) map[netip.AddrPort]ipvs.RealServer {
	t.Helper()
	out := map[netip.AddrPort]ipvs.RealServer{}
	if err := withHandle(func(h *ipvs.KernelHandle) error {
		rss, err := h.ListRealServers(k)
		for _, rs := range rss {
			out[rs.Addr] = rs
		}
		return err
	}); err != nil {
		t.Fatalf("real servers of %s: %v", k, err)
	}
	return out
}

func listVS(t *testing.T) []ipvs.VirtualServer {
	t.Helper()
	var vss []ipvs.VirtualServer
	if err := withHandle(func(h *ipvs.KernelHandle) (err error) {
		vss, err = h.ListVirtualServers()
		return err
	}); err != nil {
		t.Fatalf("list virtual servers: %v", err)
	}
	return vss
}

func scheduler(k ipvs.Key) (string, error) {
	var vs ipvs.VirtualServer
	err := withHandle(func(h *ipvs.KernelHandle) (err error) {
		vs, err = h.GetVirtualServer(k)
		return err
	})
	return vs.Scheduler, err
}

// command runs a userspace tool (iptables, ipset) in the root namespace
// (the node), bounded in time.
func command(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func mustCommand(t *testing.T, args ...string) string {
	t.Helper()
	out, err := command(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var counterRE = regexp.MustCompile(`\[\d+:\d+\]`)

// iptablesSave is `iptables-save` without comments and counters.
func iptablesSave(t *testing.T) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(mustCommand(t, "iptables-save"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, counterRE.ReplaceAllString(l, "[-]"))
	}
	return strings.Join(lines, "\n")
}

// ipsetSave is `ipset save` with lines sorted (members are listed in hash
// order).
func ipsetSave(t *testing.T) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(mustCommand(t, "ipset", "save")), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// dummyAddrs lists the addresses on the agent's dummy link; ok is false
// when the link does not exist.
func dummyAddrs(t *testing.T) (addrs []string, ok bool) {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(ipvs.DefaultLinkName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, false
		}
		t.Fatalf("find %s: %v", ipvs.DefaultLinkName, err)
	}
	as, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("addresses of %s: %v", ipvs.DefaultLinkName, err)
	}
	for _, x := range as {
		addrs = append(addrs, x.IPNet.String())
	}
	slices.Sort(addrs)
	return addrs, true
}

func formatWeights(m map[netip.AddrPort]int) string {
	var parts []string
	for _, k := range slices.SortedFunc(maps.Keys(m), netip.AddrPort.Compare) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// deleteAddr removes ip/32 from a link in the root namespace with netlink.
func deleteAddr(t *testing.T, link string, ip netip.Addr) {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err == nil {
		err = h.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}
	if err != nil {
		t.Fatalf("delete %s from %s: %v", ip, link, err)
	}
}

// chainRules lists a chain's rules as `iptables -S` prints them.
func chainRules(t *testing.T, table, chain string) []string {
	t.Helper()
	var rules []string
	for _, l := range strings.Split(mustCommand(t, "iptables", "-t", table, "-S", chain), "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			rules = append(rules, l)
		}
	}
	return rules
}

// ruleNumber returns the 1-based position of the first rule of chain
// containing substr, as a string for `iptables -D CHAIN N`.
func ruleNumber(t *testing.T, table, chain, substr string) string {
	t.Helper()
	rules := chainRules(t, table, chain)
	for i, r := range rules {
		if strings.Contains(r, substr) {
			return strconv.Itoa(i + 1)
		}
	}
	t.Fatalf("no rule with %q in %s %s:\n%s", substr, table, chain, strings.Join(rules, "\n"))
	return ""
}
