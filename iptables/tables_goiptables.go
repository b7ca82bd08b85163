package iptables

import (
	"errors"
	"fmt"
	"strings"

	goiptables "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netns"
)

// GoIPTables is the real Tables: coreos/go-iptables, which execs the
// iptables binary for every call.
type GoIPTables struct {
	ipt *goiptables.IPTables
	run nsRunner
	fam Family
}

var _ Tables = (*GoIPTables)(nil)

// TablesOption configures NewTables.
type TablesOption func(*tablesConfig)

type tablesConfig struct {
	binary      string
	ns          netns.NsHandle
	hasNS       bool
	lockTimeout int
	fam         Family
}

// WithFamily selects the IP family: FamilyINet (default) runs iptables,
// FamilyINet6 ip6tables (its default binary becomes "ip6tables"; with
// WithBinary, pass an ip6tables binary such as "ip6tables-legacy").
func WithFamily(fam Family) TablesOption {
	return func(c *tablesConfig) { c.fam = fam }
}

// WithBinary selects the iptables binary, e.g. "iptables-legacy" or
// "iptables-nft"; default "iptables" from PATH.
func WithBinary(path string) TablesOption {
	return func(c *tablesConfig) { c.binary = path }
}

// WithNetNS makes every call run in network namespace ns (see runInNetNS).
// ns must stay open as long as the Tables is used.
func WithNetNS(ns netns.NsHandle) TablesOption {
	return func(c *tablesConfig) { c.ns, c.hasNS = ns, true }
}

// NewTables returns a Tables for IPv4, or IPv6 WithFamily. The xtables lock (legacy backend) is
// waited for at most 5 seconds per call, so a stuck holder fails the sync
// (and the runner retries) instead of hanging it.
func NewTables(opts ...TablesOption) (*GoIPTables, error) {
	cfg := tablesConfig{lockTimeout: 5, fam: FamilyINet}
	for _, o := range opts {
		o(&cfg)
	}
	proto := goiptables.ProtocolIPv4
	switch cfg.fam {
	case FamilyINet:
	case FamilyINet6:
		proto = goiptables.ProtocolIPv6
	default:
		return nil, fmt.Errorf("iptables: invalid family %q", cfg.fam)
	}
	var ipt *goiptables.IPTables
	var err error
	// go-iptables' option type is unexported, so the calls differ.
	if cfg.binary != "" {
		ipt, err = goiptables.New(goiptables.IPFamily(proto), goiptables.Timeout(cfg.lockTimeout), goiptables.Path(cfg.binary))
	} else {
		ipt, err = goiptables.New(goiptables.IPFamily(proto), goiptables.Timeout(cfg.lockTimeout))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", binaryName(cfg.fam), err)
	}
	t := &GoIPTables{ipt: ipt, run: runHere, fam: cfg.fam}
	if cfg.hasNS {
		t.run = runInNetNS(cfg.ns)
	}
	return t, nil
}

// Family returns the IP family the Tables programs.
func (t *GoIPTables) Family() Family { return t.fam }

func binaryName(fam Family) string {
	if fam == FamilyINet6 {
		return "ip6tables"
	}
	return "iptables"
}

