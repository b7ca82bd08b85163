package nftables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	"github.com/google/nftables/expr"

	"github.com/switchyard/switchyard/dataplane"
)

// This file is the read-only side of the package for yardctl: switchyard's
// tables as the kernel has them, chain by chain, each chain named with the
// Service port it belongs to and the frontends leading to it, and, given a
// model State, how the tables differ from the desired state. Nothing here
// writes to the kernel.
//
// The dataplane puts no counter in its rules (a counter is one more
// expression per packet on every rule, and the conntrack table already
// counts connections): InspectedRule.Counter is set only for rules that
// carry one, e.g. added by hand while debugging.

// Inspection is switchyard's nftables tables for yardctl nft.
type Inspection struct {
	// Tables in family order (ip, ip6); a family whose table does not
	// exist is listed only when the desired state wants it.
	Tables []InspectedTable
	// DriftChecked: compared with a desired state.
	DriftChecked bool
	// Counters: some rule carries a counter.
	Counters bool
}

// InspectedTable is one family's table.
type InspectedTable struct {
	Family string // "ip" or "ip6"
	Name   string
	Exists bool
	// Sets are the named sets and maps, by name, elements rendered as in
	// DumpTable ("10.96.0.10 . tcp . 80 : goto svc-...").
	Sets []InspectedSet
	// Chains by name; wanted ones the kernel lacks have Missing set.
	Chains []InspectedChain
	// Drift lists differences not tied to one chain (the table, sets,
	// elements of plain sets).
	Drift []string
}

// InspectedSet is a named set or map.
type InspectedSet struct {
	Name     string
	Map      bool
	Elements []string
}

// InspectedChain is one chain.
type InspectedChain struct {
	Name string
	// Kind is "service" (svc-: Cluster-policy endpoints), "local" (local-:
	// this node's endpoints), "external" (ext-: externalTrafficPolicy
	// Local dispatch), "firewall" (fw-: loadBalancerSourceRanges) or
	// "fixed" (the skeleton: base and helper chains).
	Kind string
	// Service is the Service port ("ns/name:port/proto"); "" for fixed
	// chains. Without a desired state it is read from the chain's name.
	Service string
	// Hook is "type nat hook prerouting priority -100; policy accept" for
	// base chains, "" otherwise.
	Hook string
	// Frontends are the map elements leading to this chain, e.g.
	// "service-ips 10.96.0.10 . tcp . 80", "service-nodeports tcp . 30080".
	Frontends []string
	Rules     []InspectedRule
	// Missing: wanted, not in the kernel (Rules are then the wanted ones).
	Missing bool
	// Drift lists how the chain differs from the desired state.
	Drift []string
}

// InspectedRule is one rule as DumpTable renders it.
type InspectedRule struct {
	Text string
	// Counter is nil for rules without a counter expression.
	Counter *Counter
}

// Counter is an nftables counter's value.
type Counter struct {
	Packets, Bytes uint64
}

// InspectTables reads switchyard's tables through conn without a desired
// state, as yardctl does when the agent is down: chains, rules, sets, no
// drift. Service names come from the chains' names.
func InspectTables(conn Conn) (*Inspection, error) {
	out := &Inspection{}
	for _, f := range allFamilies {
		it, err := inspectFamily(conn, f, nil, out)
		if err != nil {
			return nil, err
		}
		if it.Exists {
			out.Tables = append(out.Tables, it)
		}
	}
	return out, nil
}

// Inspect reads the tables and compares them with the desired state for st
// (nil: no comparison). It waits for a sync in progress.
func (p *Proxier) Inspect(st *dataplane.State) (*Inspection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fams := allFamilies
	if p.tables != nil {
		fams = nil
		for _, ft := range p.tables {
			fams = append(fams, ft.fam)
		}
	}
	out := &Inspection{DriftChecked: st != nil}
	for _, f := range fams {
		var d *desiredTable
		if st != nil {
			d = &desiredTable{skeleton: skeletonChains(p.cfg, f), state: buildTableState(logr.Discard(), p.cfg, f, st)}
		}
		it, err := inspectFamily(p.conn, f, d, out)
		if err != nil {
			return nil, err
		}
		if it.Exists || d != nil {
			out.Tables = append(out.Tables, it)
		}
	}
	return out, nil
}

