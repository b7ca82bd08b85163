package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/agentapi"
	"sigs.k8s.io/yaml"
)

// Golden output of every command against an agent serving its API on a
// real unix socket, with the IPVS dataplane on the ipvs package's fakes
// (and, for nft, an nftables agent with a fixed table).
func TestCommandsIPVSAgent(t *testing.T) {
	n := newIPVSNode(t)
	syncer := &fakeSyncer{st: n.st, syncs: 12}
	sock := startAgent(t, syncer, agentapi.NewIPVSInspector(n.p), fakeFlows(testFlows()))
	k := fakeKernel{n: n, nft: nftTable()}
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"status.golden", []string{"status"}},
		{"services.golden", []string{"services"}},
		{"services_web.golden", []string{"services", "default/web"}},
		{"services_shop.json", []string{"services", "-n", "shop", "-o", "json"}},
		{"services_shop.yaml", []string{"services", "api", "-o", "yaml"}},
		{"ipvs.golden", []string{"ipvs"}},
		{"nft_agent_runs_ipvs.golden", []string{"nft"}},
		{"conntrack.golden", []string{"conntrack"}},
		{"trace_clusterip.golden", []string{"trace", "10.96.0.10:80/tcp"}},
		{"trace_nodeport.golden", []string{"trace", "192.168.1.10:30080"}},
		{"trace_external_local.golden", []string{"trace", "203.0.113.7:443/TCP"}},
		{"trace_no_endpoints.golden", []string{"trace", "10.96.0.53:53/udp"}},
		{"trace_none.golden", []string{"trace", "10.96.0.99:80"}},
		{"sync.golden", []string{"sync"}},
		{"sync_wait.golden", []string{"sync", "--wait"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			out, err := yardctl(t, sock, k, c.args...)
			if err != nil {
				t.Fatalf("yardctl %v: %v", c.args, err)
			}
			golden(t, c.golden, out)
		})
	}
	if syncer.requests != 2 {
		t.Errorf("the agent got %d sync requests, want 2", syncer.requests)
	}
}

func TestCommandsNFTablesAgent(t *testing.T) {
	syncer := &fakeSyncer{st: testState(), syncs: 3}
	sock := startAgent(t, syncer, nftInspector{table: nftTable()}, fakeFlows(testFlows()))
	k := fakeKernel{n: newIPVSNode(t), nft: nftTable()}
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"nft.golden", []string{"nft"}},
		{"nft_rules.golden", []string{"nft", "--rules"}},
		{"nft_all.golden", []string{"nft", "-a"}},
		{"services_nftables.golden", []string{"services"}},
		{"conntrack_web.golden", []string{"conntrack", "default/web"}},
		{"trace_external_local_nftables.golden", []string{"trace", "203.0.113.7:443"}},
		{"ipvs_agent_runs_nftables.golden", []string{"ipvs"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			out, err := yardctl(t, sock, k, c.args...)
			if err != nil {
				t.Fatalf("yardctl %v: %v", c.args, err)
			}
			golden(t, c.golden, out)
		})
	}
}

// An nftables agent running the socket load balancer: services show its
// per-backend counts (TCP ports only), conntrack its sockets after the
// conntrack table, filtered by Service like the rest.
func TestCommandsSocketLBAgent(t *testing.T) {
	syncer := &fakeSyncer{st: testState(), syncs: 3}
	sock := startAgentWith(t, syncer, nftInspector{table: nftTable()}, fakeFlows(testFlows()), testSocketLB())
	k := fakeKernel{n: newIPVSNode(t), nft: nftTable()}
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"status_socketlb.golden", []string{"status"}},
		{"services_socketlb.golden", []string{"services"}},
		{"services_socketlb_web.json", []string{"services", "default/web", "-o", "json"}},
		{"conntrack_socketlb.golden", []string{"conntrack"}},
		{"conntrack_socketlb_shop.golden", []string{"conntrack", "-n", "shop"}},
		{"conntrack_socketlb_shop.yaml", []string{"conntrack", "-n", "shop", "-o", "yaml"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			out, err := yardctl(t, sock, k, c.args...)
			if err != nil {
				t.Fatalf("yardctl %v: %v", c.args, err)
			}
			golden(t, c.golden, out)
		})
	}
}

// With the agent down, ipvs, nft and conntrack read the kernel; the rest
// say they need the agent.
func TestCommandsAgentDown(t *testing.T) {
	n := newIPVSNode(t)
	k := fakeKernel{n: n, nft: nftTable()}
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"ipvs_agent_down.golden", []string{"ipvs"}},
		{"nft_agent_down.golden", []string{"nft"}},
		{"conntrack_agent_down.golden", []string{"conntrack"}},
		{"conntrack_agent_down_filter.golden", []string{"conntrack", "10.96.0.10:80"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			out, err := yardctl(t, sock, k, c.args...)
			if err != nil {
				t.Fatalf("yardctl %v: %v", c.args, err)
			}
			golden(t, c.golden, out)
		})
	}
	for _, args := range [][]string{{"status"}, {"services"}, {"trace", "10.96.0.10:80"}, {"sync"}} {
		_, err := yardctl(t, sock, k, args...)
		if !errors.Is(err, agentapi.ErrAgentDown) || !strings.Contains(err.Error(), args[0]+" needs the agent") {
			t.Errorf("yardctl %v with the agent down: %v", args, err)
		}
	}
	if _, err := yardctl(t, sock, k, "conntrack", "default/web"); err == nil || !strings.Contains(err.Error(), "give a destination") {
		t.Errorf("conntrack by Service name with the agent down: %v", err)
	}
}

// -o json and -o yaml print the API's schema for every command.
func TestOutputFormats(t *testing.T) {
	n := newIPVSNode(t)
	sock := startAgent(t, &fakeSyncer{st: n.st, syncs: 1}, agentapi.NewIPVSInspector(n.p), fakeFlows(testFlows()))
	k := fakeKernel{n: n, nft: nftTable()}
	for _, c := range []struct {
		args []string
		into any
	}{
		{[]string{"status"}, &agentapi.Status{}},
		{[]string{"services"}, &agentapi.ServiceList{}},
		{[]string{"ipvs"}, &agentapi.IPVSTable{}},
		{[]string{"nft"}, &agentapi.NFTables{}},
		{[]string{"conntrack"}, &agentapi.ConntrackReport{}},
		{[]string{"trace", "10.96.0.10:80"}, &agentapi.Trace{}},
		{[]string{"sync"}, &agentapi.SyncResponse{}},
	} {
		for _, format := range []string{"json", "yaml"} {
			out, err := yardctl(t, sock, k, append(c.args, "-o", format)...)
			if err != nil {
				t.Fatalf("yardctl %v -o %s: %v", c.args, format, err)
			}
			b := []byte(out)
			if format == "yaml" {
				if b, err = yaml.YAMLToJSON(b); err != nil {
					t.Fatalf("yardctl %v -o yaml: %v", c.args, err)
				}
			}
			dec := json.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(c.into); err != nil {
				t.Errorf("yardctl %v -o %s does not decode into %T: %v\n%s", c.args, format, c.into, err, out)
			}
		}
	}
	if _, err := yardctl(t, sock, k, "status", "-o", "xml"); err == nil || !strings.Contains(err.Error(), "table, json or yaml") {
		t.Errorf("-o xml: %v", err)
	}
}
