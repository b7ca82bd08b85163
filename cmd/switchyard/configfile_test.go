package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
)

const kpHeader = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
const syHeader = "apiVersion: switchyard.io/v1alpha1\nkind: SwitchyardConfiguration\n"

// kubeadmDump is what `kubectl -n kube-system get cm kube-proxy` holds in a
// kubeadm cluster: every field, almost all of them zero. It must load with
// nothing ignored.
const kubeadmDump = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`

// fullIPVS sets every field to something non-default.
const fullIPVS = kpHeader + `featureGates:
  NFTablesProxyMode: true
  AllAlpha: false
clientConnection:
  kubeconfig: /etc/kubernetes/proxy.kubeconfig
  qps: 50
  burst: 100
  contentType: application/json
  acceptContentTypes: application/json
logging:
  format: json
  flushFrequency: 5s
  verbosity: 0
  vmodule:
    - {filePattern: sync*, verbosity: 0}
  options:
    json: {splitStream: true, infoBufferSize: 1Mi}
hostnameOverride: " Node-1 "
bindAddress: 10.0.0.5
healthzBindAddress: 0.0.0.0:10266
metricsBindAddress: "10.0.0.5"
bindAddressHardFail: true
enableProfiling: true
showHiddenMetricsForVersion: "1.33"
mode: ipvs
iptables:
  masqueradeAll: true
  masqueradeBit: 13
  localhostNodePorts: true
  snatNodeInternalIP: true
  syncPeriod: 10s
  minSyncPeriod: 2s
ipvs:
  scheduler: wlc
  strictARP: true
  syncPeriod: 1m
  minSyncPeriod: 500ms
  excludeCIDRs: [192.168.0.0/16]
  tcpTimeout: 900s
  tcpFinTimeout: 120s
  udpTimeout: 300s
nftables:
  masqueradeAll: true
  masqueradeBit: 12
  syncPeriod: 45s
  minSyncPeriod: 3s
winkernel:
  networkName: l2bridge
detectLocalMode: NodeCIDR
detectLocal:
  bridgeInterface: cbr0
clusterCIDR: "10.244.0.0/16, fd00:10:244::/56"
nodePortAddresses: [10.0.0.0/8, "fd00::/64"]
oomScoreAdj: -999
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpEstablishedTimeout: 24h
  tcpCloseWaitTimeout: 1h
  tcpBeLiberal: true
  udpTimeout: 30s
  udpStreamTimeout: 300s
