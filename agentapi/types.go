package agentapi

import "time"

// The JSON schema of API version 1. yardctl prints these types with -o json
// (and -o yaml, the same fields): scripts parse them, so a field is never
// renamed or removed and its meaning never changes within v1; new fields
// may be added. Every field is always present: lists are [] when empty,
// a null means "not known" where documented. Addresses are strings as Go's
// net/netip prints them ("10.96.0.10", "10.96.0.10:80", "[fd00::1]:80"),
// times RFC 3339. TestSchemaStability (schema_test.go) pins the names.

// Status is GET /v1/status, yardctl status.
type Status struct {
	// Version is the agent's version (its module version or VCS
	// revision; "(devel)" for a development build).
	Version string `json:"version"`
	// Dataplane is the kernel dataplane: "ipvs" or "nftables" ("" when
	// the agent runs without one it can inspect).
	Dataplane string `json:"dataplane"`
	// SyncChain names every part the sync loop runs, in order, e.g.
	// "iptables+ipvs+conntrack+healthcheck".
	SyncChain string `json:"syncChain"`
	NodeName  string `json:"nodeName"`
	// StartTime is when the agent started serving this API.
	StartTime time.Time `json:"startTime"`
	// LastSync is the end of the last successful sync; null before the
	// first one.
	LastSync *time.Time `json:"lastSync"`
	// LastError is the error of the last sync, "" when it succeeded.
	LastError string `json:"lastError"`
	// Syncs counts the successful syncs.
	Syncs int `json:"syncs"`
	// ServicePorts and Endpoints count the model as of the last sync.
	ServicePorts int `json:"servicePorts"`
	Endpoints    int `json:"endpoints"`
	// SocketLB: the BPF socket load balancer (--bpf-socket-lb) runs next
	// to the dataplane; false when it was not asked for or could not be
	// attached (the agent's log and switchyard_bpf_socket_lb_enabled say
	// why).
	SocketLB bool `json:"socketLB"`
}

// ServiceList is GET /v1/services, yardctl services.
type ServiceList struct {
	// Dataplane is the kernel dataplane ("ipvs", "nftables").
	Dataplane string `json:"dataplane"`
	// Services are sorted by namespace, name, port name and protocol.
	Services []Service `json:"services"`
}

// Service is one Service port as the agent programs it.
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// PortName is the Service port's name ("" for an unnamed port).
	PortName string `json:"portName"`
	// Protocol is "TCP", "UDP" or "SCTP".
	Protocol string `json:"protocol"`
	// Port is the port on the cluster, external and load balancer IPs.
	Port uint16 `json:"port"`
	// NodePort is 0 when the Service has none.
	NodePort        uint16   `json:"nodePort"`
	ClusterIPs      []string `json:"clusterIPs"`
	ExternalIPs     []string `json:"externalIPs"`
	LoadBalancerIPs []string `json:"loadBalancerIPs"`
	// Scheduler is how new connections pick a backend: the IPVS scheduler
	// ("rr", "wrr", ...) or "random" (nftables).
	Scheduler string `json:"scheduler"`
	// SessionAffinitySeconds is the ClientIP affinity timeout; 0 without
	// session affinity.
	SessionAffinitySeconds int `json:"sessionAffinitySeconds"`
	// ExternalTrafficPolicy and InternalTrafficPolicy are "Cluster" or
	// "Local".
	ExternalTrafficPolicy string `json:"externalTrafficPolicy"`
	InternalTrafficPolicy string `json:"internalTrafficPolicy"`
	// TopologyMode is "" (no topology), "PreferSameZone" or
	// "PreferSameNode": how the endpoints' hints narrow Cluster traffic
	// from this node.
	TopologyMode string `json:"topologyMode"`
	// Backends are the endpoints, then backends the dataplane still has
	// that are no endpoint any more (draining), by address.
	Backends []Backend `json:"backends"`
}

// Backend is one backend of a Service port.
type Backend struct {
	// Address is "ip:port".
	Address string `json:"address"`
	// Node and Zone are the endpoint's ("" when unknown).
	Node string `json:"node"`
	Zone string `json:"zone"`
	// State is "ready", "serving" (serving but not ready, not
	// terminating), "terminating", "notready" or "draining" (no endpoint
	// any more; the dataplane keeps it for its open connections).
	State string `json:"state"`
	// Weight is its share of new connections: IPVS, the real server's
	// weight (the highest over the Service port's virtual servers); nftables,
	// 1 when some traffic from this node may reach it and 0 otherwise.
	Weight int `json:"weight"`
	// Connections are null when unknown.
	Connections *Connections `json:"connections"`
	// BPFConnections are the socket load balancer's counts of the
	// backend's established TCP connections; null when it does not run,
	// and for UDP and SCTP ports (it counts TCP only).
	BPFConnections *BPFConnections `json:"bpfConnections"`
}

