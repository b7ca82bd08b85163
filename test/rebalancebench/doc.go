// Package rebalancebench measures the connection rebalancer
// (switchyard.io/rebalance) at scale, the agent binary on the nftables
// dataplane in network namespaces: 1000 long-lived client connections
// (test/connfleet: a request every 100 ms, reconnect and retry at once on
// a reset) spread evenly over 2 backends, then the Service scales to 4.
// `make bench-rebalance` runs TestRebalanceBench, which needs root and
// -rebalance.bench, and does two phases in one run, on one agent and one
// topology (agentspec's: a client namespace, the node, 4 backends):
//
//   - off: a Service without the annotation (what every other proxy
//     does). The connections stay where they are: max/mean stays 2.
//   - on: a new Service, fresh connections, annotated
//     switchyard.io/rebalance "true" with tolerance 0.1, 200 resets/s and
//     a minimum age of 1 s. The rebalancer marks conntrack flows, the
//     dataplane resets them, the clients reconnect.
//
// Each phase records, from the clients' own view (the backend that
// answered each connection's last request), the connections per backend
// every 200 ms from 2 s before the scale-up until -rebalance.off or
// -rebalance.on after it, and reports:
//
//   - time to balance: from the scale-up to the first sample from which
//     max/mean <= 1.10 holds, with no client reconnecting, until the end
//     of the phase (sustained, not touched once);
//   - resets: connections the clients lost, and the agent's
//     switchyard_rebalance_resets_total for the Service;
//   - the minimum: the fewest resets that even the counts before the
//     scale-up out exactly (500 for 500/500 onto 4 backends), and the
//     fewest that reach max/mean <= 1.10 (450);
//   - failed requests: requests not answered within 4 attempts (each
//     attempt bounded by 2 s, a reconnect included);
//   - the agent's CPU: utime+stime of its process (and waited-for
//     children) over the phase's window, as % of one core.
//
// It prints a table and writes a PNG of the connections per backend over
// time, one panel per phase (-rebalance.png). The test process runs the
// clients and the echo servers on the same 2 cores as the agent, so the
// agent's CPU is its own but the timings share the machine.
package rebalancebench