configSyncPeriod: 15m
portRange: ""
windowsRunAsService: true
`

func decodeResolve(t *testing.T, content, flagDataplane string) (*fileSettings, error) {
	t.Helper()
	f, err := decodeConfigFile([]byte(content))
	if err != nil {
		return nil, err
	}
	return f.resolve(flagDataplane)
}

func mustResolve(t *testing.T, content, flagDataplane string) *fileSettings {
	t.Helper()
	s, err := decodeResolve(t, content, flagDataplane)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ignoredPaths(s *fileSettings) []string {
	var out []string
	for _, ig := range s.ignored {
		out = append(out, ig.path)
	}
	return out
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestConfigFileKubeadmDumpIgnoresNothing(t *testing.T) {
	s := mustResolve(t, kubeadmDump, "")
	if len(s.ignored) != 0 {
		t.Errorf("ignored: %v", s.ignored)
	}
	want := &fileSettings{
		kubeconfig:   "/var/lib/kube-proxy/kubeconfig.conf",
		clusterCIDRs: prefixes("10.244.0.0/16"),
		verbosity:    s.verbosity, // 0, compared below
	}
	if s.verbosity == nil || *s.verbosity != 0 {
		t.Errorf("verbosity %v", s.verbosity)
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got %+v\nwant %+v", s, want)
	}
}

func TestConfigFileFullIPVS(t *testing.T) {
	s := mustResolve(t, fullIPVS, "")
	dur := func(d time.Duration) *time.Duration { return &d }
	tru, bit := true, 13
	maxPerCore, ctMin := 32768, 131072
	var v0 uint32
	want := &fileSettings{
		dataplane:             "ipvs",
		hostnameOverride:      "Node-1",
		kubeconfig:            "/etc/kubernetes/proxy.kubeconfig",
		ipvsScheduler:         "wlc",
		healthzBindAddress:    "0.0.0.0:10266",
		metricsBindAddress:    "10.0.0.5:10249",
		syncPeriod:            dur(time.Minute),
		minSyncPeriod:         dur(500 * time.Millisecond),
		ipvsStrictARP:         &tru,
		masqueradeAll:         &tru,
		masqueradeBit:         &bit,
		conntrackTCPBeLiberal: &tru,
		conntrackMaxPerCore:   &maxPerCore,
		conntrackMin:          &ctMin,
		durations: map[string]time.Duration{
			"ipvs-tcp-timeout": 900 * time.Second, "ipvs-tcpfin-timeout": 120 * time.Second, "ipvs-udp-timeout": 300 * time.Second,
			"conntrack-tcp-timeout-established": 24 * time.Hour, "conntrack-tcp-timeout-close-wait": time.Hour,
			"conntrack-udp-timeout": 30 * time.Second, "conntrack-udp-timeout-stream": 300 * time.Second,
		},
		nodePortAddresses:    prefixes("10.0.0.0/8", "fd00::/64"),
		nodePortAddressesSet: true,
		clusterCIDRs:         prefixes("10.244.0.0/16", "fd00:10:244::/56"),
		verbosity:            &v0,
		vmodule:              "sync*=0",
	}
	got := *s
	got.ignored = nil
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("got  %+v\nwant %+v", &got, want)
	}
	wantIgnored := []string{
		"nftables.syncPeriod", "iptables.syncPeriod",
		"nftables.minSyncPeriod", "iptables.minSyncPeriod",
		"nftables.masqueradeBit", "nftables.masqueradeAll",
		"ipvs.excludeCIDRs",
		"bindAddress",
		"clientConnection.qps", "clientConnection.burst", "clientConnection.contentType", "clientConnection.acceptContentTypes",
		"logging.format", "logging.flushFrequency", "logging.options.json",
		"featureGates.AllAlpha", "featureGates.NFTablesProxyMode",
		"detectLocalMode", "detectLocal",
		"iptables.localhostNodePorts", "iptables.snatNodeInternalIP",
		"configSyncPeriod", "winkernel", "windowsRunAsService", "oomScoreAdj",
		"bindAddressHardFail", "enableProfiling", "showHiddenMetricsForVersion",
	}
	if got := ignoredPaths(s); !reflect.DeepEqual(got, wantIgnored) {
		t.Errorf("ignored\n got %q\nwant %q", got, wantIgnored)
	}
	for _, ig := range s.ignored {
		if ig.reason == "" {
			t.Errorf("%s: no reason", ig.path)
		}
	}
}

func TestConfigFileMinimal(t *testing.T) {
	s := mustResolve(t, kpHeader+"mode: nftables\n", "")
	if !reflect.DeepEqual(s, &fileSettings{dataplane: "nftables"}) {
		t.Errorf("got %+v", s)
	}
	// A SwitchyardConfiguration alone is a configuration file too; so is JSON.
	s = mustResolve(t, `{"apiVersion": "switchyard.io/v1alpha1", "kind": "SwitchyardConfiguration", "proxyName": "p"}`, "")
	if !reflect.DeepEqual(s, &fileSettings{proxyName: "p"}) {
		t.Errorf("got %+v", s)
	}
}

func TestConfigFileMultiDocument(t *testing.T) {
	content := "# leading comment\n---\n" + kpHeader + `mode: ipvs
nodePortAddresses: [10.0.0.0/8]
---
# only a comment
---
` + syHeader + `dataplane: nftables
manifests: /etc/switchyard/manifests
master: https://10.0.0.1:6443
proxyName: edge
stateDir: /run/sy
nodePortAddresses: [all]
ipvs:
  drainTimeout: 2m
  dummyLink: sy0
conntrack:
  dropInvalid: true
