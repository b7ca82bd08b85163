package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// attachment is one program and the cgroup hook it runs at.
type attachment struct {
	name   string // also the pinned link's file name
	attach cebpf.AttachType
	prog   func(*socklbObjects) *cebpf.Program
}

// attachments lists every hook switchyard uses, in attach order: sockops
// first so no connection translated by connect4 is missed by the counter.
var attachments = []attachment{
	{"sockops_count", cebpf.AttachCGroupSockOps, func(o *socklbObjects) *cebpf.Program { return o.SockopsCount }},
	{"sock4_recvmsg", cebpf.AttachCGroupUDP4Recvmsg, func(o *socklbObjects) *cebpf.Program { return o.Sock4Recvmsg }},
	{"sock6_recvmsg", cebpf.AttachCGroupUDP6Recvmsg, func(o *socklbObjects) *cebpf.Program { return o.Sock6Recvmsg }},
	{"sock4_getpeername", cebpf.AttachCgroupInet4GetPeername, func(o *socklbObjects) *cebpf.Program { return o.Sock4Getpeername }},
	{"sock6_getpeername", cebpf.AttachCgroupInet6GetPeername, func(o *socklbObjects) *cebpf.Program { return o.Sock6Getpeername }},
	{"sock4_connect", cebpf.AttachCGroupInet4Connect, func(o *socklbObjects) *cebpf.Program { return o.Sock4Connect }},
	{"sock6_connect", cebpf.AttachCGroupInet6Connect, func(o *socklbObjects) *cebpf.Program { return o.Sock6Connect }},
	{"sock4_sendmsg", cebpf.AttachCGroupUDP4Sendmsg, func(o *socklbObjects) *cebpf.Program { return o.Sock4Sendmsg }},
	{"sock6_sendmsg", cebpf.AttachCGroupUDP6Sendmsg, func(o *socklbObjects) *cebpf.Program { return o.Sock6Sendmsg }},
}

// loadObjects loads the programs and maps into the kernel (the verifier
// runs here). With pinDir set, maps are pinned there by name and maps
// already pinned by an earlier agent are reused, which keeps the services,
// affinity and counters across restarts. A pinned map whose definition no
// longer matches (an upgrade changed it) is replaced.
func loadObjects(pinDir string, countConnections bool) (*socklbObjects, error) {
	if err := removeMemlock(); err != nil {
		return nil, err
	}
	spec, err := loadSocklb()
	if err != nil {
		return nil, err
	}
	if !countConnections {
		if err := spec.Variables["count_connections"].Set(uint8(0)); err != nil {
			return nil, fmt.Errorf("configure socket-LB programs: %w", err)
		}
	}
	opts := &cebpf.CollectionOptions{}
	if pinDir != "" {
		if err := ensureBPFFS(pinDir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("bpffs pin directory: %w", err)
		}
		opts.Maps.PinPath = pinDir
	} else {
		for _, m := range spec.Maps {
			m.Pinning = cebpf.PinNone
		}
	}
	var objs socklbObjects
	err = spec.LoadAndAssign(&objs, opts)
	if errors.Is(err, cebpf.ErrMapIncompatible) && pinDir != "" {
		// An older layout: start from empty maps. Translation pauses
		// (the packet dataplane serves) until the first sync refills them.
		for name := range spec.Maps {
			_ = os.Remove(filepath.Join(pinDir, name))
		}
		err = spec.LoadAndAssign(&objs, opts)
	}
	if err != nil {
		var ve *cebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load socket-LB programs: %+v", ve)
		}
		return nil, fmt.Errorf("load socket-LB programs: %w", err)
	}
	return &objs, nil
}

// Probe loads every program into the kernel (the verifier checks them)
// and unloads them again, attaching nothing: nil means this kernel can run
// the socket LB. Errors wrap ErrUnsupported.
func Probe() error {
	objs, err := loadObjects("", true)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return objs.Close()
}

// removeMemlock lifts RLIMIT_MEMLOCK for kernels that charge BPF memory to
// it (before 5.11), for every loader of the package.
func removeMemlock() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}
	return nil
}
