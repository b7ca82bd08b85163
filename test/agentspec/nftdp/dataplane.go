package nftdp

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"

	"github.com/switchyard/switchyard/test/agentspec"
)

// The nftables side of the agent spec (agentspec.Dataplane): the node is a
// network namespace made for each scenario, the agent runs with
// --dataplane nftables, and the kernel state is read back with
// github.com/google/nftables (ruleset.go).

type nftDataplane struct {
	Base
	env *agentspec.Env
}

var _ agentspec.Dataplane = (*nftDataplane)(nil)

// NewDataplane is the agent spec's nftables Dataplane for env: it reads
// the node's ruleset back from the kernel (ruleset.go) to tell what the
// agent programmed. Pass it to NewEnv.
func NewDataplane(env *agentspec.Env) agentspec.Dataplane { return &nftDataplane{env: env} }

func (d *nftDataplane) read(t *testing.T) *ourObjects { t.Helper(); return readOurs(t, d.env.Node) }

func feKey(fe agentspec.Frontend) []byte {
	return frontendKey(fe.Addr, fe.Protocol, fe.Port, fe.NodePort)
}

// frontendState tells whether fe is programmed as wanted: with endpoints,
// its key in a verdict map sending to a chain that DNATs to exactly
// those; without, its key in a no-endpoint set and in no verdict map. With
// noLocal (a Local traffic policy and no endpoint on the node, though the
// Service has some), its key is in a no-local-endpoint set, and the chain
// a verdict map may still send it to (external traffic from pods and the
// node itself goes to every endpoint) DNATs outside traffic nowhere.
func frontendState(o *ourObjects, fe agentspec.Frontend, want []netip.AddrPort, noLocal bool) (bool, string) {
	if !o.exists {
		return false, "no table ip " + ourTable
	}
	key := feKey(fe)
	set, chain, dispatched := o.dispatch(key)
	rejected := o.inPlainSet(key)
	if noLocal {
		switch {
		case !slices.ContainsFunc(rejected, isNoLocalEndpointSet):
			return false, fmt.Sprintf("%s in no no-local-endpoint set (in %v)", fe, rejected)
		case dispatched && len(serviceEndpoints(o, chain)) > 0:
			return false, fmt.Sprintf("%s sends %s to %s (endpoints %v)", set, fe, chain, serviceEndpoints(o, chain))
		}
		return true, ""
	}
	if len(want) == 0 {
		switch {
		case dispatched:
			return false, fmt.Sprintf("%s sends %s to %s (endpoints %v)", set, fe, chain, o.endpoints(chain))
		case !slices.ContainsFunc(rejected, isNoEndpointSet):
			return false, fmt.Sprintf("%s in no no-endpoint set (sets %v)", fe, o.plainSets())
		}
		return true, ""
	}
	if !dispatched {
		var have []string
		for _, name := range o.verdictMaps() {
			for _, e := range o.elems[name] {
				have = append(have, name+":"+renderElement(e))
			}
		}
		return false, fmt.Sprintf("%s (key %x) in no verdict map; they have %v", fe, key, have)
	}
	if len(rejected) > 0 {
		return false, fmt.Sprintf("%s dispatched to %s but also in %v", fe, chain, rejected)
	}
	if got := serviceEndpoints(o, chain); !slices.Equal(got, want) {
		return false, fmt.Sprintf("%s -> %s with endpoints %v", fe, chain, got)
	}
	return true, ""
}

// serviceEndpoints are the endpoints chain sends outside traffic to: its
// own DNAT targets, or, for a chain that only dispatches (the external
// chain of a Service with externalTrafficPolicy Local: pods and the node
// to every endpoint, the rest to the node's), those of the chain its last
// rule, an unconditional goto, leads to; none when there is no such rule
// (no local endpoint).
func serviceEndpoints(o *ourObjects, chain string) []netip.AddrPort {
	if eps := o.endpoints(chain); len(eps) > 0 {
		return eps
	}
	rules := o.rules[chain]
	if len(rules) == 0 {
		return nil
	}
	if v := bareGoto(rules[len(rules)-1]); v != "" {
		return o.endpoints(v)
	}
	return nil
}

