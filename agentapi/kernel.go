package agentapi

import (
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
)

// KernelIPVS reads the IPVS table through h without the agent: ownership
// from the dummy link of l and the state file in stateDir (the agent's
// --state-dir), no Service names, no drift.
func KernelIPVS(h ipvs.Handle, l ipvs.Links, stateDir string) (*IPVSTable, error) {
	in, err := ipvs.InspectKernel(h, l, stateDir)
	if err != nil {
		return nil, err
	}
	return IPVSTableFrom(in, SourceKernel), nil
}

// KernelNFTables reads switchyard's nftables tables through conn without
// the agent: Service names from chain names, no drift.
func KernelNFTables(conn nftables.Conn) (*NFTables, error) {
	in, err := nftables.InspectTables(conn)
	if err != nil {
		return nil, err
	}
	return NFTablesFrom(in, SourceKernel), nil
}
