package cli

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/switchyard/switchyard/agentapi"
)

// The table formats: pure functions of the API types (and, for relative
// times, now), so golden tests are deterministic. Columns are aligned with
// text/tabwriter; a "-" marks an empty cell.

// table aligns rows of tab-separated cells. Every row of a block must
// have the same number of cells (empty ones included) for the columns to
// line up; trailing blanks are trimmed on Flush.
type table struct {
	w   io.Writer
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTab(w io.Writer) *table {
	t := &table{w: w}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	return t
}

func (t *table) Write(p []byte) (int, error) { return t.tw.Write(p) }

// row writes one row of cells.
func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

// Flush aligns and writes what was written so far.
func (t *table) Flush() {
	t.tw.Flush()
	for _, line := range strings.SplitAfter(t.buf.String(), "\n") {
		if line == "" {
			continue
		}
		fmt.Fprintln(t.w, strings.TrimRight(line, " \n"))
	}
	t.buf.Reset()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// FormatStatus prints yardctl status.
func FormatStatus(w io.Writer, st *agentapi.Status, now time.Time) {
	tw := newTab(w)
	fmt.Fprintf(tw, "Agent:\trunning, version %s\n", dash(st.Version))
	fmt.Fprintf(tw, "Node:\t%s\n", dash(st.NodeName))
	fmt.Fprintf(tw, "Dataplane:\t%s (sync chain %s)\n", dash(st.Dataplane), dash(st.SyncChain))
	if st.SocketLB {
		fmt.Fprintf(tw, "Socket LB:\ton (BPF: this node's connections to Services go straight to a backend; see services, conntrack)\n")
	}
	fmt.Fprintf(tw, "Started:\t%s\n", when(st.StartTime, now))
	if st.LastSync == nil {
		fmt.Fprintf(tw, "Last sync:\tnone yet\n")
	} else {
		fmt.Fprintf(tw, "Last sync:\t%s, %d successful syncs\n", when(*st.LastSync, now), st.Syncs)
	}
	fmt.Fprintf(tw, "Last error:\t%s\n", orNone(st.LastError))
	fmt.Fprintf(tw, "Model:\t%d Service ports, %d endpoints\n", st.ServicePorts, st.Endpoints)
	tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func when(t, now time.Time) string {
	return t.UTC().Format(time.RFC3339) + " (" + ago(now.Sub(t)) + ")"
}

func ago(d time.Duration) string {
	if d < 0 {
		return "in the future"
	}
	return d.Round(time.Second).String() + " ago"
}

// FormatServices prints yardctl services: one line per Service port.
// With the socket load balancer running, each TCP backend also shows its
// BPF counts: sockets of this node connected to it / connections it
// accepted on this node.
func FormatServices(w io.Writer, sl *agentapi.ServiceList) {
	if len(sl.Services) == 0 {
		fmt.Fprintln(w, "No Service ports.")
		return
	}
	bpf := false
	for _, s := range sl.Services {
		for _, b := range s.Backends {
			bpf = bpf || b.BPFConnections != nil
		}
	}
	tw := newTab(w)
	hdr := "BACKENDS (weight state active/inactive)"
	if bpf {
		hdr = "BACKENDS (weight state active/inactive bpf out/in)"
	}
	fmt.Fprintln(tw, "SERVICE\tPORT\tPROTO\tVIPS\tNODEPORT\tDATAPLANE\t"+hdr)
	for _, s := range sl.Services {
		var vips []string
		for _, group := range [][]string{s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs} {
			for _, ip := range group {
				vips = append(vips, hostPort(ip, s.Port))
			}
		}
		nodePort := "-"
		if s.NodePort != 0 {
			nodePort = strconv.Itoa(int(s.NodePort))
		}
		dp := dash(sl.Dataplane)
		if s.Scheduler != "" {
			dp += "/" + s.Scheduler
		}
		var bes []string
		for _, b := range s.Backends {
			conns := "-"
			if b.Connections != nil {
				conns = fmt.Sprintf("%d/%d", b.Connections.Active, b.Connections.Inactive)
			}
			if b.BPFConnections != nil {
				conns += fmt.Sprintf(" bpf %d/%d", b.BPFConnections.Out, b.BPFConnections.In)
			}
			bes = append(bes, fmt.Sprintf("%s(w%d %s %s)", b.Address, b.Weight, b.State, conns))
		}
		if len(bes) == 0 {
			bes = []string{"<none>"}
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, dash(s.PortName), s.Protocol,
			dash(strings.Join(vips, ",")), nodePort, dp, strings.Join(bes, " "))
	}
	tw.Flush()
}

func hostPort(ip string, port uint16) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]:" + strconv.Itoa(int(port))
	}
	return ip + ":" + strconv.Itoa(int(port))
}