// bareGoto is the chain a rule made of a goto alone leads to, or "".
func bareGoto(r *nftables.Rule) string {
	if len(r.Exprs) != 1 {
		return ""
	}
	if v, ok := r.Exprs[0].(*expr.Verdict); ok && v.Kind == expr.VerdictGoto {
		return v.Chain
	}
	return ""
}

// isNoLocalEndpointSet: the sets whose frontends drop new connections for
// want of an endpoint on the node.
func isNoLocalEndpointSet(name string) bool { return strings.Contains(name, "no-local-endpoint") }

func isNoEndpointSet(name string) bool { return strings.Contains(name, "no-endpoint") }

func wantEndpoints(bes []agentspec.Backend) []netip.AddrPort {
	eps := agentspec.Endpoints(bes)
	slices.SortFunc(eps, netip.AddrPort.Compare)
	return eps
}

// firewallState tells whether the load-balancer IP of s (if any) is
// filtered as wanted: with ranges, its key in firewallMap sending to a
// chain that returns for exactly the ranges (and the load-balancer IP as
// source when a node IP is inside one) and drops the rest; without, not
// in firewallMap.
func firewallState(o *ourObjects, s agentspec.Service, nodeIPs []netip.Addr) (bool, string) {
	if !s.LoadBalancerIP.IsValid() {
		return true, ""
	}
	fe := agentspec.Frontend{Addr: s.LoadBalancerIP, Protocol: s.Proto(), Port: s.Port}
	chain, ok := o.firewall(feKey(fe))
	if !s.Firewalled() {
		if ok {
			return false, fmt.Sprintf("%s filtered by %s, want no firewall", fe, chain)
		}
		return true, ""
	}
	if !ok {
		return false, fmt.Sprintf("%s not in %s", fe, firewallMap)
	}
	var want []netip.Prefix
	for _, p := range s.LoadBalancerSourceRanges {
		want = append(want, p.Masked()) // as the agent reads them
	}
	if s.AllowFromNode(nodeIPs) {
		want = append(want, netip.PrefixFrom(s.LoadBalancerIP, 32))
	}
	got, drops, err := o.firewallPasses(chain)
	if err != nil {
		return false, err.Error()
	}
	cmpPrefix := func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(want, cmpPrefix)
	slices.SortFunc(got, cmpPrefix)
	if !slices.Equal(got, want) || !drops {
		return false, fmt.Sprintf("%s: %s passes %v (then drops: %v), want %v then drop", fe, chain, got, drops, want)
	}
	return true, ""
}

func (d *nftDataplane) WaitProgrammed(t *testing.T, a *agentspec.Agent, svcs ...agentspec.Service) {
	t.Helper()
	for _, s := range svcs {
		a.Eventually(fmt.Sprintf("firewall of %s (ranges %v)", s.Name, s.LoadBalancerSourceRanges), agentspec.Deadline, func() (bool, string) {
			return firewallState(d.read(t), s, d.env.NodeIPs)
		})
		for _, fe := range s.Frontends() {
			ready, _ := s.Serving(fe, a.NodeName())
			want := wantEndpoints(ready)
			noLocal := len(ready) == 0 && len(s.Backends) > 0
			a.Eventually(fmt.Sprintf("%s of %s with endpoints %v (no local endpoint: %v)", fe, s.Name, want, noLocal), agentspec.Deadline, func() (bool, string) {
				return frontendState(d.read(t), fe, want, noLocal)
			})
		}
	}
}

// Absent: no element of any set or map of the table has one of the
// Service's frontends (its NodePort included) as key.
func (d *nftDataplane) Absent(t *testing.T, s agentspec.Service) (bool, string) {
	t.Helper()
	o := d.read(t)
	var found []string
	for _, fe := range s.Frontends() {
		key := feKey(fe)
		for _, name := range slices.Sorted(maps.Keys(o.elems)) {
			for _, e := range o.elems[name] {
				if slices.Equal(e.Key, key) {
					found = append(found, fmt.Sprintf("%s in %s", fe, name))
				}
			}
		}
	}
	return len(found) == 0, strings.Join(found, ", ")
}