`
	s := mustResolve(t, content, "")
	d, tru := 2*time.Minute, true
	want := &fileSettings{
		dataplane:            "nftables",
		manifests:            "/etc/switchyard/manifests",
		master:               "https://10.0.0.1:6443",
		proxyName:            "edge",
		stateDir:             "/run/sy",
		dummyLink:            "sy0",
		ipvsDrainTimeout:     &d,
		conntrackDropInvalid: &tru,
		nodePortAddressesSet: true, // "all": every local address, the default
		ignored: []ignoredField{
			{"mode", "SwitchyardConfiguration dataplane overrides it"},
			{"nodePortAddresses", "SwitchyardConfiguration nodePortAddresses overrides it"},
		},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got  %+v\nwant %+v", s, want)
	}
}

func TestConfigFileModeMapping(t *testing.T) {
	for _, tc := range []struct {
		name, content, flagDataplane string
		want, wantErr                string // want: fileSettings.dataplane
	}{
		{name: "empty is auto", content: kpHeader + "mode: \"\"\n", want: ""},
		{name: "ipvs", content: kpHeader + "mode: ipvs\n", want: "ipvs"},
		{name: "nftables", content: kpHeader + "mode: nftables\n", want: "nftables"},
		{name: "iptables", content: kpHeader + "mode: iptables\n", wantErr: "switchyard has no iptables (NAT rules) mode; use mode ipvs or nftables"},
		{name: "kernelspace", content: kpHeader + "mode: kernelspace\n", wantErr: `mode: "kernelspace" is Windows-only`},
		{name: "unknown", content: kpHeader + "mode: userspace\n", wantErr: `mode: "userspace" is not a proxy mode`},
		{name: "unknown even with dataplane", content: kpHeader + "mode: ebpf\n---\n" + syHeader + "dataplane: ipvs\n", wantErr: `mode: "ebpf"`},
		{name: "dataplane overrides iptables", content: kpHeader + "mode: iptables\n---\n" + syHeader + "dataplane: nftables\n", want: "nftables"},
		{name: "dataplane auto overrides ipvs", content: kpHeader + "mode: ipvs\n---\n" + syHeader + "dataplane: auto\n", want: "auto"},
		{name: "flag overrides iptables", content: kpHeader + "mode: iptables\n", flagDataplane: "ipvs", want: ""},
		{name: "bad dataplane", content: syHeader + "dataplane: iptables\n", wantErr: `SwitchyardConfiguration dataplane: "iptables": must be auto, ipvs or nftables`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := decodeResolve(t, tc.content, tc.flagDataplane)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.dataplane != tc.want {
				t.Errorf("dataplane %q, want %q", s.dataplane, tc.want)
			}
		})
	}
}

// The per-mode sections: the chosen dataplane's applies; with auto they
// must agree.
func TestConfigFileSectionsByDataplane(t *testing.T) {
	sections := `iptables: {syncPeriod: 10s, masqueradeBit: 13}