// FormatIPVS prints yardctl ipvs: ipvsadm -Ln --stats with owners and
// drift.
func FormatIPVS(w io.Writer, t *agentapi.IPVSTable, note string) {
	switch {
	case t.Source == agentapi.SourceKernel:
		fmt.Fprintf(w, "IPVS table read from the kernel by yardctl (%s): no Service names, no drift check.\n", note)
	case t.DriftChecked:
		fmt.Fprintln(w, "IPVS table read by the agent and compared with its desired state.")
	}
	if len(t.VirtualServers) == 0 {
		fmt.Fprintln(w, "No virtual servers.")
		return
	}
	tw := newTab(w)
	hdr := []string{"PROT", "LOCALADDRESS:PORT", "SCHED", "WEIGHT", "ACTIVE", "INACTIVE"}
	if t.Stats {
		hdr = append(hdr, "CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES")
	}
	hdr = append(hdr, "OWNER")
	if t.DriftChecked {
		hdr = append(hdr, "DRIFT")
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	var drift []string
	for _, vs := range t.VirtualServers {
		prot, addr := vs.Protocol, vs.Address
		if vs.FirewallMark != 0 {
			prot, addr = "FWM", strconv.Itoa(int(vs.FirewallMark))
		}
		sched := vs.Scheduler
		if vs.PersistenceSeconds != 0 {
			sched += fmt.Sprintf(" persistent %d", vs.PersistenceSeconds)
		}
		var active, inactive int
		for _, rs := range vs.RealServers {
			active += rs.ActiveConnections
			inactive += rs.InactiveConnections
		}
		row := []string{prot, addr, sched, "", strconv.Itoa(active), strconv.Itoa(inactive)}
		row = append(row, statsCells(t.Stats, vs.Stats)...)
		row = append(row, owner(t, vs))
		if t.DriftChecked {
			row = append(row, driftCell(vs))
			for _, d := range vs.Drift {
				drift = append(drift, fmt.Sprintf("%s %s: %s", prot, addr, d))
			}
		}
		tw.row(row...)
		for _, rs := range vs.RealServers {
			weight := strconv.Itoa(rs.Weight)
			if rs.DesiredWeight != nil && *rs.DesiredWeight != rs.Weight && !rs.Missing {
				weight += fmt.Sprintf(" (want %d)", *rs.DesiredWeight)
			}
			r := []string{"", "  -> " + rs.Address, rs.Forward, weight, strconv.Itoa(rs.ActiveConnections), strconv.Itoa(rs.InactiveConnections)}
			r = append(r, statsCells(t.Stats, rs.Stats)...)
			var notes []string
			switch {
			case rs.Missing:
				notes = append(notes, "missing")
			case rs.DrainingSince != nil:
				notes = append(notes, "draining since "+rs.DrainingSince.UTC().Format(time.RFC3339))
			case t.DriftChecked && vs.Owned && !vs.Missing && rs.DesiredWeight == nil:
				notes = append(notes, "not wanted")
			}
			if rs.UpperThreshold > 0 {
				notes = append(notes, fmt.Sprintf("limit %d conns (thresholds %d/%d)", rs.UpperThreshold, rs.UpperThreshold, rs.LowerThreshold))
			}
			r = append(r, strings.Join(notes, ", "))
			if t.DriftChecked {
				r = append(r, "")
			}
			tw.row(r...)
		}
	}
	tw.Flush()
	if len(drift) > 0 {
		fmt.Fprintln(w, "\nDrift (a full sync repairs what switchyard owns):")
		for _, d := range drift {
			fmt.Fprintln(w, "  "+d)
		}
	}
}

func statsCells(want bool, s *agentapi.IPVSStats) []string {
	if !want {
		return nil
	}
	if s == nil {
		return []string{"-", "-", "-", "-", "-"}
	}
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	return []string{u(s.Connections), u(s.PacketsIn), u(s.PacketsOut), u(s.BytesIn), u(s.BytesOut)}
}

func owner(t *agentapi.IPVSTable, vs agentapi.IPVSVirtualServer) string {
	switch {
	case !vs.Owned:
		if vs.Service != "" {
			return "not owned (wanted by " + vs.Service + ")"
		}
		return "not owned by switchyard"
	case vs.Service != "":
		return vs.Service
	case t.Source == agentapi.SourceKernel:
		return "switchyard"
	}
	return "switchyard (no Service)"
}

func driftCell(vs agentapi.IPVSVirtualServer) string {
	switch {
	case vs.Missing:
		return "missing"
	case len(vs.Drift) > 0:
		return "yes"
	}
	return "-"
}

// NFTOptions select what FormatNFTables prints.
type NFTOptions struct {
	// All prints the fixed chains too (base and helper chains); by
	// default only those that drifted are.
	All bool
	// Rules prints each printed chain's rules after the table.
	Rules bool
}

// FormatNFTables prints yardctl nft: per table one line per chain, Service
// chains first.
func FormatNFTables(w io.Writer, t *agentapi.NFTables, note string, opts NFTOptions) {
	switch {
	case t.Source == agentapi.SourceKernel:
		fmt.Fprintf(w, "nftables read from the kernel by yardctl (%s): Services from chain names, no drift check.\n", note)
	case t.DriftChecked:
		fmt.Fprintln(w, "nftables read by the agent and compared with its desired state.")
	}
	if !t.Counters {
		fmt.Fprintln(w, "Counters: none (the dataplane puts no counter in its rules; see yardctl conntrack for connections).")
	}
	if len(t.Tables) == 0 {
		fmt.Fprintln(w, "No switchyard table.")
		return
	}
	for _, tb := range t.Tables {
		state := ""
		if !tb.Exists {
			state = " (missing)"
		}
		fmt.Fprintf(w, "\ntable %s %s%s\n", tb.Family, tb.Name, state)
		var sets []string
		for _, s := range tb.Sets {
			sets = append(sets, fmt.Sprintf("%s %d", s.Name, len(s.Elements)))
		}
		if len(sets) > 0 {
			fmt.Fprintf(w, "sets (elements): %s\n", strings.Join(sets, ", "))
		}
		var chains []agentapi.NFTChain
		hidden := 0
		for _, c := range tb.Chains {
			if c.Kind == "fixed" && !opts.All && !c.Missing && len(c.Drift) == 0 {
				hidden++
				continue
			}
			chains = append(chains, c)
		}
		slices.SortStableFunc(chains, func(a, b agentapi.NFTChain) int {
			if (a.Service == "") != (b.Service == "") {
				if a.Service == "" {
					return 1
				}
				return -1
			}
			return strings.Compare(a.Service, b.Service)
		})
		tw := newTab(w)
		hdr := []string{"SERVICE", "CHAIN", "KIND", "FRONTENDS", "RULES"}
		if t.Counters {
			hdr = append(hdr, "PACKETS", "BYTES")
		}
		if t.DriftChecked {
			hdr = append(hdr, "DRIFT")
		}
		if len(chains) > 0 {
			fmt.Fprintln(tw, strings.Join(hdr, "\t"))
		}
		var drift []string
		for _, d := range tb.Drift {
			drift = append(drift, "table: "+d)
		}
		for _, c := range chains {
			fe := make([]string, 0, len(c.Frontends))
			for _, f := range c.Frontends {
				fe = append(fe, shortFrontend(f))
			}
			frontends := strings.Join(fe, ", ")
			if c.Hook != "" {
				frontends = "hook " + hookShort(c.Hook)
			}
			row := []string{dash(c.Service), c.Name, c.Kind, dash(frontends), strconv.Itoa(len(c.Rules))}
			if t.Counters {
				row = append(row, counterCells(c.Rules)...)
			}
			if t.DriftChecked {
				cell := "-"
				switch {
				case c.Missing:
					cell = "missing"
				case len(c.Drift) > 0:
					cell = "yes"
				}
				row = append(row, cell)
				for _, d := range c.Drift {
					drift = append(drift, "chain "+c.Name+": "+d)
				}
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		tw.Flush()
		if hidden > 0 {
			what := "as wanted"
			if !t.DriftChecked {
				what = "not shown"
			}
			fmt.Fprintf(w, "(%d fixed chains %s; --all shows them)\n", hidden, what)
		}
		if len(drift) > 0 {
			fmt.Fprintln(w, "Drift (a full sync repairs it):")
			for _, d := range drift {
				fmt.Fprintln(w, "  "+d)
			}
		}
		if opts.Rules {
			for _, c := range chains {
				fmt.Fprintf(w, "chain %s {\n", c.Name)
				for _, r := range c.Rules {
					line := r.Text
					if r.Packets != nil {
						line += fmt.Sprintf(" [packets %d bytes %d]", *r.Packets, *r.Bytes)
					}
					fmt.Fprintf(w, "\t%s\n", line)
				}
				fmt.Fprintln(w, "}")
			}
		}
	}
}

// shortFrontend turns "service-ips 10.96.0.10 . tcp . 80" into
// "10.96.0.10 . tcp . 80", "service-nodeports tcp . 30080" into
// "nodeport tcp . 30080" and "firewall-ips X" into "firewall X".
func shortFrontend(f string) string {
	set, rest, _ := strings.Cut(f, " ")
	switch set {
	case "service-ips":
		return rest
	case "service-nodeports":
		return "nodeport " + rest
	case "firewall-ips":
		return "firewall " + rest
	}
	return f
}

// hookShort turns "type nat hook prerouting priority -100; policy accept"
// into "nat prerouting -100".
func hookShort(h string) string {
	f := strings.Fields(strings.ReplaceAll(h, ";", ""))
	if len(f) >= 6 && f[0] == "type" && f[2] == "hook" && f[4] == "priority" {
		return f[1] + " " + f[3] + " " + f[5]
	}
	return h
}

func counterCells(rules []agentapi.NFTRule) []string {
	var p, b uint64
	has := false
	for _, r := range rules {
		if r.Packets != nil {
			has = true
			p += *r.Packets
			b += *r.Bytes
		}
	}
	if !has {
		return []string{"-", "-"}
	}
	return []string{strconv.FormatUint(p, 10), strconv.FormatUint(b, 10)}
}

// FormatConntrack prints yardctl conntrack: per Service port one line per
// backend and a total with the imbalance; then, when the socket load
// balancer runs, its sockets.
func FormatConntrack(w io.Writer, r *agentapi.ConntrackReport, note string, now time.Time) {
	formatConntrackServices(w, r, note, now)
	if r.SocketLB {
		formatSockets(w, r.Sockets, now)
	}
}

func formatConntrackServices(w io.Writer, r *agentapi.ConntrackReport, note string, now time.Time) {
	if r.Source == agentapi.SourceKernel {
		fmt.Fprintf(w, "Conntrack read from the kernel by yardctl (%s): entries grouped by destination, no Service names.\n", note)
	}
	if len(r.Services) == 0 {
		fmt.Fprintln(w, "No Service connections.")
		return
	}
	fmt.Fprintln(w, "ESTABLISHED: TCP entries in ESTABLISHED and every UDP/SCTP entry; OTHER: TCP in other states.")
	tw := newTab(w)
	fmt.Fprintln(tw, "SERVICE\tBACKEND\tESTABLISHED\tOTHER\tNOTE")
	for _, s := range r.Services {
		name := s.Service
		if name == "" {
			name = strings.Join(s.Frontends, ",")
		}
		if len(s.Backends) == 0 {
			fmt.Fprintf(tw, "%s\t<none>\t0\t0\tno endpoints, no entries\n", name)
			continue
		}
		for i, b := range s.Backends {
			note := ""
			if !b.Endpoint && s.Service != "" {
				note = "not an endpoint"
			}
			first := ""
			if i == 0 {
				first = name
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", first, b.Address, b.Established, b.Other, note)
		}
		imb := "imbalance -"
		if s.Imbalance != 0 {
			imb = fmt.Sprintf("imbalance %.2f (max %d, mean %.2f)", s.Imbalance, s.Max, s.Mean)
		}
		fmt.Fprintf(tw, "\ttotal\t%d\t%d\t%s\n", s.Established, s.Other, imb)
		if s.Rebalance != nil {
			formatRebalance(tw, s.Rebalance, now)
		}
	}
	tw.Flush()
}

// formatRebalance adds the rebalancer's lines under an opted-in port's
// total: its last round, then per backend what it measured, where the
// plan leaves it and the steering weight (the counts include the socket
// load balancer's sockets, which the conntrack columns do not).
func formatRebalance(tw io.Writer, r *agentapi.ConntrackRebalance, now time.Time) {
	mode := "on"
	if r.DryRun {
		mode = "dry run"
	}
	if r.LastRound.IsZero() {
		fmt.Fprintf(tw, "\trebalance\t\t\t%s, tolerance %.2f: no round yet\n", mode, r.Tolerance)
		return
	}
	fmt.Fprintf(tw, "\trebalance\t\t\t%s, tolerance %.2f: last round %s ago: %s, ratio %.2f -> %.2f, planned %d, closed %d; %d reset in all\n",
		mode, r.Tolerance, now.Sub(r.LastRound).Round(time.Second), r.Outcome, r.Ratio, r.RatioAfter, r.Planned, r.Closed, r.Resets)
	for _, b := range r.Backends {
		steer := ""
		if b.Weight > 0 {
			steer = fmt.Sprintf(", steering weight %d", b.Weight)
		}
		fmt.Fprintf(tw, "\t  %s\t\t\trebalancer: %d now, %d expected%s\n", b.Address, b.Connections, b.Expected, steer)
	}
}

// formatSockets prints the socket load balancer's sockets, oldest first.
func formatSockets(w io.Writer, socks []agentapi.SocketLBSocket, now time.Time) {
	fmt.Fprintln(w, "\nSocket load balancer: established TCP sockets to and of backends (sockops); the ones it")
	fmt.Fprintln(w, "translated (FRONTEND set) connect straight to the backend and are not in conntrack as DNATed flows.")
	if len(socks) == 0 {
		fmt.Fprintln(w, "No sockets.")
		return
	}
	tw := newTab(w)
	fmt.Fprintln(tw, "DIRECTION\tLOCAL\tREMOTE\tFRONTEND\tSERVICE\tAGE")
	for _, s := range socks {
		age := "-"
		if !s.Established.IsZero() {
			age = now.Sub(s.Established).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Direction, s.Local, s.Remote, dash(s.Frontend), dash(s.Service), age)
	}
	tw.Flush()
}

// FormatTrace prints yardctl trace.
func FormatTrace(w io.Writer, t *agentapi.Trace) {
	dst := t.Destination
	if t.Protocol != "" {
		dst += "/" + t.Protocol
	}
	fmt.Fprintf(w, "Destination %s (dataplane %s)\n", dst, dash(t.Dataplane))
	if len(t.Matches) == 0 {
		fmt.Fprintln(w, "No Service on this node has this frontend (cluster IP, external IP, load balancer IP or NodePort): not translated.")
		return
	}
	for _, m := range t.Matches {
		fmt.Fprintf(w, "\n%s via %s (traffic policy %s): %s\n", m.Service, m.Frontend, m.TrafficPolicy, m.Result)
		if len(m.Backends) > 0 {
			tw := newTab(w)
			fmt.Fprintln(tw, "  BACKEND\tNODE\tZONE\tSTATE\tCHOSEN\tWHY NOT")
			for _, b := range m.Backends {
				chosen := "no"
				if b.Chosen {
					chosen = "yes"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", b.Address, dash(b.Node), dash(b.Zone), b.State, chosen, dash(b.Why))
			}
			tw.Flush()
		} else {
			fmt.Fprintln(w, "  no endpoints of this address family")
		}
		if len(m.Reasons) > 0 {
			fmt.Fprintln(w, "  Why:")
			for _, r := range m.Reasons {
				fmt.Fprintln(w, "    - "+r)
			}
		}
		if len(m.Dataplane) > 0 {
			fmt.Fprintln(w, "  Dataplane:")
			for _, d := range m.Dataplane {
				fmt.Fprintln(w, "    "+d)
			}
		}
	}
}

// FormatSync prints yardctl sync.
func FormatSync(w io.Writer, r *agentapi.SyncResponse, done *agentapi.Status, now time.Time) {
	if done != nil {
		fmt.Fprintf(w, "Full sync done: %d successful syncs, last %s.\n", done.Syncs, when(*done.LastSync, now))
		return
	}
	fmt.Fprintf(w, "Full sync requested (the agent had %d successful syncs).\n", r.Status.Syncs)
}
