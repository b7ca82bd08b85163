package ipvs

import "github.com/switchyard/switchyard/sysctl"

// FakeSysctl is an in-memory /proc/sys (see sysctl.Fake). Keys that were
// never set are missing (ErrNotFound on Get and Set, as when a module is
// not loaded); ReadOnly keys refuse writes. Sets and Dump come from
// sysctl.Fake.
type FakeSysctl struct {
	*sysctl.Fake
}

var _ Sysctl = (*FakeSysctl)(nil)

// NewFakeSysctl returns a fake holding initial.
func NewFakeSysctl(initial map[string]string) *FakeSysctl {
	return &FakeSysctl{sysctl.NewFake(initial)}
}

// NewFakeIPVSSysctl returns a fake with the keys of a 6.1 kernel with
// ip_vs loaded, at their kernel defaults.
func NewFakeIPVSSysctl() *FakeSysctl {
	return NewFakeSysctl(map[string]string{
		sysctlOSRelease:               "6.1.0-56-amd64",
		sysctlForward:                 "0",
		sysctlVSConntrack:             "0",
		sysctlConnReuseMode:           "1",
		sysctlExpireNoDestConn:        "0",
		sysctlExpireQuiescentTemplate: "0",
		sysctlARPIgnore:               "0",
		sysctlARPAnnounce:             "0",
	})
}

func (f *FakeSysctl) Get(key string) (string, error) {
	v, err := f.Fake.Get(key)
	return v, mapSysctlErr(err)
}

func (f *FakeSysctl) Set(key, value string) error {
	return mapSysctlErr(f.Fake.Set(key, value))
}