// ServicePortChains returns the names of the chains a Service port may
// have: Cluster-policy endpoints (svc-), Local-policy endpoints (local-),
// externalTrafficPolicy Local dispatch (ext-) and loadBalancerSourceRanges
// firewall (fw-).
func ServicePortChains(n dataplane.ServicePortName) (cluster, local, external, firewall string) {
	return servicePortChain(n), localChain(n), externalChain(n), firewallChain(n)
}

// Route describes what the desired table for st does with packets to dst
// of Service port name (nodePort: dst's port is its NodePort on a node
// address), one line per map or set element and chain they meet:
// "service-ips 10.96.0.10 . tcp . 80 : goto svc-..." then that chain's
// rules. Empty when the port has nothing for dst in dst's family.
func (p *Proxier) Route(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort, nodePort bool) []string {
	sp := st.Services[name]
	if sp == nil {
		return nil
	}
	f := ipv4
	if !dst.Addr().Unmap().Is4() {
		f = ipv6
	}
	ps := desiredServicePort(p.cfg, f, sp, st.Endpoints[name], st.Weights[name], nodeOf(st))
	if ps == nil {
		return nil
	}
	proto, _ := protoNumber(name.Protocol)
	fr := frontend{addr: dst.Addr().Unmap(), proto: proto, port: dst.Port()}
	if nodePort {
		fr.addr = netip.Addr{}
	}
	specs := setSpecs(f)
	var out []string
	var chains []string
	for _, e := range ps.elems[fr] {
		i := slices.IndexFunc(specs, func(s setSpec) bool { return s.name == e.set })
		if i < 0 {
			continue
		}
		line := f.name + " " + tableName + " " + e.set + " " + renderFields(typeNames(specs[i].keyType), []byte(e.key))
		if e.chain != "" {
			line += " : goto " + e.chain
			chains = append(chains, e.chain)
		}
		out = append(out, line)
	}
	// Follow gotos to the chains the port owns (ext- leads to svc- and
	// local-).
	for len(chains) > 0 {
		name := chains[0]
		chains = chains[1:]
		c, ok := ps.chain(name)
		if !ok {
			continue
		}
		out = append(out, "chain "+name)
		for _, r := range c.rules {
			anon := func(name string) (string, bool) {
				for _, am := range r.anons {
					if am.name == name {
						parts := make([]string, len(am.elems))
						for i, e := range am.elems {
							parts[i] = renderElement(e, am.keyType, am.dataType, am.isMap)
						}
						slices.SortFunc(parts, naturalCompare)
						return "{ " + strings.Join(parts, ", ") + " }", true
					}
				}
				return "", false
			}
			out = append(out, "  "+renderRule(f, r.exprs, r.comment, anon, setKeyLen(f)))
			for _, e := range r.exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Chain != "" && (v.Kind == expr.VerdictGoto || v.Kind == expr.VerdictJump) &&
					!slices.Contains(chains, v.Chain) && !slices.Contains(out, "chain "+v.Chain) {
					chains = append(chains, v.Chain)
				}
			}
		}
	}
	return out
}

// desiredTable is what one family's table should hold.
type desiredTable struct {
	skeleton []chainSpec
	state    *tableState
}

