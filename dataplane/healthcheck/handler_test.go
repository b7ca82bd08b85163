package healthcheck

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

func TestWriteResponse(t *testing.T) {
	name := dataplane.ServiceName{Namespace: "web", Name: "frontend"}
	for _, tc := range []struct {
		desc           string
		localEndpoints int
		proxyHealthy   bool
		wantCode       int
		wantBody       string
	}{
		{
			desc: "local endpoints, proxy healthy", localEndpoints: 2, proxyHealthy: true,
			wantCode: http.StatusOK,
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"web\",\n\t\t\"name\": \"frontend\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}",
		},
		{
			desc: "no local endpoint", localEndpoints: 0, proxyHealthy: true,
			wantCode: http.StatusServiceUnavailable,
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"web\",\n\t\t\"name\": \"frontend\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}",
		},
		{
			desc: "local endpoints, proxy unhealthy", localEndpoints: 1, proxyHealthy: false,
			wantCode: http.StatusServiceUnavailable,
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"web\",\n\t\t\"name\": \"frontend\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": false\n}",
		},
		{
			desc: "nothing", localEndpoints: 0, proxyHealthy: false,
			wantCode: http.StatusServiceUnavailable,
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"web\",\n\t\t\"name\": \"frontend\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": false\n}",
		},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeResponse(rec, name, tc.localEndpoints, tc.proxyHealthy)
			if rec.Code != tc.wantCode {
				t.Errorf("code = %d, want %d", rec.Code, tc.wantCode)
			}
			if got := rec.Body.String(); got != tc.wantBody {
				t.Errorf("body:\n%s\nwant:\n%s", got, tc.wantBody)
			}
			if got := rec.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options = %q", got)
			}
		})
	}
}
