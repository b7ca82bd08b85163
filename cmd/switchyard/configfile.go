package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/klog/v2"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/dataplane"
)

// configFile is what --config holds: at most one KubeProxyConfiguration and
// at most one SwitchyardConfiguration, as YAML (or JSON) documents.
type configFile struct {
	kp *kubeProxyConfiguration
	sy *switchyardConfiguration
}

// ignoredField is a field of the file that is valid upstream but has no
// effect in switchyard; each one is logged at start-up.
type ignoredField struct {
	path   string
	reason string
}

func (f ignoredField) String() string { return f.path + ": " + f.reason }

// fileSettings is the configuration file resolved to switchyard's own
// settings. Zero values (nil, "") mean "the file does not set it".
type fileSettings struct {
	dataplane        string
	hostnameOverride string
	kubeconfig       string
	master           string
	manifests        string
	proxyName        string
	stateDir         string
	dummyLink        string
	ipvsScheduler    string

	healthzBindAddress string
	metricsBindAddress string

	syncPeriod       *time.Duration
	minSyncPeriod    *time.Duration
	ipvsDrainTimeout *time.Duration

	ipvsStrictARP         *bool
	masqueradeAll         *bool
	masqueradeBit         *int
	conntrackTCPBeLiberal *bool
	conntrackDropInvalid  *bool
	hostPorts             *bool
	bpfSocketLB           *bool
	bpfCountConnections   *bool
	bpfCgroupPath         string
	bpfPinPath            string

	conntrackMaxPerCore *int
	conntrackMin        *int
	// durations keyed by the flag they stand for (conntrack and IPVS
	// timeouts).
	durations map[string]time.Duration

	nodePortAddresses    []netip.Prefix
	nodePortAddressesSet bool
	clusterCIDRs         []netip.Prefix

	// klog settings from logging.verbosity / logging.vmodule.
	verbosity *uint32
	vmodule   string

	ignored []ignoredField
}

// applyConfigFile loads path, resolves it against the command line and
// copies every setting the file makes into c unless its flag was given
// explicitly: flags override the file.
func applyConfigFile(fs *pflag.FlagSet, c *config, path string) error {
	f, err := loadConfigFile(path)
	if err != nil {
		return err
	}
	flagDataplane := ""
	if fs.Changed("dataplane") {
		flagDataplane = c.dataplane
	}
	s, err := f.resolve(flagDataplane)
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	overridden, err := s.apply(fs, c)
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	for _, ig := range s.ignored {
		klog.InfoS("Configuration file field ignored", "file", path, "field", ig.path, "reason", ig.reason)
	}
	if len(overridden) > 0 {
		klog.V(1).InfoS("Command-line flags override the configuration file", "file", path, "flags", overridden)
	}
	return nil
}

