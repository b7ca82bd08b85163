package iptables

import "errors"

// Errors the kernel clients (real and fake) wrap, so callers can tell
// "already there" and "already gone" apart from real failures with
// errors.Is or the predicates below.
var (
	// ErrNotFound: the set, chain, rule or set member does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: the set, chain or set member already exists.
	ErrExists = errors.New("already exists")
	// ErrInUse: a set or chain is still referenced (or a chain not empty)
	// and cannot be destroyed.
	ErrInUse = errors.New("in use")
)

// IsNotFound reports whether err means the object does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsExists reports whether err means the object already exists.
func IsExists(err error) bool { return errors.Is(err, ErrExists) }

// IsInUse reports whether err means the object is still referenced.
func IsInUse(err error) bool { return errors.Is(err, ErrInUse) }