// CheckKernel: the verdict maps hold exactly the frontends of the Services
// with endpoints, the no-endpoint sets exactly those of the others, every
// chain that DNATs is reached from a map (no orphan Service chain), and the
// firewall map exactly the load-balancer frontends of the Services with
// loadBalancerSourceRanges, each sent to a chain filtering by them.
func (d *nftDataplane) CheckKernel(t *testing.T, svcs []agentspec.Service) {
	t.Helper()
	svcs = append(slices.Clone(svcs), d.env.Ambient...)
	o := d.read(t)
	if !o.exists {
		t.Errorf("no table ip %s", ourTable)
		return
	}
	wantDispatch, wantRejected := map[string]string{}, map[string]string{}
	for _, s := range svcs {
		for _, fe := range s.Frontends() {
			if len(s.Backends) > 0 {
				wantDispatch[hex.EncodeToString(feKey(fe))] = fe.String()
			} else {
				wantRejected[hex.EncodeToString(feKey(fe))] = fe.String()
			}
		}
	}
	gotDispatch, gotRejected, reached := map[string]string{}, map[string]string{}, map[string]bool{}
	for _, name := range o.verdictMaps() {
		for _, e := range o.elems[name] {
			gotDispatch[hex.EncodeToString(e.Key)] = name
			if v := elemVerdict(e); v != nil {
				reached[v.Chain] = true
			}
		}
	}
	for _, name := range o.plainSets() {
		if isNoEndpointSet(name) {
			for _, e := range o.elems[name] {
				gotRejected[hex.EncodeToString(e.Key)] = name
			}
		}
	}
	// Chains a reached chain goes or jumps to are reached too (the local
	// chain behind a Service's external chain).
	for more := true; more; {
		more = false
		for chain := range reached {
			for _, r := range o.rules[chain] {
				for _, e := range r.Exprs {
					if v, ok := e.(*expr.Verdict); ok && v.Chain != "" && !reached[v.Chain] {
						reached[v.Chain], more = true, true
					}
				}
			}
		}
	}
	compareKeys(t, "verdict maps", wantDispatch, gotDispatch)
	compareKeys(t, "no-endpoint sets", wantRejected, gotRejected)
	wantFW, gotFW := map[string]string{}, map[string]string{}
	for _, s := range svcs {
		if s.Firewalled() {
			fe := agentspec.Frontend{Addr: s.LoadBalancerIP, Protocol: s.Proto(), Port: s.Port}
			wantFW[hex.EncodeToString(feKey(fe))] = fe.String()
		}
		if ok, why := firewallState(o, s, d.env.NodeIPs); !ok {
			t.Errorf("firewall of %s: %s", s.Name, why)
		}
	}
	for _, e := range o.elems[firewallMap] {
		gotFW[hex.EncodeToString(e.Key)] = firewallMap
	}
	compareKeys(t, "firewall map", wantFW, gotFW)
	for _, chain := range slices.Sorted(maps.Keys(o.rules)) {
		if eps := o.endpoints(chain); len(eps) > 0 && !reached[chain] {
			t.Errorf("chain %s DNATs to %v but no map element sends traffic to it", chain, eps)
		}
	}
}

func compareKeys(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	for k, fe := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("%s lack %s (key %s)", what, fe, k)
		}
	}
	for k, set := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %s has an element no Service wants (key %s)", what, set, k)
		}
	}
}

// Snapshot is every table of the node namespace, read back.
func (d *nftDataplane) Snapshot(t *testing.T) string {
	t.Helper()
	return renderTables(t, d.env.Node, nil)
}

var syncedNFTRE = regexp.MustCompile(`"Synced nftables".*`)

// CheckAdopted: the first sync of the new agent read the table back and
// sent nothing.
func (*nftDataplane) CheckAdopted(t *testing.T, when, log string) {
	t.Helper()
	m := syncedNFTRE.FindString(log)
	if m == "" {
		t.Errorf("%s: the new agent logged no \"Synced nftables\" line", when)
		return
	}
	if !strings.Contains(m, " full=true") || !strings.Contains(m, " messages=0") {
		t.Errorf("%s: the new agent's first sync wrote to the kernel: %s", when, m)
	}
}

// Drift kinds: each deletes something the Services need and breaks their
// traffic until the agent repairs it.
const (
	driftMapElement   = "deleted service map element"
	driftServiceChain = "deleted service chain with its map elements"
	driftServiceRule  = "deleted DNAT rule of a service chain"
	driftBaseChain    = "flushed the nat postrouting base chain"
	driftTable        = "deleted the whole table"
)