// apply copies s into c, skipping settings whose flag is set on the command
// line; it returns those flags.
func (s *fileSettings) apply(fs *pflag.FlagSet, c *config) (overridden []string, err error) {
	keep := func(flag string) bool {
		if fs.Changed(flag) {
			overridden = append(overridden, "--"+flag)
			return true
		}
		return false
	}
	setStr := func(flag string, dst *string, v string) {
		if v != "" && !keep(flag) {
			*dst = v
		}
	}
	setStr("dataplane", &c.dataplane, s.dataplane)
	setStr("hostname-override", &c.hostnameOverride, s.hostnameOverride)
	setStr("kubeconfig", &c.kubeconfig, s.kubeconfig)
	setStr("master", &c.master, s.master)
	setStr("manifests", &c.manifests, s.manifests)
	setStr("proxy-name", &c.proxyName, s.proxyName)
	setStr("state-dir", &c.stateDir, s.stateDir)
	setStr("ipvs-dummy-link", &c.dummyLink, s.dummyLink)
	setStr("ipvs-scheduler", &c.ipvsScheduler, s.ipvsScheduler)
	setStr("healthz-bind-address", &c.healthzBindAddress, s.healthzBindAddress)
	setStr("metrics-bind-address", &c.metricsBindAddress, s.metricsBindAddress)
	setStr("bpf-cgroup-path", &c.bpfCgroupPath, s.bpfCgroupPath)
	setStr("bpf-pin-path", &c.bpfPinPath, s.bpfPinPath)
	setDur := func(flag string, dst *time.Duration, v *time.Duration) {
		if v != nil && !keep(flag) {
			*dst = *v
		}
	}
	setDur("sync-period", &c.syncPeriod, s.syncPeriod)
	setDur("min-sync-period", &c.minSyncPeriod, s.minSyncPeriod)
	setDur("ipvs-drain-timeout", &c.ipvsDrainTimeout, s.ipvsDrainTimeout)
	for flag, dst := range map[string]*time.Duration{
		"ipvs-tcp-timeout": &c.ipvsTCPTimeout, "ipvs-tcpfin-timeout": &c.ipvsTCPFinTimeout, "ipvs-udp-timeout": &c.ipvsUDPTimeout,
		"conntrack-tcp-timeout-established": &c.conntrackTCPEstablishedTimeout, "conntrack-tcp-timeout-close-wait": &c.conntrackTCPCloseWaitTimeout,
		"conntrack-udp-timeout": &c.conntrackUDPTimeout, "conntrack-udp-timeout-stream": &c.conntrackUDPStreamTimeout,
	} {
		if v, ok := s.durations[flag]; ok {
			setDur(flag, dst, &v)
		}
	}
	if s.conntrackMaxPerCore != nil && !keep("conntrack-max-per-core") {
		c.conntrackMaxPerCore = *s.conntrackMaxPerCore
	}
	if s.conntrackMin != nil && !keep("conntrack-min") {
		c.conntrackMin = *s.conntrackMin
	}
	setBool := func(flag string, dst *bool, v *bool) {
		if v != nil && !keep(flag) {
			*dst = *v
		}
	}
	setBool("ipvs-strict-arp", &c.ipvsStrictARP, s.ipvsStrictARP)
	setBool("masquerade-all", &c.masqueradeAll, s.masqueradeAll)
	setBool("conntrack-tcp-be-liberal", &c.conntrackTCPBeLiberal, s.conntrackTCPBeLiberal)
	setBool("conntrack-drop-invalid", &c.conntrackDropInvalid, s.conntrackDropInvalid)
	setBool("hostport", &c.hostPorts, s.hostPorts)
	setBool("bpf-socket-lb", &c.bpfSocketLB, s.bpfSocketLB)
	setBool("bpf-count-connections", &c.bpfCountConnections, s.bpfCountConnections)
	if s.masqueradeBit != nil && !keep("masquerade-bit") {
		c.masqueradeBit = *s.masqueradeBit
	}
	if s.nodePortAddressesSet && !keep("nodeport-addresses") {
		c.nodePortAddresses = s.nodePortAddresses
	}
	if s.clusterCIDRs != nil && !keep("cluster-cidr") {
		c.clusterCIDRs = s.clusterCIDRs
	}
	// klog's -v and -vmodule are in fs too (added from a Go flag set).
	if s.verbosity != nil && fs.Lookup("v") != nil && !keep("v") {
		if err := fs.Set("v", strconv.FormatUint(uint64(*s.verbosity), 10)); err != nil {
			return nil, fmt.Errorf("logging.verbosity: %w", err)
		}
	}
	if s.vmodule != "" && fs.Lookup("vmodule") != nil && !keep("vmodule") {
		if err := fs.Set("vmodule", s.vmodule); err != nil {
			return nil, fmt.Errorf("logging.vmodule: %w", err)
		}
	}
	return overridden, nil
}

func loadConfigFile(path string) (*configFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	f, err := decodeConfigFile(data)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return f, nil
}

