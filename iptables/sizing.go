package iptables

// minMaxElem is the smallest maxelem a hash set is created with: the
// kernel's default, so small clusters get what `ipset create` would give.
const minMaxElem = 65536

// maxElemFor sizes a hash set for n members: at least 65536, else the next
// power of two >= 2n. Twice the content leaves room to grow before the set
// must be replaced by a bigger one (see growSet); kube-proxy instead
// creates every set with the fixed default and fails past 65536 members.
func maxElemFor(n int) uint32 {
	want := uint64(2 * n)
	size := uint64(minMaxElem)
	for size < want {
		size *= 2
	}
	if size > 1<<31 {
		size = 1 << 31
	}
	return uint32(size)
}