ipvs: {syncPeriod: 20s}
nftables: {syncPeriod: 30s, masqueradeBit: 12}
`
	for _, tc := range []struct {
		name, content, flagDataplane string
		wantSync                     time.Duration
		wantBit                      int
		wantIgnored                  []string
		wantErr                      string
	}{
		{name: "ipvs", content: kpHeader + "mode: ipvs\n" + sections, wantSync: 20 * time.Second, wantBit: 13,
			wantIgnored: []string{"nftables.syncPeriod", "iptables.syncPeriod", "nftables.masqueradeBit"}, flagDataplane: "ipvs"},
		{name: "nftables by flag", content: kpHeader + "mode: ipvs\n" + sections, flagDataplane: "nftables", wantSync: 30 * time.Second, wantBit: 12,
			wantIgnored: []string{"mode", "ipvs.syncPeriod", "iptables.syncPeriod", "iptables.masqueradeBit"}},
		{name: "auto disagrees", content: kpHeader + sections, wantErr: "ipvs.syncPeriod (20s) and nftables.syncPeriod (30s) disagree and the dataplane is auto"},
		{name: "auto agrees", content: kpHeader + "iptables: {syncPeriod: 1m, masqueradeBit: 3}\nipvs: {syncPeriod: 60s}\n", wantSync: time.Minute, wantBit: 3},
		{name: "top level as fallback", content: kpHeader + "mode: nftables\nsyncPeriod: 40s\nnftables: {masqueradeBit: 12}\n", wantSync: 40 * time.Second, wantBit: 12},
		{name: "section beats top level", content: kpHeader + "mode: nftables\nsyncPeriod: 40s\nnftables: {syncPeriod: 41s, masqueradeBit: 12}\n", wantSync: 41 * time.Second, wantBit: 12,
			wantIgnored: []string{"syncPeriod"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := decodeResolve(t, tc.content, tc.flagDataplane)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.syncPeriod == nil || *s.syncPeriod != tc.wantSync {
				t.Errorf("syncPeriod %v, want %v", s.syncPeriod, tc.wantSync)
			}
			if s.masqueradeBit == nil || *s.masqueradeBit != tc.wantBit {
				t.Errorf("masqueradeBit %v, want %v", s.masqueradeBit, tc.wantBit)
			}
			if got := ignoredPaths(s); !reflect.DeepEqual(got, tc.wantIgnored) {
				t.Errorf("ignored %q, want %q", got, tc.wantIgnored)
			}
		})
	}
}

// Unknown fields, wrong types and wrong documents are errors naming the
// field (or the document).
func TestConfigFileDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"unknown nested field", kpHeader + "ipvs:\n  schedular: rr\n", `document 1 (KubeProxyConfiguration): unknown field "ipvs.schedular"`},
		{"unknown top-level field", kpHeader + "proxyMode: ipvs\n", `unknown field "proxyMode"`},
		{"several unknown fields", kpHeader + "foo: 1\nconntrack: {maxPerCpu: 1}\n", `unknown field "conntrack.maxPerCpu"; unknown field "foo"`},
		{"field names are case-sensitive", kpHeader + "Mode: ipvs\n", `unknown field "Mode"`},
		{"unknown switchyard field", kpHeader + "---\n" + syHeader + "ipvs: {drainTimout: 1m}\n", `document 2 (SwitchyardConfiguration): unknown field "ipvs.drainTimout"`},
		{"unknown bpf field", syHeader + "bpf: {socketLb: true}\n", `unknown field "bpf.socketLb"`},
		{"kube-proxy field in switchyard doc", syHeader + "mode: ipvs\n", `unknown field "mode"`},
		{"wrong type", kpHeader + "iptables: {masqueradeBit: fourteen}\n", `iptables.masqueradeBit: want int32, got a JSON string`},
		{"duration as number", kpHeader + "ipvs: {syncPeriod: 30}\n", `ipvs.syncPeriod: want a duration string such as "30s", got a JSON number`},
		{"duplicate field", kpHeader + "mode: ipvs\nmode: nftables\n", `document 1`},
		{"not a configuration", "apiVersion: v1\nkind: ConfigMap\n", `document 1: kind "ConfigMap" (apiVersion "v1") is not a configuration`},
		{"wrong apiVersion", "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n", `apiVersion "kubeproxy.config.k8s.io/v1alpha2" of kind KubeProxyConfiguration is not supported`},
		{"two kube-proxy documents", kpHeader + "---\n" + kpHeader, `document 2: a second KubeProxyConfiguration`},
		{"empty", "# nothing\n", `no KubeProxyConfiguration or SwitchyardConfiguration document`},
		{"not an object", "- a\n- b\n", `document 1: not an object`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeConfigFile([]byte(tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestConfigFileInvalidValues(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"masqueradeBit", kpHeader + "iptables: {masqueradeBit: 40}\n", "iptables.masqueradeBit: 40: must be 0..31"},
		{"nftables masqueradeBit", kpHeader + "nftables: {masqueradeBit: -1}\n", "nftables.masqueradeBit: -1: must be 0..31"},
		{"scheduler", kpHeader + "ipvs: {scheduler: fastest}\n", `ipvs.scheduler: "fastest": must be one of rr, wrr`},
		{"clusterCIDR", kpHeader + "clusterCIDR: 10.244.0.0/16,10.300.0.0/16\n", `clusterCIDR[1]: "10.300.0.0/16" is not a CIDR`},
		{"nodePortAddresses", kpHeader + "nodePortAddresses: [10.0.0.0/33]\n", `nodePortAddresses[0]: "10.0.0.0/33" is not a CIDR`},
		{"nodePortAddresses primary", kpHeader + "nodePortAddresses: [10.0.0.0/8, primary]\n", `nodePortAddresses[1]: "primary" is not supported`},
		{"nodePortAddresses localhost", kpHeader + "nodePortAddresses: [localhost]\n", `nodePortAddresses[0]: "localhost" is not supported`},
		{"excludeCIDRs", kpHeader + "ipvs: {excludeCIDRs: [nope]}\n", `ipvs.excludeCIDRs[0]: "nope" is not a CIDR`},
		{"ipvs timeout", kpHeader + "ipvs: {udpTimeout: -3s}\n", `ipvs.udpTimeout: -3s: must not be negative`},
		{"conntrack maxPerCore", kpHeader + "conntrack: {maxPerCore: -2}\n", `conntrack.maxPerCore: -2: must not be negative`},
		{"conntrack timeout", kpHeader + "conntrack: {udpStreamTimeout: 2 minutes}\n", `conntrack.udpStreamTimeout: "2 minutes" is not a duration`},
		{"duration", kpHeader + "ipvs: {syncPeriod: soon}\n", `ipvs.syncPeriod: "soon" is not a duration`},
		{"negative duration", kpHeader + "nftables: {minSyncPeriod: -1s}\n", `nftables.minSyncPeriod: -1s: must not be negative`},
		{"ignored field duration", kpHeader + "conntrack: {tcpCloseWaitTimeout: 1 hour}\n", `conntrack.tcpCloseWaitTimeout: "1 hour" is not a duration`},
		{"healthzBindAddress", kpHeader + "healthzBindAddress: localhost:10256\n", `healthzBindAddress: "localhost:10256": want IP:port, the host is not an IP address`},
		{"metricsBindAddress port", kpHeader + "metricsBindAddress: 127.0.0.1:99999\n", `metricsBindAddress: "127.0.0.1:99999": want IP:port, the port is not 1..65535`},
		{"bindAddress", kpHeader + "bindAddress: node-1\n", `bindAddress: "node-1" is not an IP address`},
		{"detectLocalMode", kpHeader + "detectLocalMode: Magic\n", `detectLocalMode: "Magic"`},
		{"logging.format", kpHeader + "logging: {format: xml}\n", `logging.format: "xml"`},
		{"vmodule", kpHeader + "logging: {vmodule: [{filePattern: 'a=b', verbosity: 1}]}\n", `logging.vmodule[0].filePattern`},
		{"dummyLink", syHeader + "ipvs: {dummyLink: a-very-long-link-name}\n", `SwitchyardConfiguration ipvs.dummyLink: "a-very-long-link-name"`},
		{"drainTimeout", syHeader + "ipvs: {drainTimeout: forever}\n", `SwitchyardConfiguration ipvs.drainTimeout: "forever" is not a duration`},
		{"switchyard nodePortAddresses", syHeader + "nodePortAddresses: [x]\n", `SwitchyardConfiguration nodePortAddresses[0]: "x"`},
		{"bpf.pinPath", syHeader + "bpf: {pinPath: switchyard}\n", `SwitchyardConfiguration bpf.pinPath: "switchyard": must be an absolute path`},
		{"bpf.cgroupPath", syHeader + "bpf: {cgroupPath: ../unified}\n", `SwitchyardConfiguration bpf.cgroupPath: "../unified": must be an absolute path`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeResolve(t, tc.content, "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// Through parseFlags: the file fills in what the command line does not set;
// a flag given explicitly wins, even when it repeats the flag's default.
func TestParseFlagsConfigFilePrecedence(t *testing.T) {
	path := writeConfig(t, kpHeader+`mode: ipvs