// decodeConfigFile splits data into YAML documents and decodes each one
// strictly into the type its apiVersion and kind name.
func decodeConfigFile(data []byte) (*configFile, error) {
	f := &configFile{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
			continue // empty document or only comments
		}
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := json.Unmarshal(js, &tm); err != nil {
			return nil, fmt.Errorf("document %d: not an object: %w", n, err)
		}
		switch {
		case tm.Kind == kubeProxyKind && tm.APIVersion == kubeProxyAPIVersion:
			if f.kp != nil {
				return nil, fmt.Errorf("document %d: a second %s", n, kubeProxyKind)
			}
			f.kp = &kubeProxyConfiguration{}
			if err := decodeStrict(js, f.kp); err != nil {
				return nil, fmt.Errorf("document %d (%s): %w", n, kubeProxyKind, err)
			}
		case tm.Kind == switchyardKind && tm.APIVersion == switchyardAPIVersion:
			if f.sy != nil {
				return nil, fmt.Errorf("document %d: a second %s", n, switchyardKind)
			}
			f.sy = &switchyardConfiguration{}
			if err := decodeStrict(js, f.sy); err != nil {
				return nil, fmt.Errorf("document %d (%s): %w", n, switchyardKind, err)
			}
		case tm.Kind == kubeProxyKind || tm.Kind == switchyardKind:
			want := kubeProxyAPIVersion
			if tm.Kind == switchyardKind {
				want = switchyardAPIVersion
			}
			return nil, fmt.Errorf("document %d: apiVersion %q of kind %s is not supported (want %s)", n, tm.APIVersion, tm.Kind, want)
		default:
			return nil, fmt.Errorf("document %d: kind %q (apiVersion %q) is not a configuration: want %s/%s or %s/%s",
				n, tm.Kind, tm.APIVersion, kubeProxyAPIVersion, kubeProxyKind, switchyardAPIVersion, switchyardKind)
		}
	}
	if f.kp == nil && f.sy == nil {
		return nil, fmt.Errorf("no %s or %s document", kubeProxyKind, switchyardKind)
	}
	return f, nil
}

