package guest

import (
	"reflect"
	"testing"
)

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline("console=ttyS0 quiet  -- -test.v=true \"-test.run=A B\" -x\"y z\"\n")
	want := []string{"console=ttyS0", "quiet", "--", "-test.v=true", "-test.run=A B", "-xy z"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitCmdline = %q, want %q", got, want)
	}
}