hostnameOverride: File-Node
clientConnection: {kubeconfig: /file/kubeconfig}
clusterCIDR: 10.244.0.0/16
nodePortAddresses: [10.0.0.0/8]
iptables: {masqueradeBit: 13, masqueradeAll: true}
ipvs: {scheduler: wlc, strictARP: true, syncPeriod: 1m, minSyncPeriod: 2s, tcpTimeout: 10m, udpTimeout: 15s}
conntrack: {tcpBeLiberal: true, maxPerCore: 1000, min: 5000, udpTimeout: 20s}
healthzBindAddress: 0.0.0.0:1234
---
`+syHeader+`proxyName: file-proxy
stateDir: /file/state
manifests: /file/manifests
ipvs: {drainTimeout: 1m, dummyLink: file0}
conntrack: {dropInvalid: true}
hostPort: false
bpf: {socketLB: true, cgroupPath: /file/cgroup, pinPath: /file/bpf, countConnections: false}
`)
	fileOnly, err := parseFlags([]string{"--config", path})
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		hostnameOverride:       "file-node",
		kubeconfig:             "/file/kubeconfig",
		manifests:              "/file/manifests",
		proxyName:              "file-proxy",
		minSyncPeriod:          2 * time.Second,
		syncPeriod:             time.Minute,
		ipvsScheduler:          "wlc",
		ipvsDrainTimeout:       time.Minute,
		ipvsStrictARP:          true,
		nodePortAddresses:      prefixes("10.0.0.0/8"),
		stateDir:               "/file/state",
		dummyLink:              "file0",
		masqueradeBit:          13,
		masqueradeAll:          true,
		clusterCIDRs:           prefixes("10.244.0.0/16"),
		conntrackDropInvalid:   true,
		conntrackTCPBeLiberal:  true,
		conntrackMaxPerCore:    1000,
		conntrackMin:           5000,
		conntrackUDPTimeout:    20 * time.Second,
		ipvsTCPTimeout:         10 * time.Minute,
		ipvsUDPTimeout:         15 * time.Second,
		hostPorts:              false,
		bpfSocketLB:            true,
		bpfCgroupPath:          "/file/cgroup",
		bpfPinPath:             "/file/bpf",
		bpfCountConnections:    false,
		rebalance:              true,
		rebalanceInterval:      time.Second,
		metricsPerBackend:      true,
		metricsBackendCap:      20000,
		metricsRefreshInterval: 15 * time.Second,
		metricsConntrack:       true,
		apiSocket:              "/run/switchyard/switchyard.sock",
		dataplane:              "ipvs",
		healthzBindAddress:     "0.0.0.0:1234",
		metricsBindAddress:     "127.0.0.1:10249",
		configFile:             path,
	}
	if !reflect.DeepEqual(*fileOnly, want) {
		t.Errorf("file only:\n got %+v\nwant %+v", *fileOnly, want)
	}

	both, err := parseFlags([]string{"--config", path,
		"--hostname-override", "flag-node", "--kubeconfig", "/flag/kubeconfig", "--manifests", "",
		"--proxy-name", "switchyard", "--min-sync-period", "1s", "--sync-period", "30s",
		"--ipvs-scheduler", "sh", "--ipvs-drain-timeout", "15m", "--ipvs-strict-arp=false",
		"--nodeport-addresses", "192.168.0.0/16", "--state-dir", "/flag/state", "--ipvs-dummy-link", "flag0",
		"--masquerade-bit", "14", "--masquerade-all=false", "--cluster-cidr", "10.42.0.0/16",
		"--conntrack-drop-invalid=false", "--conntrack-tcp-be-liberal=false", "--dataplane", "nftables",
		"--healthz-bind-address", "127.0.0.1:10256",
		"--conntrack-max-per-core", "0", "--conntrack-udp-timeout", "0s", "--ipvs-tcp-timeout", "1m",
		"--hostport=true",
		"--bpf-socket-lb=false", "--bpf-cgroup-path", "/flag/cgroup", "--bpf-pin-path", "/sys/fs/bpf/switchyard", "--bpf-count-connections",
	})
	if err != nil {
		t.Fatal(err)
	}
	want = config{
		hostnameOverride:       "flag-node",
		kubeconfig:             "/flag/kubeconfig",
		proxyName:              "switchyard",
		minSyncPeriod:          time.Second,
		syncPeriod:             30 * time.Second,
		ipvsScheduler:          "sh",
		ipvsDrainTimeout:       15 * time.Minute,
		nodePortAddresses:      prefixes("192.168.0.0/16"),
		stateDir:               "/flag/state",
		dummyLink:              "flag0",
		masqueradeBit:          14,
		clusterCIDRs:           prefixes("10.42.0.0/16"),
		conntrackMin:           5000,
		ipvsTCPTimeout:         time.Minute,
		hostPorts:              true,
		bpfCgroupPath:          "/flag/cgroup",
		bpfPinPath:             "/sys/fs/bpf/switchyard",
		bpfCountConnections:    true,
		rebalance:              true,
		rebalanceInterval:      time.Second,
		metricsPerBackend:      true,
		metricsBackendCap:      20000,
		metricsRefreshInterval: 15 * time.Second,
		metricsConntrack:       true,
		apiSocket:              "/run/switchyard/switchyard.sock",
		dataplane:              "nftables",
		healthzBindAddress:     "127.0.0.1:10256",
		metricsBindAddress:     "127.0.0.1:10249",
		configFile:             path,
	}
	if !reflect.DeepEqual(*both, want) {
		t.Errorf("flags over file:\n got %+v\nwant %+v", *both, want)
	}

	// --dataplane picks the section: nftables has no syncPeriod in this
	// file, so the flag default stays and ipvs.syncPeriod is ignored.
	nft, err := parseFlags([]string{"--config", path, "--dataplane", "nftables"})
	if err != nil {
		t.Fatal(err)
	}
	if nft.syncPeriod != 30*time.Second || nft.masqueradeBit != 14 || nft.masqueradeAll {
		t.Errorf("nftables by flag: syncPeriod %v masqueradeBit %d masqueradeAll %v", nft.syncPeriod, nft.masqueradeBit, nft.masqueradeAll)
	}
}

func TestParseFlagsConfigFileErrors(t *testing.T) {
	bad := writeConfig(t, kpHeader+"ipvs: {scheduler: fastest}\n")
	_, err := parseFlags([]string{"--config", bad})
	if err == nil || !strings.Contains(err.Error(), "--config "+bad+": ipvs.scheduler:") {
		t.Errorf("error %v", err)
	}
	unknown := writeConfig(t, kpHeader+"ipvs: {bogus: 1}\n")
	_, err = parseFlags([]string{"--config", unknown})
	if err == nil || !strings.Contains(err.Error(), `--config `+unknown+`: document 1 (KubeProxyConfiguration): unknown field "ipvs.bogus"`) {
		t.Errorf("error %v", err)
	}
	// A valid flag does not excuse an invalid file value.
	_, err = parseFlags([]string{"--config", bad, "--ipvs-scheduler", "rr"})
	if err == nil {
		t.Error("invalid file value accepted because the flag is set")
	}
	iptablesMode := writeConfig(t, kpHeader+"mode: iptables\n")
	if _, err = parseFlags([]string{"--config", iptablesMode}); err == nil || !strings.Contains(err.Error(), "no iptables") {
		t.Errorf("mode iptables: %v", err)
	}
	if _, err = parseFlags([]string{"--config", iptablesMode, "--dataplane", "ipvs", "--hostname-override", "n"}); err != nil {
		t.Errorf("mode iptables overridden by --dataplane: %v", err)
	}
	if _, err = parseFlags([]string{"--config", filepath.Join(t.TempDir(), "missing.yaml")}); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing file: %v", err)
	}
	for _, args := range [][]string{
		{"--healthz-bind-address", "0.0.0.0"},
		{"--metrics-bind-address", "host:10249"},
	} {
		if _, err := parseFlags(append(args, "--hostname-override", "n")); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// Ignored fields are logged, one line each with the field path; logging.
// verbosity reaches klog unless -v is given.
func TestParseFlagsConfigFileLogs(t *testing.T) {
	var buf bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	defer func() {
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
		if _, err := parseFlags([]string{"--v", "0", "--hostname-override", "n"}); err != nil {
			t.Error(err)
		}
	}()
	path := writeConfig(t, kpHeader+"featureGates: {SomeGate: true}\noomScoreAdj: -999\nlogging: {verbosity: 3}\n")
	if _, err := parseFlags([]string{"--config", path, "--hostname-override", "n"}); err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	out := buf.String()
	for _, want := range []string{`field="featureGates.SomeGate"`, `field="oomScoreAdj"`, `"Configuration file field ignored"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if !klog.V(3).Enabled() {
		t.Error("logging.verbosity 3 not applied")
	}
	if _, err := parseFlags([]string{"--config", path, "--hostname-override", "n", "--v", "1"}); err != nil {
		t.Fatal(err)
	}
	if klog.V(2).Enabled() {
		t.Error("--v 1 did not override logging.verbosity")
	}
}