func inspectFamily(conn Conn, f *family, d *desiredTable, out *Inspection) (InspectedTable, error) {
	it := InspectedTable{Family: f.name, Name: tableName}
	kt, err := readTable(conn, f, true)
	if err != nil {
		return it, fmt.Errorf("inspect: %w", err)
	}
	it.Exists = kt.exists
	if !kt.exists && d == nil {
		return it, nil
	}
	if !kt.exists {
		it.Drift = append(it.Drift, "table missing")
	}
	specs := setSpecs(f)
	specOf := func(name string) (setSpec, bool) {
		i := slices.IndexFunc(specs, func(s setSpec) bool { return s.name == name })
		if i < 0 {
			return setSpec{}, false
		}
		return specs[i], true
	}

	// Named sets, and the frontends pointing at each chain.
	frontends := map[string][]string{}
	for _, name := range slices.Sorted(maps.Keys(kt.sets)) {
		s := kt.sets[name]
		if s.Anonymous || isAnonymousSetName(name) {
			continue
		}
		keyType, dataType, isMap := s.KeyType, s.DataType, s.IsMap
		if spec, ok := specOf(name); ok {
			keyType, dataType, isMap = spec.keyType, spec.dataType, spec.isMap
		} else if spec, ok := portSetSpec(f, name); ok {
			keyType, dataType, isMap = spec.keyType, spec.dataType, spec.isMap
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return it, fmt.Errorf("inspect: elements of %s: %w", name, err)
		}
		is := InspectedSet{Name: name, Map: isMap, Elements: make([]string, 0, len(elems))}
		for _, e := range elems {
			is.Elements = append(is.Elements, renderElement(e, keyType, dataType, isMap))
			if isMap && !isAffinitySetName(name) {
				if v := verdictValueText(e.Val); strings.HasPrefix(v, "goto ") {
					chain := strings.TrimPrefix(v, "goto ")
					frontends[chain] = append(frontends[chain], name+" "+renderFields(typeNames(keyType), e.Key))
				}
			}
		}
		slices.SortFunc(is.Elements, naturalCompare)
		it.Sets = append(it.Sets, is)
	}

	anon := anonymousSetText(conn, kt)
	keyLen := setKeyLen(f)
	chains := map[string]*InspectedChain{}
	for name, kc := range kt.chains {
		ic := &InspectedChain{Name: name, Hook: strings.TrimPrefix(hookText(kc.chain), " ")}
		ic.Kind, ic.Service = chainKind(name)
		for _, r := range kc.raw {
			ir := InspectedRule{Text: renderRule(f, r.Exprs, ruleComment(r), anon, keyLen)}
			for _, e := range r.Exprs {
				if c, ok := e.(*expr.Counter); ok {
					ir.Counter = &Counter{Packets: c.Packets, Bytes: c.Bytes}
					out.Counters = true
				}
			}
			ic.Rules = append(ic.Rules, ir)
		}
		chains[name] = ic
	}
	if d != nil {
		compareTable(f, kt, d, chains, &it)
	}
	for _, name := range slices.Sorted(maps.Keys(chains)) {
		ic := chains[name]
		ic.Frontends = frontends[name]
		slices.SortFunc(ic.Frontends, naturalCompare)
		it.Chains = append(it.Chains, *ic)
	}
	return it, nil
}

// chainKind classifies a chain by its name and reads the Service port from
// it ("svc-HASH-ns/name/proto[/port]").
func chainKind(name string) (kind, service string) {
	for _, k := range []struct{ prefix, kind string }{
		{servicePortChainPrefix, "service"}, {localChainPrefix, "local"},
		{externalChainPrefix, "external"}, {firewallChainPrefix, "firewall"},
	} {
		rest, ok := strings.CutPrefix(name, k.prefix)
		if !ok {
			continue
		}
		_, readable, ok := strings.Cut(rest, "-")
		parts := strings.Split(readable, "/")
		if !ok || len(parts) < 3 || len(parts) > 4 {
			return k.kind, ""
		}
		n := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: parts[0], Name: parts[1]},
			Protocol: dataplane.Protocol(strings.ToUpper(parts[2]))}
		if len(parts) == 4 {
			n.Port = parts[3]
		}
		return k.kind, n.String()
	}
	return "fixed", ""
}

