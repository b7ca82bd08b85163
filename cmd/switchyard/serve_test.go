package main

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane/healthcheck"
)

// TestServeHTTP: the server answers once serveHTTP returns, a busy
// address is an error, and ending ctx closes it.
func TestServeHTTP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := serveHTTP(ctx, "healthz", "127.0.0.1:0", healthcheck.NewProxyHealth(time.Minute, nil).Handler())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/livez")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(body) == 0 {
		t.Errorf("/livez: HTTP %d %q", resp.StatusCode, body)
	}
	if _, err := serveHTTP(ctx, "metrics", addr.String(), http.NotFoundHandler()); err == nil {
		t.Error("second server on the same address started")
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := http.Get("http://" + addr.String() + "/livez"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server still answering 5 s after its context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
