package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// ErrAgentDown is wrapped by Client errors when nothing listens on the
// socket (no file, or a stale one): yardctl then reads the kernel itself
// where it can.
var ErrAgentDown = errors.New("agent not running")

// APIError is a non-2xx answer of the agent.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string { return fmt.Sprintf("agent: %s (HTTP %d)", e.Message, e.StatusCode) }

// IsNotFound reports whether the agent answered 404 (for /v1/ipvs and
// /v1/nftables: it runs the other dataplane; /v1/conntrack: it reads no
// conntrack table).
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == http.StatusNotFound
}

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for socket (DefaultSocket when empty).
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	return &out, c.do(ctx, http.MethodGet, PathStatus, nil, &out)
}

// Services is GET /v1/services; empty filters match everything.
func (c *Client) Services(ctx context.Context, namespace, name string) (*ServiceList, error) {
	var out ServiceList
	return &out, c.do(ctx, http.MethodGet, PathServices, filter(namespace, name), &out)
}

// IPVS is GET /v1/ipvs.
func (c *Client) IPVS(ctx context.Context) (*IPVSTable, error) {
	var out IPVSTable
	return &out, c.do(ctx, http.MethodGet, PathIPVS, nil, &out)
}

// NFTables is GET /v1/nftables.
func (c *Client) NFTables(ctx context.Context) (*NFTables, error) {
	var out NFTables
	return &out, c.do(ctx, http.MethodGet, PathNFTables, nil, &out)
}

// Conntrack is GET /v1/conntrack.
func (c *Client) Conntrack(ctx context.Context, namespace, name string) (*ConntrackReport, error) {
	var out ConntrackReport
	return &out, c.do(ctx, http.MethodGet, PathConntrack, filter(namespace, name), &out)
}

// Trace is GET /v1/trace; destination is "IP:PORT[/PROTO]".
func (c *Client) Trace(ctx context.Context, destination string) (*Trace, error) {
	var out Trace
	return &out, c.do(ctx, http.MethodGet, PathTrace, url.Values{"destination": {destination}}, &out)
}

// Sync is POST /v1/sync.
func (c *Client) Sync(ctx context.Context) (*SyncResponse, error) {
	var out SyncResponse
	return &out, c.do(ctx, http.MethodPost, PathSync, nil, &out)
}

func filter(namespace, name string) url.Values {
	q := url.Values{}
	if namespace != "" {
		q.Set("namespace", namespace)
	}
	if name != "" {
		q.Set("name", name)
	}
	return q
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, out any) error {
	u := url.URL{Scheme: "http", Host: "switchyard", Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// The dial error says it best ("connect: no such file or
		// directory"); the URL is made up.
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		switch {
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("%w at %s (%w)", ErrAgentDown, c.socket, err)
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			return fmt.Errorf("agent at %s: %w (the api is for root)", c.socket, err)
		}
		return fmt.Errorf("agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("read agent answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		return &APIError{StatusCode: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}