// Connections counts a backend's connections: IPVS, the real servers'
// counters summed over the Service port's virtual servers (inactive
// includes TIME_WAIT and every UDP flow); nftables, conntrack entries of
// the Service port's frontends towards it (active: TCP ESTABLISHED and
// every UDP and SCTP entry; inactive: other TCP states).
type Connections struct {
	Active   int `json:"active"`
	Inactive int `json:"inactive"`
}

// BPFConnections counts a backend's established TCP connections as the
// socket load balancer's sockops program sees them on this node: every
// connection to the backend's address and port, whether the socket load
// balancer translated it or the application dialed the backend itself
// (connections the packet dataplane DNATs are not counted as out: their
// sockets are connected to the Service address).
type BPFConnections struct {
	// Out: sockets of this node (pods, host processes) connected to the
	// backend.
	Out uint64 `json:"out"`
	// In: connections the backend, on this node, accepted (from
	// anywhere).
	In uint64 `json:"in"`
}

// IPVSTable is GET /v1/ipvs, yardctl ipvs: the kernel's IPVS table.
type IPVSTable struct {
	// Source is "agent" (read by the agent, compared with its desired
	// state) or "kernel" (read by yardctl itself, the agent being down:
	// no Service names, no drift).
	Source string `json:"source"`
	// DriftChecked: virtual servers were compared with the desired state.
	DriftChecked bool `json:"driftChecked"`
	// Stats: the traffic counters were read.
	Stats bool `json:"stats"`
	// VirtualServers in address order, firewall-mark ones last.
	VirtualServers []IPVSVirtualServer `json:"virtualServers"`
}

// IPVSVirtualServer is one IPVS virtual service.
type IPVSVirtualServer struct {
	// Address is "ip:port"; "" for a firewall-mark virtual server.
	Address string `json:"address"`
	// Protocol is "TCP", "UDP", "SCTP" ("proto-N" for others); "" for a
	// firewall-mark virtual server.
	Protocol     string `json:"protocol"`
	FirewallMark uint32 `json:"firewallMark"`
	Scheduler    string `json:"scheduler"`
	// PersistenceSeconds is the persistence timeout; 0 without.
	PersistenceSeconds uint32 `json:"persistenceSeconds"`
	// Owned: switchyard owns it (its address is on the dummy link, or
	// the agent's state file lists it). Not owned: another program's;
	// switchyard never touches it.
	Owned bool `json:"owned"`
	// Missing: the desired state wants it and the kernel has none.
	Missing bool `json:"missing"`
	// Service is the Service port that wants it
	// ("namespace/name:port/protocol"), "" when none (or unknown).
	Service string `json:"service"`
	// Drift lists how it differs from the desired state; [] when it
	// matches or was not checked.
	Drift []string `json:"drift"`
	// Stats are null when not read.
	Stats       *IPVSStats       `json:"stats"`
	RealServers []IPVSRealServer `json:"realServers"`
}

// IPVSRealServer is one real server of a virtual server.
type IPVSRealServer struct {
	Address string `json:"address"`
	// Forward is "masq", "local", "tunnel", "route" or "bypass".
	Forward string `json:"forward"`
	Weight  int    `json:"weight"`
	// DesiredWeight is null when the desired state does not list it (it
	// drains) or was not checked.
	DesiredWeight *int `json:"desiredWeight"`
	// Missing: wanted, not in the kernel.
	Missing bool `json:"missing"`
	// DrainingSince is null unless switchyard is draining it.
	DrainingSince       *time.Time `json:"drainingSince"`
	ActiveConnections   int        `json:"activeConnections"`
	InactiveConnections int        `json:"inactiveConnections"`
	// UpperThreshold and LowerThreshold are the connection limits
	// (switchyard.io/max-connections-per-backend); 0 is none.
	UpperThreshold int        `json:"upperThreshold"`
	LowerThreshold int        `json:"lowerThreshold"`
	Stats          *IPVSStats `json:"stats"`
}

// IPVSStats are counters since the object was created (ipvsadm --stats).
type IPVSStats struct {
	Connections uint64 `json:"connections"`
	PacketsIn   uint64 `json:"packetsIn"`
	PacketsOut  uint64 `json:"packetsOut"`
	BytesIn     uint64 `json:"bytesIn"`
	BytesOut    uint64 `json:"bytesOut"`
}