// decodeStrict decodes js into v, case-sensitively, rejecting unknown and
// duplicate fields; errors name the field path ("ipvs.scheduler").
func decodeStrict(js []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(js, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			want := te.Type.String()
			if te.Type == reflect.TypeFor[durationString]() {
				want = `a duration string such as "30s"`
			}
			return fmt.Errorf("%s: want %s, got a JSON %s", te.Field, want, te.Value)
		}
		return err
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// resolve validates the file and maps it to switchyard's settings.
// flagDataplane is --dataplane when given on the command line, else "": it
// decides, like the file's own mode/dataplane, which of the per-mode
// sections (iptables, ipvs, nftables) apply.
func (f *configFile) resolve(flagDataplane string) (*fileSettings, error) {
	kp := f.kp
	if kp == nil {
		kp = &kubeProxyConfiguration{}
	}
	sy := f.sy
	if sy == nil {
		sy = &switchyardConfiguration{}
	}
	s := &fileSettings{}
	var err error
	ignore := func(path, reason string) { s.ignored = append(s.ignored, ignoredField{path, reason}) }
	syErr := func(path, format string, args ...any) error {
		return fmt.Errorf("%s %s: %s", switchyardKind, path, fmt.Sprintf(format, args...))
	}

	// Dataplane: --dataplane > SwitchyardConfiguration.dataplane > mode.
	var modeErr error
	modeDataplane := ""
	switch kp.Mode {
	case "":
		// kube-proxy's default (iptables) does not exist here: auto.
	case "ipvs", "nftables":
		modeDataplane = kp.Mode
	case "iptables":
		modeErr = fmt.Errorf(`mode: "iptables": switchyard has no iptables (NAT rules) mode; use mode ipvs or nftables (or leave mode empty for auto)`)
	case "kernelspace":
		modeErr = fmt.Errorf(`mode: "kernelspace" is Windows-only; switchyard supports ipvs and nftables`)
	default:
		return nil, fmt.Errorf("mode: %q is not a proxy mode: use ipvs or nftables (or leave it empty for auto)", kp.Mode)
	}
	switch sy.Dataplane {
	case "", "auto", "ipvs", "nftables":
	default:
		return nil, syErr("dataplane", "%q: must be auto, ipvs or nftables", sy.Dataplane)
	}
	switch {
	case flagDataplane != "":
		if kp.Mode != "" && kp.Mode != flagDataplane {
			ignore("mode", "overridden by --dataplane")
		}
	case sy.Dataplane != "":
		s.dataplane = sy.Dataplane
		if kp.Mode != "" && kp.Mode != sy.Dataplane {
			ignore("mode", switchyardKind+" dataplane overrides it")
		}
	default:
		if modeErr != nil {
			return nil, modeErr
		}
		s.dataplane = modeDataplane
	}
	dp := flagDataplane
	if dp == "" {
		dp = s.dataplane
	}
	if dp == "" {
		dp = "auto"
	}

	// Sync periods and masquerading live per mode upstream. The section of
	// the chosen dataplane applies (ipvs masquerades by iptables.*, as in
	// kube-proxy); with auto, every section that sets a value must agree.
	durs := map[string]durationString{
		"syncPeriod": kp.SyncPeriod, "minSyncPeriod": kp.MinSyncPeriod,
		"iptables.syncPeriod": kp.IPTables.SyncPeriod, "iptables.minSyncPeriod": kp.IPTables.MinSyncPeriod,
		"ipvs.syncPeriod": kp.IPVS.SyncPeriod, "ipvs.minSyncPeriod": kp.IPVS.MinSyncPeriod,
		"nftables.syncPeriod": kp.NFTables.SyncPeriod, "nftables.minSyncPeriod": kp.NFTables.MinSyncPeriod,
	}
	durCand := func(name string) []candidate[time.Duration] {
		var out []candidate[time.Duration]
		for _, p := range []string{"ipvs." + name, "nftables." + name, "iptables." + name, name} {
			out = append(out, candidate[time.Duration]{path: p})
		}
		return out
	}
	for _, name := range []string{"syncPeriod", "minSyncPeriod"} {
		cands := durCand(name)
		for i := range cands {
			d, err := parseDuration(cands[i].path, durs[cands[i].path])
			if err != nil {
				return nil, err
			}
			// 0 means "default" upstream (kubeadm writes 0s for every
			// period it does not set).
			cands[i].v, cands[i].set = d, d != 0
		}
		var apply []string
		switch dp {
		case "ipvs":
			apply = []string{"ipvs." + name, name}
		case "nftables":
			apply = []string{"nftables." + name, name}
		}
		v, ok, err := pick(dp, apply, cands, ignore)
		if err != nil {
			return nil, err
		}
		if ok {
			if name == "syncPeriod" {
				s.syncPeriod = &v
			} else {
				s.minSyncPeriod = &v
			}
		}
	}

	var masqApply []string
	switch dp {
	case "ipvs":
		masqApply = []string{"iptables.masqueradeBit"}
	case "nftables":
		masqApply = []string{"nftables.masqueradeBit"}
	}
	bits := []candidate[int]{{path: "iptables.masqueradeBit"}, {path: "nftables.masqueradeBit"}}
	for i, b := range []*int32{kp.IPTables.MasqueradeBit, kp.NFTables.MasqueradeBit} {
		if b == nil {
			continue
		}
		if *b < 0 || *b > 31 {
			return nil, fmt.Errorf("%s: %d: must be 0..31", bits[i].path, *b)
		}
		bits[i].v, bits[i].set = int(*b), true
	}
	if v, ok, err := pick(dp, masqApply, bits, ignore); err != nil {
		return nil, err
	} else if ok {
		s.masqueradeBit = &v
	}
	// masqueradeAll: false is the default, so only true counts as set.
	switch all := true; {
	case dp == "ipvs":
		if kp.IPTables.MasqueradeAll {
			s.masqueradeAll = &all
		}
		if kp.NFTables.MasqueradeAll {
			ignore("nftables.masqueradeAll", "applies to the nftables dataplane; the dataplane is ipvs (which uses iptables.masqueradeAll)")
		}
	case dp == "nftables":
		if kp.NFTables.MasqueradeAll {
			s.masqueradeAll = &all
		}
		if kp.IPTables.MasqueradeAll {
			ignore("iptables.masqueradeAll", "applies to the ipvs dataplane; the dataplane is nftables (which uses nftables.masqueradeAll)")
		}
	case kp.IPTables.MasqueradeAll || kp.NFTables.MasqueradeAll:
		s.masqueradeAll = &all
	}

	// IPVS.
	if kp.IPVS.Scheduler != "" {
		if !dataplane.ValidScheduler(kp.IPVS.Scheduler) {
			return nil, fmt.Errorf("ipvs.scheduler: %q: must be one of %s", kp.IPVS.Scheduler, strings.Join(dataplane.IPVSSchedulers, ", "))
		}
		s.ipvsScheduler = kp.IPVS.Scheduler
	}
	if kp.IPVS.StrictARP {
		t := true
		s.ipvsStrictARP = &t
	}
	if _, err := parsePrefixList("ipvs.excludeCIDRs", kp.IPVS.ExcludeCIDRs); err != nil {
		return nil, err
	}
	if len(kp.IPVS.ExcludeCIDRs) > 0 {
		ignore("ipvs.excludeCIDRs", "switchyard never touches IPVS virtual servers it did not create")
	}
	if dp == "nftables" {
		if kp.IPVS.Scheduler != "" {
			ignore("ipvs.scheduler", "does not apply to the nftables dataplane")
		}
		if kp.IPVS.StrictARP {
			ignore("ipvs.strictARP", "does not apply to the nftables dataplane")
		}
	}
	for _, d := range []namedDuration{
		{"ipvs.tcpTimeout", kp.IPVS.TCPTimeout, "ipvs-tcp-timeout"},
		{"ipvs.tcpFinTimeout", kp.IPVS.TCPFinTimeout, "ipvs-tcpfin-timeout"},
		{"ipvs.udpTimeout", kp.IPVS.UDPTimeout, "ipvs-udp-timeout"},
	} {
		if v, err := parseDuration(d.path, d.d); err != nil {
			return nil, err
		} else if v != 0 && dp == "nftables" {
			ignore(d.path, "does not apply to the nftables dataplane")
		} else if v != 0 {
			s.setDuration(d.flag, v)
		}
	}

	// Conntrack.
	if kp.Conntrack.TCPBeLiberal {
		t := true
		s.conntrackTCPBeLiberal = &t
	}
	if p := kp.Conntrack.MaxPerCore; p != nil {
		if *p < 0 {
			return nil, fmt.Errorf("conntrack.maxPerCore: %d: must not be negative", *p)
		}
		v := int(*p)
		s.conntrackMaxPerCore = &v
	}
	if p := kp.Conntrack.Min; p != nil {
		if *p < 0 {
			return nil, fmt.Errorf("conntrack.min: %d: must not be negative", *p)
		}
		v := int(*p)
		s.conntrackMin = &v
	}
	for _, d := range []namedDuration{
		{"conntrack.tcpEstablishedTimeout", kp.Conntrack.TCPEstablishedTimeout, "conntrack-tcp-timeout-established"},
		{"conntrack.tcpCloseWaitTimeout", kp.Conntrack.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait"},
		{"conntrack.udpTimeout", kp.Conntrack.UDPTimeout, "conntrack-udp-timeout"},
		{"conntrack.udpStreamTimeout", kp.Conntrack.UDPStreamTimeout, "conntrack-udp-timeout-stream"},
	} {
		if v, err := parseDuration(d.path, d.d); err != nil {
			return nil, err
		} else if v != 0 {
			s.setDuration(d.flag, v)
		}
	}

	// Addresses.
	if kp.ClusterCIDR != "" {
		cidrs, err := parsePrefixList("clusterCIDR", strings.Split(kp.ClusterCIDR, ","))
		if err != nil {
			return nil, err
		}
		s.clusterCIDRs = cidrs
	}
	if kp.NodePortAddresses != nil {
		if s.nodePortAddresses, err = nodePortAddresses("nodePortAddresses", kp.NodePortAddresses); err != nil {
			return nil, err
		}
		s.nodePortAddressesSet = true
	}
	if sy.NodePortAddresses != nil {
		if kp.NodePortAddresses != nil {
			ignore("nodePortAddresses", switchyardKind+" nodePortAddresses overrides it")
		}
		if s.nodePortAddresses, err = nodePortAddresses(switchyardKind+" nodePortAddresses", sy.NodePortAddresses); err != nil {
			return nil, err
		}
		s.nodePortAddressesSet = true
	}
	if s.healthzBindAddress, err = bindAddress("healthzBindAddress", kp.HealthzBindAddress, 10256); err != nil {
		return nil, err
	}
	if s.metricsBindAddress, err = bindAddress("metricsBindAddress", kp.MetricsBindAddress, 10249); err != nil {
		return nil, err
	}
	if kp.BindAddress != "" {
		if _, err := netip.ParseAddr(kp.BindAddress); err != nil {
			return nil, fmt.Errorf("bindAddress: %q is not an IP address", kp.BindAddress)
		}
		if a := netip.MustParseAddr(kp.BindAddress); !a.IsUnspecified() {
			ignore("bindAddress", "switchyard does not need the node's primary IP")
		}
	}

	// Identity and API server access.
	s.hostnameOverride = strings.TrimSpace(kp.HostnameOverride)
	s.kubeconfig = kp.ClientConnection.Kubeconfig
	cc := kp.ClientConnection
	if cc.QPS != 0 {
		ignore("clientConnection.qps", "not implemented: client-go's default rate limit is used")
	}
	if cc.Burst != 0 {
		ignore("clientConnection.burst", "not implemented: client-go's default rate limit is used")
	}
	if cc.ContentType != "" {
		ignore("clientConnection.contentType", "not implemented: client-go's default content type is used")
	}
	if cc.AcceptContentTypes != "" {
		ignore("clientConnection.acceptContentTypes", "not implemented: client-go's default content type is used")
	}

	// Logging: verbosity and vmodule go to klog.
	lg := kp.Logging
	s.verbosity = lg.Verbosity
	var vm []string
	for i, it := range lg.VModule {
		if it.FilePattern == "" || strings.ContainsAny(it.FilePattern, ",=") {
			return nil, fmt.Errorf("logging.vmodule[%d].filePattern: %q: must be non-empty, without ',' or '='", i, it.FilePattern)
		}
		vm = append(vm, fmt.Sprintf("%s=%d", it.FilePattern, it.Verbosity))
	}
	s.vmodule = strings.Join(vm, ",")
	switch lg.Format {
	case "", "text":
	case "json":
		ignore("logging.format", "switchyard logs in klog's text format only")
	default:
		return nil, fmt.Errorf("logging.format: %q: must be text or json", lg.Format)
	}
	if rawSet(lg.FlushFrequency) {
		ignore("logging.flushFrequency", "klog's default flush frequency is used")
	}
	if o := lg.Options; o != nil {
		for _, r := range []struct {
			name string
			o    *kpOutputRoutingOptions
		}{{"text", o.Text}, {"json", o.JSON}} {
			if r.o != nil && (r.o.SplitStream || rawSet(r.o.InfoBufferSize)) {
				ignore("logging.options."+r.name, "switchyard has no alpha logging options")
			}
		}
	}

	// Upstream fields that mean nothing here.
	for _, g := range sortedKeys(kp.FeatureGates) {
		ignore("featureGates."+g, "switchyard has no feature gates")
	}
	switch kp.DetectLocalMode {
	case "", "ClusterCIDR":
	case "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix":
		ignore("detectLocalMode", "switchyard tells local traffic by clusterCIDR only")
	default:
		return nil, fmt.Errorf("detectLocalMode: %q: must be ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", kp.DetectLocalMode)
	}
	if kp.DetectLocal != (kpDetectLocalConfiguration{}) {
		ignore("detectLocal", "switchyard tells local traffic by clusterCIDR only")
	}
	if p := kp.IPTables.LocalhostNodePorts; p != nil && *p {
		ignore("iptables.localhostNodePorts", "switchyard never serves NodePorts on loopback addresses")
	}
	if p := kp.IPTables.SNATNodeInternalIP; p != nil && *p {
		ignore("iptables.snatNodeInternalIP", "not implemented: SNAT uses the egress interface's address")
	}
	if d, err := parseDuration("configSyncPeriod", kp.ConfigSyncPeriod); err != nil {
		return nil, err
	} else if d != 0 {
		ignore("configSyncPeriod", "informers use switchyard's own resync")
	}
	if kp.Winkernel != (kpWinkernelConfiguration{}) {
		ignore("winkernel", "Windows only")
	}
	if kp.WindowsRunAsService {
		ignore("windowsRunAsService", "Windows only")
	}
	if kp.OOMScoreAdj != nil {
		ignore("oomScoreAdj", "not implemented: set it in the Pod or unit running switchyard")
	}
	if kp.PortRange != "" {
		ignore("portRange", "unused upstream too")
	}
	if kp.BindAddressHardFail {
		ignore("bindAddressHardFail", "switchyard serves no healthz or metrics endpoint yet")
	}
	if kp.EnableProfiling {
		ignore("enableProfiling", "switchyard serves no profiling endpoint")
	}
	if kp.ShowHiddenMetricsForVersion != "" {
		ignore("showHiddenMetricsForVersion", "switchyard serves no metrics yet")
	}

	// SwitchyardConfiguration.
	s.manifests = sy.Manifests
	s.master = sy.Master
	s.proxyName = sy.ProxyName
	s.stateDir = sy.StateDir
	if l := sy.IPVS.DummyLink; l != "" {
		if len(l) > 15 || strings.ContainsAny(l, "/: \t\n") {
			return nil, syErr("ipvs.dummyLink", "%q: not a valid interface name (at most 15 characters, no '/', ':' or spaces)", l)
		}
		s.dummyLink = l
	}
	if d, err := parseDuration("ipvs.drainTimeout", sy.IPVS.DrainTimeout); err != nil {
		return nil, fmt.Errorf("%s %w", switchyardKind, err)
	} else if d != 0 {
		s.ipvsDrainTimeout = &d
	}
	s.conntrackDropInvalid = sy.Conntrack.DropInvalid
	s.hostPorts = sy.HostPort
	s.bpfSocketLB = sy.BPF.SocketLB
	s.bpfCountConnections = sy.BPF.CountConnections
	for _, p := range []struct {
		path string
		v    string
		dst  *string
	}{{"bpf.cgroupPath", sy.BPF.CgroupPath, &s.bpfCgroupPath}, {"bpf.pinPath", sy.BPF.PinPath, &s.bpfPinPath}} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			return nil, syErr(p.path, "%q: must be an absolute path", p.v)
		}
		*p.dst = p.v
	}
	return s, nil
}