// compareTable records, on the chains and the table, how kt differs from
// d; it judges as planFull does, so an empty result means a full sync
// would write nothing.
func compareTable(f *family, kt *kernelTable, d *desiredTable, chains map[string]*InspectedChain, it *InspectedTable) {
	specs := setSpecs(f)
	portSets := d.state.portSets()
	allSets := append([]setSpec(nil), specs...)
	for _, name := range slices.Sorted(maps.Keys(portSets)) {
		allSets = append(allSets, portSets[name])
	}
	if kt.exists {
		for _, spec := range allSets {
			switch ks := kt.sets[spec.name]; {
			case ks == nil:
				it.Drift = append(it.Drift, "set "+spec.name+" missing")
			case !setMatches(ks, spec):
				it.Drift = append(it.Drift, "set "+spec.name+" has another type or flags")
			}
		}
		for _, name := range slices.Sorted(maps.Keys(kt.sets)) {
			s := kt.sets[name]
			_, portSet := portSets[name]
			if !s.Anonymous && !isAnonymousSetName(name) && !portSet && !slices.ContainsFunc(specs, func(sp setSpec) bool { return sp.name == name }) {
				it.Drift = append(it.Drift, "set "+name+" not wanted")
			}
		}
	}

	wanted := map[string]bool{}
	check := func(spec chainSpec, service string) {
		wanted[spec.name] = true
		ic := chains[spec.name]
		if ic == nil {
			ic = &InspectedChain{Name: spec.name, Missing: true, Drift: []string{"missing from the kernel"}}
			if spec.hook != nil {
				ic.Hook = strings.TrimPrefix(hookText(spec.chain(f.tableRef())), " ")
			}
			ic.Kind, _ = chainKind(spec.name)
			for _, r := range spec.rules {
				ic.Rules = append(ic.Rules, InspectedRule{Text: r.text})
			}
			chains[spec.name] = ic
		} else if kc := kt.chains[spec.name]; !hookMatches(kc.chain, spec.hook) {
			ic.Drift = append(ic.Drift, "hook differs from the wanted one")
		} else if want := ruleTexts(spec.rules); !slices.Equal(kc.rules, want) {
			ic.Drift = append(ic.Drift, rulesDiff(kc.rules, want))
		}
		ic.Service = service
	}
	for _, c := range d.skeleton {
		check(c, "")
	}
	for _, name := range slices.SortedFunc(maps.Keys(d.state.ports), dataplane.ServicePortName.Compare) {
		for _, c := range d.state.ports[name].chains {
			check(c, name.String())
		}
	}
	for name, ic := range chains {
		if !wanted[name] {
			ic.Drift = append(ic.Drift, "no Service wants it")
		}
	}

	wantElems := d.state.elements(specs)
	for _, spec := range specs {
		have, want := kt.elems[spec.name], wantElems[spec.name]
		render := func(k string) string { return spec.name + " " + renderFields(typeNames(spec.keyType), []byte(k)) }
		note := func(value, msg string) {
			if chain, ok := strings.CutPrefix(value, "goto "); ok && chains[chain] != nil {
				chains[chain].Drift = append(chains[chain].Drift, msg)
				return
			}
			it.Drift = append(it.Drift, msg)
		}
		for _, k := range slices.Sorted(maps.Keys(want)) {
			h, ok := have[k]
			switch {
			case !ok:
				note(want[k], "element "+render(k)+elemValue(want[k])+" missing")
			case h != want[k]:
				note(want[k], "element "+render(k)+elemValue(h)+", want"+elemValue(want[k]))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(have)) {
			if _, ok := want[k]; !ok {
				note(have[k], "element "+render(k)+elemValue(have[k])+" not wanted")
			}
		}
	}
	for _, ic := range chains {
		slices.Sort(ic.Drift)
	}
}

func elemValue(v string) string {
	if v == "" {
		return ""
	}
	return " : " + v
}

// rulesDiff describes the first difference between two rule lists.
func rulesDiff(have, want []string) string {
	for i := range max(len(have), len(want)) {
		switch {
		case i >= len(have):
			return fmt.Sprintf("rule %d missing: %s", i+1, want[i])
		case i >= len(want):
			return fmt.Sprintf("rule %d not wanted: %s", i+1, have[i])
		case have[i] != want[i]:
			return fmt.Sprintf("rule %d is %q, want %q", i+1, have[i], want[i])
		}
	}
	return "rules differ"
}

// Dump renders the inspection in a deterministic text, for tests and bug
// reports: per table its drift and sets (element counts), then each chain
// with its kind, Service, frontends, rules and drift.
func (in *Inspection) Dump() string {
	var b strings.Builder
	for _, t := range in.Tables {
		fmt.Fprintf(&b, "table %s %s", t.Family, t.Name)
		if !t.Exists {
			b.WriteString(" missing")
		}
		b.WriteByte('\n')
		for _, d := range t.Drift {
			b.WriteString("  drift: " + d + "\n")
		}
		for _, s := range t.Sets {
			kind := "set"
			if s.Map {
				kind = "map"
			}
			fmt.Fprintf(&b, "  %s %s: %d elements\n", kind, s.Name, len(s.Elements))
		}
		for _, c := range t.Chains {
			fmt.Fprintf(&b, "chain %s %s", c.Name, c.Kind)
			if c.Service != "" {
				b.WriteString(" svc=" + c.Service)
			}
			if c.Missing {
				b.WriteString(" missing")
			}
			if c.Hook != "" {
				b.WriteString(" {" + c.Hook + "}")
			}
			b.WriteByte('\n')
			for _, f := range c.Frontends {
				b.WriteString("  from " + f + "\n")
			}
			for _, r := range c.Rules {
				b.WriteString("  " + r.Text)
				if r.Counter != nil {
					fmt.Fprintf(&b, " [packets=%d bytes=%d]", r.Counter.Packets, r.Counter.Bytes)
				}
				b.WriteByte('\n')
			}
			for _, d := range c.Drift {
				b.WriteString("  drift: " + d + "\n")
			}
		}
	}
	return b.String()
}