// NFTables is GET /v1/nftables, yardctl nft: switchyard's nftables tables.
type NFTables struct {
	// Source as in IPVSTable ("agent" or "kernel").
	Source       string `json:"source"`
	DriftChecked bool   `json:"driftChecked"`
	// Counters: some rule carries a counter. The dataplane puts none in
	// its rules; see Connections and yardctl conntrack for traffic.
	Counters bool       `json:"counters"`
	Tables   []NFTTable `json:"tables"`
}

// NFTTable is one family's table ("ip switchyard", "ip6 switchyard").
type NFTTable struct {
	Family string `json:"family"`
	Name   string `json:"name"`
	Exists bool   `json:"exists"`
	// Drift lists differences not tied to one chain.
	Drift  []string   `json:"drift"`
	Sets   []NFTSet   `json:"sets"`
	Chains []NFTChain `json:"chains"`
}

// NFTSet is a named set or map with its elements, as nft renders them.
type NFTSet struct {
	Name     string   `json:"name"`
	Map      bool     `json:"map"`
	Elements []string `json:"elements"`
}

// NFTChain is one chain of the table.
type NFTChain struct {
	Name string `json:"name"`
	// Kind is "service", "local", "external", "firewall" or "fixed".
	Kind string `json:"kind"`
	// Service is the Service port ("" for fixed chains).
	Service string `json:"service"`
	// Hook is "" for regular chains.
	Hook string `json:"hook"`
	// Frontends are the map elements leading here
	// ("service-ips 10.96.0.10 . tcp . 80").
	Frontends []string  `json:"frontends"`
	Rules     []NFTRule `json:"rules"`
	// Missing: wanted, not in the kernel.
	Missing bool     `json:"missing"`
	Drift   []string `json:"drift"`
}

// NFTRule is one rule; the counter fields are null without a counter.
type NFTRule struct {
	Text    string  `json:"text"`
	Packets *uint64 `json:"packets"`
	Bytes   *uint64 `json:"bytes"`
}

// ConntrackReport is GET /v1/conntrack, yardctl conntrack.
type ConntrackReport struct {
	// Source as in IPVSTable; with "kernel" flows are grouped by the
	// destination clients used, without Service names.
	Source   string             `json:"source"`
	Services []ConntrackService `json:"services"`
	// SocketLB: the socket load balancer runs and Sockets were read from
	// it (the agent's view only: false with Source "kernel").
	SocketLB bool `json:"socketLB"`
	// Sockets are the established TCP sockets the socket load balancer
	// counts (those of the selected Service ports' backends when the
	// request names Services), oldest first; [] when it does not run.
	// Connections it translated never reach conntrack as DNATed flows:
	// they are here, not in Services.
	Sockets []SocketLBSocket `json:"sockets"`
}

// SocketLBSocket is one established TCP socket on this node to or of a
// backend, as the socket load balancer records it.
type SocketLBSocket struct {
	// Cookie is the kernel's socket cookie.
	Cookie uint64 `json:"cookie"`
	// Direction is "out" (a socket of this node connected to a backend)
	// or "in" (a backend on this node accepted it).
	Direction string `json:"direction"`
	// Local and Remote are the socket's addresses ("ip:port") as the
	// kernel has them: for a translated socket Remote is the backend.
	Local  string `json:"local"`
	Remote string `json:"remote"`
	// Frontend is the Service address the application dialed and sees as
	// its peer (getpeername), "" when the socket load balancer did not
	// translate the socket.
	Frontend string `json:"frontend"`
	// Service is the Service port of Frontend
	// ("namespace/name:port/protocol"), "" when not translated or no
	// longer known.
	Service string `json:"service"`
	// Established is when the connection was established.
	Established time.Time `json:"established"`
	// NetnsCookie identifies the socket's network namespace.
	NetnsCookie uint64 `json:"netnsCookie"`
}

// ConntrackService is the conntrack entries of one Service port.
type ConntrackService struct {
	// Service is "namespace/name:port/protocol"; "" when unknown.
	Service string `json:"service"`
	// Frontends are the destinations the entries were sent to
	// ("10.96.0.10:80/TCP").
	Frontends []string           `json:"frontends"`
	Backends  []ConntrackBackend `json:"backends"`
	// Established sums the backends' (see ConntrackBackend).
	Established int `json:"established"`
	Other       int `json:"other"`
	// Max and Mean are over the current endpoints (every backend seen
	// when the endpoints are unknown); Imbalance is Max/Mean, 0 without
	// established connections.
	Max       int     `json:"max"`
	Mean      float64 `json:"mean"`
	Imbalance float64 `json:"imbalance"`
	// Rebalance is the connection rebalancer's view of a port that opted
	// in (switchyard.io/rebalance); absent otherwise.
	Rebalance *ConntrackRebalance `json:"rebalance,omitempty"`
}

