package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/klog/v2"
)

// serveHTTP serves h on the TCP address addr until ctx ends (the health
// and metrics servers). It returns once the socket is bound, so a bad or
// busy address is a start-up error; serve errors after that are logged.
func serveHTTP(ctx context.Context, what, addr string, h http.Handler) (net.Addr, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", what, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "HTTP server stopped", "server", what, "address", addr)
		}
	}()
	return ln.Addr(), nil
}