func (*nftDataplane) DriftKinds() []string {
	return []string{driftMapElement, driftServiceChain, driftServiceRule, driftBaseChain, driftTable}
}

func (d *nftDataplane) DeleteSomething(t *testing.T, kind string, web, np agentspec.Service) {
	t.Helper()
	o := d.read(t)
	if !o.exists {
		t.Fatalf("%s: no table ip %s", kind, ourTable)
	}
	c := nftConn(t, d.env.Node)
	webKey := feKey(web.Frontends()[0])
	webMap, webChain, ok := o.dispatch(webKey)
	if !ok {
		t.Fatalf("%s: %s is in no verdict map", kind, web.Frontends()[0])
	}
	switch kind {
	case driftMapElement:
		if err := c.SetDeleteElements(o.sets[webMap], []nftables.SetElement{{Key: webKey}}); err != nil {
			t.Fatal(err)
		}
	case driftServiceChain:
		_, chain, ok := o.dispatch(feKey(np.Frontends()[0]))
		if !ok {
			t.Fatalf("%s: %s is in no verdict map", kind, np.Frontends()[0])
		}
		n := 0
		for _, name := range o.verdictMaps() {
			var refs []nftables.SetElement
			for _, e := range o.elems[name] {
				if v := elemVerdict(e); v != nil && v.Chain == chain {
					refs = append(refs, nftables.SetElement{Key: e.Key})
				}
			}
			if len(refs) > 0 {
				n += len(refs)
				if err := c.SetDeleteElements(o.sets[name], refs); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n < 2 {
			t.Fatalf("%s: %d map elements send to %s, want the ClusterIP and the NodePort", kind, n, chain)
		}
		c.DelChain(&nftables.Chain{Table: o.table, Name: chain})
	case driftServiceRule:
		rules := o.rules[webChain]
		if len(rules) == 0 {
			t.Fatalf("%s: chain %s has no rules", kind, webChain)
		}
		last := rules[len(rules)-1] // the DNAT rule comes after the masquerade marks
		if err := c.DelRule(&nftables.Rule{Table: o.table, Chain: &nftables.Chain{Table: o.table, Name: webChain}, Handle: last.Handle}); err != nil {
			t.Fatal(err)
		}
	case driftBaseChain:
		var post *nftables.Chain
		for _, ch := range chains(t, c, o.table) {
			if ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookPostrouting && ch.Type == nftables.ChainTypeNAT {
				post = ch
			}
		}
		if post == nil || len(o.rules[post.Name]) == 0 {
			t.Fatalf("%s: no nat postrouting chain with rules in %s", kind, ourTable)
		}
		c.FlushChain(post)
	case driftTable:
		c.DelTable(o.table)
	default:
		t.Fatalf("unknown drift kind %q", kind)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("%s: %v", kind, err)
	}
}

// ExpectNothingLeft: no table named switchyard in any family, no dummy
// link, no iptables rule or ipset of switchyard, nothing in the state
// directory.
func (d *nftDataplane) ExpectNothingLeft(t *testing.T, a *agentspec.Agent, when string) {
	t.Helper()
	for _, tb := range tables(t, nftConn(t, d.env.Node), nil) {
		if tb.Name == ourTable {
			t.Errorf("%s: table %s %s left:\n%s", when, familyName(tb.Family), tb.Name,
				renderTables(t, d.env.Node, func(x *nftables.Table) bool { return x.Name == ourTable }))
		}
	}
	if l, err := d.env.Node.Handle().LinkByName("switchyard0"); err == nil {
		t.Errorf("%s: link %s left", when, l.Attrs().Name)
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Errorf("%s: look for link switchyard0: %v", when, err)
	}
	if bin, ok := tool("iptables-save"); ok {
		for _, l := range strings.Split(d.env.MustCommand(t, bin), "\n") {
			if strings.Contains(strings.ToLower(l), "switchyard") {
				t.Errorf("%s: iptables has %q", when, l)
			}
		}
	}
	if bin, ok := tool("ipset"); ok {
		for _, name := range strings.Fields(d.env.MustCommand(t, bin, "list", "-n")) {
			if strings.HasPrefix(name, "SWITCHYARD") {
				t.Errorf("%s: ipset %s left", when, name)
			}
		}
	}
	if files, err := os.ReadDir(a.StateDir); err != nil || len(files) > 0 {
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		t.Errorf("%s: state directory %s: %v %v", when, a.StateDir, names, err)
	}
}

// nftForeign is another program's nftables and iptables objects in the
// node namespace: a table "ip foreign" with a set, a regular chain and
// base chains (nat postrouting, filter forward) jumping to it, a table
// "inet foreign" with a filter input chain, and an iptables chain FOREIGN
// in nat with a jump from POSTROUTING. The node namespace takes them along.
type nftForeign struct {
	env      *agentspec.Env
	iptables string // the binary, "" when there is none
}

var _ agentspec.Foreign = (*nftForeign)(nil)

func (d *nftDataplane) AddForeign(t *testing.T, _ agentspec.Backend) agentspec.Foreign {
	t.Helper()
	c := nftConn(t, d.env.Node)
	comment := func(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }
	fromTestNet := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netip.MustParseAddr("192.0.2.1").AsSlice()},
	}

	ip := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "foreign"})
	set := &nftables.Set{Table: ip, Name: "foreign-set", KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(set, []nftables.SetElement{{Key: netip.MustParseAddr("192.0.2.7").AsSlice()}}); err != nil {
		t.Fatal(err)
	}
	regular := c.AddChain(&nftables.Chain{Table: ip, Name: "foreign-chain"})
	c.AddRule(&nftables.Rule{Table: ip, Chain: regular, UserData: comment("foreign-rule"),
		Exprs: append(slices.Clone(fromTestNet), &expr.Verdict{Kind: expr.VerdictReturn})})
	prio50, prio0 := nftables.ChainPriority(50), nftables.ChainPriority(0)
	accept := nftables.ChainPolicyAccept
	for _, ch := range []*nftables.Chain{
		{Table: ip, Name: "postrouting", Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: &prio50, Policy: &accept},
		{Table: ip, Name: "forward", Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: &prio0, Policy: &accept},
	} {
		c.AddChain(ch)
		c.AddRule(&nftables.Rule{Table: ip, Chain: ch, UserData: comment("foreign-hook"),
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "foreign-chain"}}})
	}
	inet := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "foreign"})
	input := c.AddChain(&nftables.Chain{Table: inet, Name: "input", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: &prio0, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: inet, Chain: input, UserData: comment("foreign-counter"), Exprs: []expr.Any{&expr.Counter{}}})
	if err := c.Flush(); err != nil {
		t.Fatalf("foreign nftables objects: %v", err)
	}
	f := &nftForeign{env: d.env}
	var ok bool
	if f.iptables, ok = tool("iptables"); !ok {
		t.Log("no iptables binary: foreign iptables rules left out")
		return f
	}
	for _, args := range [][]string{
		{"-t", "nat", "-N", "FOREIGN"},
		{"-t", "nat", "-A", "FOREIGN", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "foreign-rule", "-j", "RETURN"},
		{"-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
	} {
		d.env.MustCommand(t, append([]string{f.iptables}, args...)...)
	}
	return f
}