type namedDuration struct {
	path string
	d    durationString
	flag string // the flag it sets, if any
}

func (s *fileSettings) setDuration(flag string, d time.Duration) {
	if s.durations == nil {
		s.durations = map[string]time.Duration{}
	}
	s.durations[flag] = d
}

// candidate is one place a setting can come from: a field path, its value
// and whether the file sets it.
type candidate[T comparable] struct {
	path string
	v    T
	set  bool
}

// pick chooses among cands. With dataplane auto, every candidate that is
// set must agree. Otherwise the first set candidate named in apply wins; the
// other set candidates are reported through ignore.
func pick[T comparable](dp string, apply []string, cands []candidate[T], ignore func(path, reason string)) (T, bool, error) {
	var zero T
	if dp == "auto" {
		var first *candidate[T]
		for i := range cands {
			c := &cands[i]
			if !c.set {
				continue
			}
			if first == nil {
				first = c
			} else if c.v != first.v {
				return zero, false, fmt.Errorf("%s (%v) and %s (%v) disagree and the dataplane is auto: set mode (or dataplane) to pick the section that applies, or make them equal",
					first.path, first.v, c.path, c.v)
			}
		}
		if first == nil {
			return zero, false, nil
		}
		return first.v, true, nil
	}
	byPath := map[string]candidate[T]{}
	for _, c := range cands {
		byPath[c.path] = c
	}
	winner := ""
	var v T
	for _, p := range apply {
		if c := byPath[p]; c.set {
			winner, v = p, c.v
			break
		}
	}
	for _, c := range cands {
		if !c.set || c.path == winner {
			continue
		}
		if slices.Contains(apply, c.path) {
			ignore(c.path, "overridden by "+winner)
		} else {
			ignore(c.path, "does not apply to the "+dp+" dataplane")
		}
	}
	return v, winner != "", nil
}