// The sample in deploy/ is a ConfigMap whose config.yaml must load.
func TestDeploySampleConfig(t *testing.T) {
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal([]byte(mustRead(t, "../../deploy/switchyard-config.yaml")), &cm); err != nil {
		t.Fatal(err)
	}
	content, ok := cm.Data["config.yaml"]
	if cm.Kind != "ConfigMap" || !ok {
		t.Fatalf("not a ConfigMap with config.yaml: %+v", cm)
	}
	s := mustResolve(t, content, "")
	if len(s.ignored) != 0 {
		t.Errorf("ignored: %v", s.ignored)
	}
	c, err := parseFlags([]string{"--config", writeConfig(t, content), "--hostname-override", "n"})
	if err != nil {
		t.Fatal(err)
	}
	if c.dataplane != "ipvs" || c.ipvsScheduler != "rr" || c.masqueradeBit != 14 || c.syncPeriod != 30*time.Second ||
		c.ipvsDrainTimeout != 15*time.Minute || c.dummyLink != "switchyard0" || !reflect.DeepEqual(c.clusterCIDRs, prefixes("10.244.0.0/16")) {
		t.Errorf("sample: %+v", *c)
	}
}

func TestFileSettingsApplyReportsOverriddenFlags(t *testing.T) {
	s := mustResolve(t, kpHeader+"ipvs: {scheduler: wlc}\nclusterCIDR: 10.244.0.0/16\n", "")
	c := &config{ipvsScheduler: "sh"}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.StringVar(&c.ipvsScheduler, "ipvs-scheduler", "rr", "")
	fs.String("dataplane", "auto", "")
	if err := fs.Parse([]string{"--ipvs-scheduler", "sh", "--dataplane", "ipvs"}); err != nil {
		t.Fatal(err)
	}
	overridden, err := s.apply(fs, c)
	if err != nil {
		t.Fatal(err)
	}
	// --dataplane is set but the file does not set a dataplane: not listed.
	if !reflect.DeepEqual(overridden, []string{"--ipvs-scheduler"}) {
		t.Errorf("overridden %q", overridden)
	}
	if c.ipvsScheduler != "sh" || !reflect.DeepEqual(c.clusterCIDRs, prefixes("10.244.0.0/16")) {
		t.Errorf("config %+v", *c)
	}
}

