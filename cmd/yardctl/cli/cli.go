// Package cli is yardctl, switchyard's debugging CLI for a person on the
// node, as a cobra command tree: cmd/yardctl runs it; tests run it in
// process (in a network namespace, or in the IPVS VM).
//
// yardctl talks to the agent's API on its unix socket (package agentapi)
// and, when the agent is down, reads the kernel itself for ipvs, nft and
// conntrack. Every command prints a table (aligned, for people), JSON (the
// stable schema of agentapi, for scripts) or YAML (the same fields).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/ipvs"
)

// Env is what the commands use besides their flags.
type Env struct {
	Stdout, Stderr io.Writer
	// Kernel is read when the agent is down; nil means this process's
	// network namespace (NetnsKernel{}).
	Kernel Kernel
	// Now is the clock for relative times; nil means time.Now.
	Now func() time.Time
	// PollInterval is how often sync --wait asks for the status; 0 means
	// 200ms.
	PollInterval time.Duration
}

// Output formats.
const (
	OutputTable = "table"
	OutputJSON  = "json"
	OutputYAML  = "yaml"
)

type options struct {
	env       Env
	socket    string
	output    string
	stateDir  string
	dummyLink string
	namespace string
}

func (o *options) client() *agentapi.Client { return agentapi.NewClient(o.socket) }

func (o *options) now() time.Time {
	if o.env.Now != nil {
		return o.env.Now()
	}
	return time.Now()
}

// NewCommand returns the yardctl command tree.
func NewCommand(env Env) *cobra.Command {
	if env.Stdout == nil {
		env.Stdout = os.Stdout
	}
	if env.Stderr == nil {
		env.Stderr = os.Stderr
	}
	if env.Kernel == nil {
		env.Kernel = NetnsKernel{}
	}
	o := &options{env: env}
	root := &cobra.Command{
		Use:   "yardctl",
		Short: "Inspect and nudge the switchyard agent on this node",
		Long: "yardctl shows what the switchyard agent on this node programs and why: Services and their backends,\n" +
			"the IPVS and nftables dataplanes (with drift against the agent's desired state), conntrack balance,\n" +
			"and the path of a packet to a destination. It talks to the agent's API on a unix socket (root only);\n" +
			"when the agent is down, ipvs, nft and conntrack read the kernel directly.",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch o.output {
			case OutputTable, OutputJSON, OutputYAML:
				return nil
			}
			return fmt.Errorf("-o %q: must be table, json or yaml", o.output)
		},
	}
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&o.socket, "socket", agentapi.DefaultSocket, "the agent's API socket")
	pf.StringVarP(&o.output, "output", "o", OutputTable, "output format: table, json or yaml (JSON: the stable schema scripts parse)")
	pf.StringVar(&o.stateDir, "state-dir", ipvs.DefaultStateDir, "the agent's --state-dir (IPVS ownership when the agent is down)")
	pf.StringVar(&o.dummyLink, "ipvs-dummy-link", ipvs.DefaultLinkName, "the agent's --ipvs-dummy-link (IPVS ownership when the agent is down)")

	root.AddCommand(o.statusCmd(), o.servicesCmd(), o.ipvsCmd(), o.nftCmd(), o.conntrackCmd(), o.traceCmd(), o.syncCmd())
	return root
}

// print writes v in the chosen format; table formats through tbl.
func (o *options) print(v any, tbl func(io.Writer)) error {
	w := o.env.Stdout
	switch o.output {
	case OutputJSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	case OutputYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	tbl(w)
	return nil
}

// needAgent turns "agent down" into an error that says what is missing.
func needAgent(what string, err error) error {
	if errors.Is(err, agentapi.ErrAgentDown) {
		return fmt.Errorf("%s needs the agent: %w", what, err)
	}
	return err
}

func (o *options) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Agent version, dataplane, last sync and errors",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := o.client().Status(cmd.Context())
			if err != nil {
				return needAgent("status", err)
			}
			return o.print(st, func(w io.Writer) { FormatStatus(w, st, o.now()) })
		},
	}
}

func (o *options) servicesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "services [NAMESPACE/NAME | NAME]",
		Short: "One line per Service port: VIPs, NodePort, dataplane, backends with weight, state and connections",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name := o.filter(args)
			sl, err := o.client().Services(cmd.Context(), ns, name)
			if err != nil {
				return needAgent("services", err)
			}
			return o.print(sl, func(w io.Writer) { FormatServices(w, sl) })
		},
	}
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "", "only Services of this namespace")
	return cmd
}

func (o *options) filter(args []string) (namespace, name string) {
	namespace = o.namespace
	if len(args) == 1 {
		ns, n := agentapi.ParseServiceName(args[0])
		if ns != "" {
			namespace = ns
		}
		name = n
	}
	return namespace, name
}

// fallback says why yardctl reads the kernel itself, or returns err when
// it should not.
func fallback(err error) (string, error) {
	switch {
	case errors.Is(err, agentapi.ErrAgentDown):
		return "agent down", nil
	case agentapi.IsNotFound(err):
		var ae *agentapi.APIError
		errors.As(err, &ae)
		return ae.Message, nil
	}
	return "", err
}

