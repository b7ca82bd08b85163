package iptables

// Tables is the part of iptables this package uses, for one IP family in
// one network namespace. Positions are 1-based as in iptables. Errors wrap
// ErrNotFound, ErrExists or ErrInUse where that is what iptables said.
type Tables interface {
	// ListChains returns the names of all chains of table, built-in first.
	ListChains(table string) ([]string, error)
	// ListRules returns the rules of one chain in order; ErrNotFound if the
	// chain does not exist.
	ListRules(table, chain string) ([]Rule, error)
	// NewChain creates an empty chain; ErrExists if it exists.
	NewChain(table, chain string) error
	// ClearChain flushes a chain, creating it if missing (go-iptables'
	// semantics).
	ClearChain(table, chain string) error
	// DeleteChain deletes an empty, unreferenced chain; ErrNotFound if
	// absent, ErrInUse if it has rules or references.
	DeleteChain(table, chain string) error
	// Append adds a rule at the end of chain.
	Append(table, chain string, r Rule) error
	// Insert adds a rule at pos (1 = first; len+1 = last).
	Insert(table, chain string, pos int, r Rule) error
	// Replace replaces the rule at pos, atomically.
	Replace(table, chain string, pos int, r Rule) error
	// Delete removes the first rule equal to r; ErrNotFound if none.
	Delete(table, chain string, r Rule) error
	// DeleteAt removes the rule at pos.
	DeleteAt(table, chain string, pos int) error
	// Exists reports whether chain has a rule equal to r.
	Exists(table, chain string, r Rule) (bool, error)
	// HasRandomFully reports whether MASQUERADE --random-fully can be used.
	HasRandomFully() bool
}
