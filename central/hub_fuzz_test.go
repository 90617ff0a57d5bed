package central

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// fuzzRoutes are the hub's routes that decode a JSON body a node sends.
var fuzzRoutes = []string{
	"/v1/receipts",
	"/v1/rejections",
	"/v1/copies",
	"/v1/calls",
	"/v1/calls/c-1/answer",
	"/v1/calls/answers",
	"/v1/applications",
	"/v1/applications/1/decision",
	"/v1/feedback",
	"/v1/feedback/1/answer",
	"/v1/destructions",
	"/v1/resources",
}

// FuzzHubRequests posts arbitrary bodies to those routes through the
// hub's real handler, as an enrolled node: the provider gaj or the
// consumer mzj, which holds a query grant. Whatever a node sends, the hub
// must answer without panicking, within a bound, with a 2xx or a 4xx that
// carries a JSON error (a 5xx other than a call's "provider offline" or
// "no answer in time" would mean the node's input reached the hub as an
// internal failure).
func FuzzHubRequests(f *testing.F) {
	c := newCallHub(f, "mzj")
	c.grant("mzj", api.ModeQuery, []string{"姓名"}, 0, 0)
	seed := func(route uint8, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(route, b)
	}
	seed(0, map[string]any{"version": 1, "resource": "gaj.hukou", "grant": "g-mzj", "sequence": 1, "provider": "gaj", "consumer": "mzj",
		"batch_digest": "00", "applied": time.Now().UTC(), "seal_alg": "ed25519", "seal_key_id": "x", "signature": "AA=="})
	seed(1, api.Rejection{Grant: "g-mzj", Sequence: 1, Reason: "digest mismatch"})
	seed(2|0x80, api.Copy{ID: "copy-1", Grant: "g-mzj", Resource: "gaj.hukou", Consumer: "mzj", State: api.CopyDone, Updated: time.Now()})
	seed(3, api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeQuery, Params: map[string]string{"id_no": goodID}})
	seed(4|0x80, api.CallAnswer{Fields: []string{"姓名"}, Found: true})
	seed(5|0x80, []api.CallAnswer{{ID: "c-1"}, {ID: "c-2", Error: "busy"}})
	seed(6, map[string]any{"resource": "gaj.hukou", "mode": "query", "fields": []string{"姓名"}, "purpose": "低保审核"})
	seed(7|0x80, map[string]any{"approve": true, "fields": []string{"姓名"}})
	seed(8, map[string]any{"resource": "gaj.hukou", "kind": "error", "text": "字段有误"})
	seed(9|0x80, map[string]any{"text": "已更正"})
	seed(10, map[string]any{"version": 1, "grant": "g-mzj", "consumer": "mzj", "destroyed": time.Now().UTC()})
	seed(11|0x80, []api.CallDecl{{Name: "by_id", Params: []api.CallParam{{Name: "id_no", Type: api.ParamCitizenID}}, Fields: []string{"姓名"}}})
	f.Add(uint8(5|0x80), []byte(`[`+string(bytes.Repeat([]byte(`{"id":"c"},`), 1025))+`{}]`))
	f.Add(uint8(3), []byte(`{"resource":"gaj.hukou","call":"by_id","mode":"query","params":{"id_no":"`+badID+`"}}`))
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		node := "mzj"
		if route&0x80 != 0 {
			node = "gaj"
		}
		path := fuzzRoutes[int(route&0x7f)%len(fuzzRoutes)]
		// The hub waits call_timeout (3 s here) for a provider's answer;
		// a consumer that gave up sooner ends the wait with its request.
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.certs[node]}}
		w := httptest.NewRecorder()
		start := time.Now()
		c.srv.ServeHTTP(w, r)
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("POST %s as %s took %s", path, node, d)
		}
		switch code := w.Code; {
		case path == "/v1/calls" && (code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout):
			// The provider is offline or did not answer in time.
		case code >= 500:
			t.Fatalf("POST %s as %s: %d %s", path, node, code, w.Body.Bytes())
		case code >= 400:
			var e api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("POST %s as %s: %d without a JSON error: %q", path, node, code, w.Body.Bytes())
			}
		}
	})
}
