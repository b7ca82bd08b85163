package iptables

import (
	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/sysctl"
)

// Sysctl reads and writes kernel parameters by their /proc/sys path
// ("net/netfilter/nf_conntrack_tcp_be_liberal"); see package sysctl.
type Sysctl = sysctl.Interface

// sysctlTCPBeLiberal is per network namespace.
const sysctlTCPBeLiberal = "net/netfilter/nf_conntrack_tcp_be_liberal"

// ProcSysctl is the real Sysctl, through /proc/sys.
type ProcSysctl = sysctl.Proc

// NewProcSysctl returns a Sysctl for the caller's network namespace.
func NewProcSysctl() *ProcSysctl { return sysctl.New() }

// NewProcSysctlAt returns a Sysctl for network namespace ns: /proc/sys/net
// shows the namespace of the thread that opens the file, so each access
// runs on a thread inside ns.
func NewProcSysctlAt(ns netns.NsHandle) *ProcSysctl { return sysctl.NewAt(ns) }

// FakeSysctl is an in-memory Sysctl. Unknown parameters fail like a missing
// /proc/sys file; read-only ones fail to write like a read-only mount.
type FakeSysctl = sysctl.Fake

// NewFakeSysctl returns a fake holding values.
func NewFakeSysctl(values map[string]string) *FakeSysctl { return sysctl.NewFake(values) }