func (o *options) ipvsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ipvs",
		Short: "The kernel's IPVS table with stats, owners and drift (ipvsadm -Ln --stats)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := o.client().IPVS(cmd.Context())
			note := ""
			if err != nil {
				if note, err = fallback(err); err != nil {
					return err
				}
				if t, err = o.env.Kernel.IPVS(o.stateDir, o.dummyLink); err != nil {
					return fmt.Errorf("read ipvs (%s): %w", note, err)
				}
			}
			return o.print(t, func(w io.Writer) { FormatIPVS(w, t, note) })
		},
	}
}

func (o *options) nftCmd() *cobra.Command {
	var opts NFTOptions
	cmd := &cobra.Command{
		Use:   "nft",
		Short: "switchyard's nftables tables: chains per Service, frontends, counters and drift",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := o.client().NFTables(cmd.Context())
			note := ""
			if err != nil {
				if note, err = fallback(err); err != nil {
					return err
				}
				if t, err = o.env.Kernel.NFTables(); err != nil {
					return fmt.Errorf("read nftables (%s): %w", note, err)
				}
			}
			return o.print(t, func(w io.Writer) { FormatNFTables(w, t, note, opts) })
		},
	}
	cmd.Flags().BoolVarP(&opts.Rules, "rules", "r", false, "also print the rules of the chains shown")
	cmd.Flags().BoolVarP(&opts.All, "all", "a", false, "show the fixed chains (base and helper chains) too, not only those that drifted")
	return cmd
}

func (o *options) conntrackCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conntrack [NAMESPACE/NAME | NAME | IP:PORT[/PROTO]]",
		Short: "Established connections per backend from conntrack, with the imbalance (max/mean), and the socket load balancer's sockets",
		Long: "Established connections per backend from conntrack, with the imbalance ratio (max/mean over the\n" +
			"endpoints). When the agent runs the BPF socket load balancer (--bpf-socket-lb), its sockets follow:\n" +
			"direction, local and remote address, the Service frontend it translated, Service and age.\n" +
			"With the agent down, entries are grouped by destination; filter them with IP:PORT[/PROTO].",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name := o.filter(args)
			r, err := o.client().Conntrack(cmd.Context(), ns, name)
			note := ""
			if err != nil {
				if note, err = fallback(err); err != nil {
					return err
				}
				if r, err = o.kernelConntrack(args); err != nil {
					return err
				}
			}
			return o.print(r, func(w io.Writer) { FormatConntrack(w, r, note, o.now()) })
		},
	}
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "", "only Services of this namespace")
	return cmd
}

func (o *options) kernelConntrack(args []string) (*agentapi.ConntrackReport, error) {
	var want string
	if len(args) == 1 {
		dst, proto, err := agentapi.ParseDestination(args[0])
		if err != nil {
			return nil, fmt.Errorf("the agent is down, so Service names are unknown: give a destination IP:PORT[/PROTO] (%w)", err)
		}
		want = dst.String()
		if proto != "" {
			want += "/" + string(proto)
		}
	}
	flows, err := o.env.Kernel.Flows()
	if err != nil {
		return nil, fmt.Errorf("read conntrack: %w", err)
	}
	r := agentapi.KernelConntrack(flows)
	if want != "" {
		var keep []agentapi.ConntrackService
		for _, s := range r.Services {
			for _, fe := range s.Frontends {
				if fe == want || strings.HasPrefix(fe, want+"/") {
					keep = append(keep, s)
					break
				}
			}
		}
		r.Services = append([]agentapi.ConntrackService{}, keep...)
	}
	return r, nil
}

func (o *options) traceCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "trace IP:PORT[/PROTO]",
		Short: "Which Service, rules or virtual server and backends a new connection to a destination reaches, and why",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, err := agentapi.ParseDestination(args[0]); err != nil {
				return err
			}
			t, err := o.client().Trace(cmd.Context(), args[0])
			if err != nil {
				return needAgent("trace", err)
			}
			return o.print(t, func(w io.Writer) { FormatTrace(w, t) })
		},
	}
}

func (o *options) syncCmd() *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Ask the agent for a full sync now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := o.client()
			r, err := c.Sync(cmd.Context())
			if err != nil {
				return needAgent("sync", err)
			}
			if !wait {
				return o.print(r, func(w io.Writer) { FormatSync(w, r, nil, o.now()) })
			}
			st, err := o.waitSync(cmd.Context(), c, r.Status.Syncs, timeout)
			if err != nil {
				return err
			}
			return o.print(st, func(w io.Writer) { FormatSync(w, r, st, o.now()) })
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for a successful sync after the request and print the status")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long --wait waits")
	return cmd
}

// waitSync polls the status until the agent counts a successful sync more
// than before.
func (o *options) waitSync(ctx context.Context, c *agentapi.Client, before int, timeout time.Duration) (*agentapi.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	every := o.env.PollInterval
	if every == 0 {
		every = 200 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Syncs > before && st.LastSync != nil {
			return st, nil
		}
		if ctx.Err() != nil {
			if err == nil && st.LastError != "" {
				return nil, fmt.Errorf("no successful sync within %v; last error: %s", timeout, st.LastError)
			}
			return nil, fmt.Errorf("no successful sync within %v", timeout)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}
