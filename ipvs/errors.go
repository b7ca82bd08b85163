package ipvs

import "errors"

var (
	// ErrNotFound is wrapped by kernel clients when the object (virtual
	// server, real server, link, address) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is wrapped when the object to create already exists.
	ErrExists = errors.New("already exists")
	// ErrFamilyUnsupported is wrapped by Links when the node cannot hold an
	// address of that family (IPv6 disabled or absent).
	ErrFamilyUnsupported = errors.New("address family not supported on this node")
)

// IsNotFound reports whether err says the object does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsExists reports whether err says the object already exists.
func IsExists(err error) bool { return errors.Is(err, ErrExists) }