func parseDuration(path string, d durationString) (time.Duration, error) {
	if d == "" {
		return 0, nil
	}
	v, err := time.ParseDuration(strings.TrimSpace(string(d)))
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (examples: 30s, 1m, 2h22m)", path, string(d))
	}
	if v < 0 {
		return 0, fmt.Errorf("%s: %s: must not be negative", path, d)
	}
	return v, nil
}

func parsePrefixList(path string, in []string) ([]netip.Prefix, error) {
	out := []netip.Prefix{}
	for i, s := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not a CIDR", path, i, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// nodePortAddresses maps kube-proxy's list of CIDRs and keywords. "all" is
// switchyard's default (every local address but loopback): an empty list.
// "primary" needs the Node object's addresses and "localhost" loopback
// NodePorts; switchyard has neither, so both are errors rather than a
// silently different set of addresses.
func nodePortAddresses(path string, in []string) ([]netip.Prefix, error) {
	var cidrs []string
	all := false
	for i, s := range in {
		switch strings.TrimSpace(s) {
		case "all":
			all = true
		case "primary":
			return nil, fmt.Errorf(`%s[%d]: "primary" is not supported: list the CIDRs of the node addresses instead`, path, i)
		case "localhost":
			return nil, fmt.Errorf(`%s[%d]: "localhost" is not supported: switchyard never serves NodePorts on loopback addresses`, path, i)
		default:
			if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
				return nil, fmt.Errorf("%s[%d]: %q is not a CIDR or one of all, primary, localhost", path, i, s)
			}
			cidrs = append(cidrs, s)
		}
	}
	if all {
		return nil, nil
	}
	return parsePrefixList(path, cidrs)
}

// bindAddress validates an "IP:port" server address; an IP without a port
// gets defPort, as kube-proxy does. Empty stays empty (not set).
func bindAddress(path, v string, defPort int) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", nil
	}
	if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
		return net.JoinHostPort(a.String(), strconv.Itoa(defPort)), nil
	}
	if err := validateHostPort(v); err != nil {
		return "", fmt.Errorf("%s: %q: %v", path, v, err)
	}
	return v, nil
}

func validateHostPort(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return errors.New("want IP:port")
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return errors.New("want IP:port, the host is not an IP address")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return errors.New("want IP:port, the port is not 1..65535")
	}
	return nil
}

// rawSet reports whether a raw JSON value is something other than
// null, 0, "0", "" or "0s".
func rawSet(r json.RawMessage) bool {
	switch strings.TrimSpace(string(r)) {
	case "", "null", "0", `"0"`, `""`, `"0s"`:
		return false
	}
	return true
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