// tool finds a userspace tool in PATH or the sbin directories a non-root
// PATH may lack.
func tool(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, true
		}
	}
	return "", false
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func (f *nftForeign) Snapshot(t *testing.T) string {
	t.Helper()
	s := renderTables(t, f.env.Node, func(tb *nftables.Table) bool { return tb.Name == "foreign" })
	if f.iptables == "" {
		return s
	}
	var lines []string
	for _, chain := range []string{"FOREIGN", "POSTROUTING"} {
		for _, l := range strings.Split(f.env.MustCommand(t, f.iptables, "-t", "nat", "-S", chain), "\n") {
			if strings.Contains(l, "FOREIGN") {
				lines = append(lines, l)
			}
		}
	}
	return s + "--- iptables nat\n" + strings.Join(lines, "\n") + "\n"
}

func (*nftForeign) HeldNodePort() uint16 { return 0 }

func (*nftForeign) AfterFirstSync(*testing.T, *agentspec.Agent) {}

// Interfere: nothing to do. Base chains of different tables run side by
// side, ordered by priority, and a foreign table cannot take a key of the
// agent's maps; a foreign edit inside the agent's own table is drift
// (RepairsDrift), which the agent undoes.
func (*nftForeign) Interfere(t *testing.T, _ *agentspec.Agent) {
	t.Log("nftables: no way for a foreign object to take the place of one of the agent's")
}
