package ipvs

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"
)

// Cleanup implements dataplane.Dataplane: it deletes every virtual server
// switchyard owns (doc.go), then the dummy link with its addresses, then the
// state file. Foreign virtual servers stay. It needs no prior Sync. If a
// virtual server cannot be deleted, the link and state file are kept (they
// are what identifies it) so that a retry can finish the job.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	p.cancelDrainCheck()
	defer func() {
		// Whatever happened, the next Sync starts from the kernel.
		p.synced = false
		p.idx = nil
		p.persist = nil
		p.setSnapshot(true, nil, map[Key]VirtualServer{})
	}()
	p.persist = nil
	p.loadState()

	linkList, err := p.links.Addresses()
	linkPresent := true
	switch {
	case IsNotFound(err):
		linkPresent = false
	case err != nil:
		return fmt.Errorf("list dummy link addresses: %w", err)
	}
	hostList, err := p.links.NodeAddresses()
	if err != nil {
		return fmt.Errorf("list node addresses: %w", err)
	}
	vss, err := p.handle.ListVirtualServers()
	if err != nil {
		return fmt.Errorf("list virtual servers: %w", err)
	}
	own := ownership{link: addrSet(linkList), host: addrSet(hostList), hostVS: p.persist.HostVS}
	var errs []error
	left := newPersistentState()
	for _, vs := range vss {
		if !own.owns(vs.Key) {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := p.handle.DeleteVirtualServer(vs.Key); err != nil && !IsNotFound(err) {
			errs = append(errs, err)
			if !own.dependsOnLink(vs.Key) {
				left.HostVS[vs.Key] = true
			}
			continue
		}
		klog.V(2).InfoS("Deleted virtual server", "virtualServer", vs.Key)
	}
	if len(errs) > 0 {
		if err := p.file.save(left); err != nil {
			errs = append(errs, fmt.Errorf("save state: %w", err))
		}
		return errors.Join(errs...)
	}
	if linkPresent {
		if err := p.links.DeleteLink(); err != nil && !IsNotFound(err) {
			return fmt.Errorf("delete dummy link: %w", err)
		}
	}
	return p.file.remove()
}