// ConntrackRebalance is the rebalancer's last round for one Service port.
type ConntrackRebalance struct {
	// DryRun: the port only plans (switchyard.io/rebalance-dry-run).
	DryRun    bool    `json:"dryRun"`
	Tolerance float64 `json:"tolerance"`
	// LastRound is when the last round ran; zero before the first one.
	LastRound time.Time `json:"lastRound"`
	// Outcome: balanced, shed, dry-run, settling, rate-limited, min-age,
	// single-backend, no-connections ("" before the first round).
	Outcome string `json:"outcome"`
	// Ratio is max/mean as the round measured it (all mechanisms,
	// reconnects in flight placed); RatioAfter what the plan leads to.
	Ratio      float64 `json:"ratio"`
	RatioAfter float64 `json:"ratioAfter"`
	// Planned: connections the plan sheds; Closed: closed by the round
	// (rate limited); Resets: closed since the port opted in.
	Planned int `json:"planned"`
	Closed  int `json:"closed"`
	Resets  int `json:"resets"`
	// Backends: per backend, the connections the round measured and,
	// while reconnects are expected, the steering weight new connections
	// get (0: none steered there).
	Backends []RebalanceBackend `json:"backends"`
}

// RebalanceBackend is one backend in ConntrackRebalance.
type RebalanceBackend struct {
	Address     string `json:"address"`
	Connections int    `json:"connections"`
	// Expected is where the plan leaves it once the shed reconnect.
	Expected int `json:"expected"`
	// Weight is the steering weight; 0 with Steering off.
	Weight int `json:"weight"`
}

// ConntrackBackend is the entries DNATed to one backend.
type ConntrackBackend struct {
	Address string `json:"address"`
	// Endpoint: a current endpoint of the Service port (false: a removed
	// backend still holding connections, or unknown).
	Endpoint bool `json:"endpoint"`
	// Established: TCP entries in state ESTABLISHED, and every UDP and
	// SCTP entry (conntrack has no connection state for them here).
	Established int `json:"established"`
	// Other: TCP entries in any other state (SYN_SENT, TIME_WAIT, ...).
	Other int `json:"other"`
}

// Trace is GET /v1/trace, yardctl trace: what happens to a new connection
// to a destination.
type Trace struct {
	// Destination is "ip:port".
	Destination string `json:"destination"`
	// Protocol is "TCP", "UDP", "SCTP", or "" for any.
	Protocol  string `json:"protocol"`
	Dataplane string `json:"dataplane"`
	// Matches are the Service ports with that frontend, by name; [] when
	// none (the packet is not a Service's on this node).
	Matches []TraceMatch `json:"matches"`
}

// TraceMatch is one Service port a traced packet belongs to.
type TraceMatch struct {
	Service  string `json:"service"`
	Protocol string `json:"protocol"`
	// Frontend is "clusterIP", "externalIP", "loadBalancerIP" or
	// "nodePort".
	Frontend string `json:"frontend"`
	// TrafficPolicy is the policy that applies: internalTrafficPolicy for
	// a cluster IP, externalTrafficPolicy otherwise ("Cluster", "Local").
	TrafficPolicy string `json:"trafficPolicy"`
	// Result is "forward" (to a chosen backend), "reject" (connection
	// refused), "drop" (the client retries) or "shadowed" (another
	// Service port holds this frontend).
	Result string `json:"result"`
	// Backends lists the endpoints of the destination's family, chosen
	// or not (see TraceBackend.Why).
	Backends []TraceBackend `json:"backends"`
	// Reasons explain the result: policy, topology, affinity, scheduler,
	// source ranges, fallbacks.
	Reasons []string `json:"reasons"`
	// Dataplane lists the kernel objects the packet meets (virtual
	// server and real servers, or map elements and chains).
	Dataplane []string `json:"dataplane"`
}

// TraceBackend is one endpoint in a trace.
type TraceBackend struct {
	Address string `json:"address"`
	Node    string `json:"node"`
	Zone    string `json:"zone"`
	// State as in Backend.
	State string `json:"state"`
	// Chosen: new connections of this traffic may go there.
	Chosen bool `json:"chosen"`
	// Why it is not chosen; "" when chosen.
	Why string `json:"why"`
}

// SyncResponse is POST /v1/sync, yardctl sync.
type SyncResponse struct {
	// Requested: a full sync is scheduled (it runs within the agent's
	// --min-sync-period).
	Requested bool `json:"requested"`
	// Status is the agent's status when the request was made.
	Status Status `json:"status"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}