// deploy/daemonset.yaml's agent flags, with the ConfigMap of
// deploy/switchyard-config.yaml where --config points (deploy/'s own test
// checks that the file is mounted there), load as shipped: the file's
// dataplane and cluster CIDR, the flag's node name.
func TestDeployDaemonSetFlagsWithConfigMap(t *testing.T) {
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Name    string   `json:"name"`
						Command []string `json:"command"`
					} `json:"containers"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(mustRead(t, "../../deploy/daemonset.yaml")), &ds); err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal([]byte(mustRead(t, "../../deploy/switchyard-config.yaml")), &cm); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name != "switchyard" {
			continue
		}
		i := slices.Index(c.Command, "/switchyard")
		if i < 0 {
			t.Fatalf("no /switchyard in the command %v", c.Command)
		}
		for _, a := range c.Command[i+1:] {
			a = strings.ReplaceAll(a, "$(NODE_NAME)", "Node-A")
			if path, ok := strings.CutPrefix(a, "--config="); ok {
				content, ok := cm.Data[filepath.Base(path)]
				if !ok {
					t.Fatalf("--config=%s: no such key in the ConfigMap", path)
				}
				a = "--config=" + writeConfig(t, content)
			}
			args = append(args, a)
		}
	}
	if len(args) == 0 {
		t.Fatal("no switchyard container in deploy/daemonset.yaml")
	}
	c, err := parseFlags(args)
	if err != nil {
		t.Fatalf("switchyard %v: %v", args, err)
	}
	if c.hostnameOverride != "node-a" || c.dataplane != "ipvs" || !reflect.DeepEqual(c.clusterCIDRs, prefixes("10.244.0.0/16")) ||
		c.stateDir != "/var/run/switchyard" || c.healthzBindAddress != "0.0.0.0:10256" || !c.hostPorts || c.bpfSocketLB {
		t.Errorf("deploy/daemonset.yaml with its ConfigMap: %+v", *c)
	}
}
