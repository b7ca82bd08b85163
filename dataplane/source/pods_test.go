package source

import (
	"context"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func testPod(ns, name, node, ip string, hostPort int32) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{"big": "annotation"},
			CreationTimestamp: metav1.NewTime(time.Unix(1700000000, 0))},
		Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{
			{Name: "app", Image: "img", Ports: []v1.ContainerPort{{ContainerPort: 8080, HostPort: hostPort, Protocol: v1.ProtocolTCP}}},
			{Name: "sidecar", Image: "img2", Env: []v1.EnvVar{{Name: "A", Value: "b"}}},
		}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: ip, PodIPs: []v1.PodIP{{IP: ip}}},
	}
}

// TestRunInformersPods: a handler implementing PodHandler gets this node's
// Pods (the field selector asks the API server; the handler checks again
// since the fake ignores field selectors), trimmed to what host ports
// need, their updates and deletes, and SetPodsSynced after the initial
// list. A handler without PodHandler never lists Pods.
func TestRunInformersPods(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		testPod("demo", "web-0", testNode, "10.244.1.10", 8080),
		testPod("demo", "web-1", "node-b", "10.244.2.10", 8080),
	)
	rec := newPodRecorder()
	runInformers(t, client, rec, rec.notify, InformerOptions{})
	eventually(t, "pods synced", func() bool { return rec.with(func(r *recorder) bool { return r.synced["pods"] }) })

	rec.with(func(r *recorder) bool {
		if _, ok := rec.pods["demo/web-1"]; ok {
			t.Error("got another node's Pod")
		}
		p := rec.pods["demo/web-0"]
		if p == nil {
			t.Fatal("no Pod demo/web-0")
		}
		if len(p.Annotations) != 0 || len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Image != "" ||
			p.Spec.Containers[0].Ports[0].HostPort != 8080 || p.Status.PodIPs[0].IP != "10.244.1.10" ||
			p.Spec.NodeName != testNode || p.CreationTimestamp.Unix() != 1700000000 || p.Status.Phase != v1.PodRunning {
			t.Errorf("trimmed Pod %+v", p)
		}
		return true
	})
	syncAt := slices.Index(rec.Events(), "synced pods")
	if pod := slices.Index(rec.Events(), "pod+ demo/web-0"); pod < 0 || pod > syncAt {
		t.Errorf("events %q: the initial Pod must come before the synced mark", rec.Events())
	}

	pods := client.CoreV1().Pods("demo")
	mustDo(t, func() error {
		_, err := pods.Update(ctx, testPod("demo", "web-0", testNode, "10.244.1.11", 8080), metav1.UpdateOptions{})
		return err
	})
	eventually(t, "Pod update", func() bool {
		return rec.with(func(*recorder) bool { p := rec.pods["demo/web-0"]; return p != nil && p.Status.PodIP == "10.244.1.11" })
	})
	mustDo(t, func() error { return pods.Delete(ctx, "web-0", metav1.DeleteOptions{}) })
	eventually(t, "Pod delete", func() bool { return rec.with(func(*recorder) bool { return rec.pods["demo/web-0"] == nil }) })

	var podLists []string
	for _, a := range client.Actions() {
		if l, ok := a.(k8stesting.ListActionImpl); ok && l.GetResource().Resource == "pods" {
			podLists = append(podLists, l.ListRestrictions.Fields.String())
		}
	}
	if !slices.Equal(podLists, []string{"spec.nodeName=" + testNode}) {
		t.Errorf("Pod lists with field selectors %q, want one with spec.nodeName=%s", podLists, testNode)
	}

	// Without PodHandler: no Pod list or watch.
	client2 := fake.NewClientset(testPod("demo", "web-0", testNode, "10.244.1.10", 8080))
	plain := newRecorder()
	runInformers(t, client2, plain, nil, InformerOptions{})
	eventually(t, "sync", func() bool { return plain.with(func(r *recorder) bool { return r.synced["slices"] }) })
	for _, a := range client2.Actions() {
		if a.GetResource().Resource == "pods" {
			t.Errorf("a handler without PodHandler caused %s pods", a.GetVerb())
		}
	}
}

func TestTrimPodPassesOtherObjects(t *testing.T) {
	n := testNodeObj("n", "z")
	if got, err := TrimPod(n); err != nil || got != any(n) {
		t.Errorf("TrimPod(Node) = %v, %v", got, err)
	}
}