func (t *GoIPTables) ListChains(table string) ([]string, error) {
	var chains []string
	err := t.run(func() (err error) {
		chains, err = t.ipt.ListChains(table)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list chains of %s: %w", table, mapTablesErr(err))
	}
	return chains, nil
}

func (t *GoIPTables) ListRules(table, chain string) ([]Rule, error) {
	var lines []string
	err := t.run(func() (err error) {
		lines, err = t.ipt.List(table, chain)
		if err == nil || IsNotFound(mapTablesErr(err)) {
			return err
		}
		// iptables-nft 1.8.9 says "chain `X' in table `nat' is
		// incompatible, use 'nft' tool" for a missing chain; ask again.
		if exists, cerr := t.ipt.ChainExists(table, chain); cerr == nil && !exists {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list %s %s: %w", table, chain, mapTablesErr(err))
	}
	rules := make([]Rule, 0, len(lines))
	for _, line := range lines {
		c, r, ok, err := parseRuleLine(line)
		if err != nil {
			return nil, fmt.Errorf("list %s %s: %w", table, chain, err)
		}
		if ok && c == chain {
			rules = append(rules, r)
		}
	}
	return rules, nil
}

func (t *GoIPTables) NewChain(table, chain string) error {
	return t.do(fmt.Sprintf("new chain %s %s", table, chain), func() error { return t.ipt.NewChain(table, chain) })
}

func (t *GoIPTables) ClearChain(table, chain string) error {
	return t.do(fmt.Sprintf("clear chain %s %s", table, chain), func() error { return t.ipt.ClearChain(table, chain) })
}

func (t *GoIPTables) DeleteChain(table, chain string) error {
	return t.do(fmt.Sprintf("delete chain %s %s", table, chain), func() error { return t.ipt.DeleteChain(table, chain) })
}

func (t *GoIPTables) Append(table, chain string, r Rule) error {
	return t.do(fmt.Sprintf("append %s %s", table, r.Line(chain)), func() error { return t.ipt.Append(table, chain, r...) })
}

func (t *GoIPTables) Insert(table, chain string, pos int, r Rule) error {
	return t.do(fmt.Sprintf("insert %s at %d: %s", table, pos, r.Line(chain)), func() error { return t.ipt.Insert(table, chain, pos, r...) })
}

func (t *GoIPTables) Replace(table, chain string, pos int, r Rule) error {
	return t.do(fmt.Sprintf("replace %s at %d: %s", table, pos, r.Line(chain)), func() error { return t.ipt.Replace(table, chain, pos, r...) })
}

func (t *GoIPTables) Delete(table, chain string, r Rule) error {
	return t.do(fmt.Sprintf("delete %s %s", table, r.Line(chain)), func() error { return t.ipt.Delete(table, chain, r...) })
}

func (t *GoIPTables) DeleteAt(table, chain string, pos int) error {
	return t.do(fmt.Sprintf("delete %s %s %d", table, chain, pos), func() error { return t.ipt.DeleteById(table, chain, pos) })
}

func (t *GoIPTables) Exists(table, chain string, r Rule) (bool, error) {
	var ok bool
	err := t.run(func() (err error) {
		ok, err = t.ipt.Exists(table, chain, r...)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("check %s %s: %w", table, r.Line(chain), mapTablesErr(err))
	}
	return ok, nil
}

func (t *GoIPTables) HasRandomFully() bool { return t.ipt.HasRandomFully() }

func (t *GoIPTables) do(what string, fn func() error) error {
	if err := t.run(fn); err != nil {
		return fmt.Errorf("%s: %w", what, mapTablesErr(err))
	}
	return nil
}

// mapTablesErr attaches our sentinel errors to iptables' messages, which
// differ between backends (measured with 1.8.9):
//
//	chain exists      both: "Chain already exists."
//	chain not empty   legacy: "Directory not empty."; nft: "Device or resource busy"
//	chain referenced  legacy: "Too many links."; nft: "Device or resource busy"
//	missing rule      both: "Bad rule (does a matching rule exist in that chain?)."
//	missing chain     legacy: "No chain/target/match by that name."; nft: see ListRules
func mapTablesErr(err error) error {
	if err == nil || IsNotFound(err) || IsExists(err) || IsInUse(err) {
		return err
	}
	var e *goiptables.Error
	if !errors.As(err, &e) {
		return err
	}
	msg := e.Error()
	switch {
	case e.IsNotExist():
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case strings.Contains(msg, "Chain already exists"):
		return fmt.Errorf("%w: %w", ErrExists, err)
	case strings.Contains(msg, "Directory not empty"), strings.Contains(msg, "Too many links"),
		strings.Contains(msg, "Device or resource busy"):
		return fmt.Errorf("%w: %w", ErrInUse, err)
	}
	return err
}
