package http

import (
	"context"
	"io"
	stdhttp "net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// TestOneCErrorLongDescription: 1C's {"error": true, ...} whose
// errorDescription runs past 64 KiB (a long exception text) was counted
// as delivered: the JSON cut at 64 KiB does not parse, though "error":
// true is in its first bytes (found by review).
func TestOneCErrorLongDescription(t *testing.T) {
	reply := `{"error": true, "errorDescription": "` + strings.Repeat("Ошибка при загрузке. ", 4000) + `"}`
	_, srv := serve(t, status(200, reply, "Content-Type", "application/json"))
	p := newPub(t, Config{URL: srv.URL})
	p.retry.tries = 1
	err := p.Publish("", newMsg(hdr(5), "Message_ЦО_ОП.xml", xmlOf(t, hdr(5), 2000), nil).Message)
	if err == nil {
		t.Fatalf("a %d-byte 1C error reply {\"error\": true, ...} counted as a delivery", len(reply))
	}
	if !exchange.IsPermanent(err) {
		t.Errorf("Publish: %v, want the 1C error as a dead letter", err)
	}
}

// TestCheckNotNewerStallCutByResponseTimeout: the look before a
// WebDAV PUT (GET of the file there) whose body stalls is bounded only by
// timeout, not by response_timeout as README promises ("longest time the
// body may stall in either direction"; found by review).
func TestCheckNotNewerStallCutByResponseTimeout(t *testing.T) {
	srv := httptest.NewServer(stdhttp.HandlerFunc(func(w stdhttp.ResponseWriter, r *stdhttp.Request) {
		if r.Method != stdhttp.MethodGet {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(201)
			return
		}
		w.Header().Set("Content-Length", "5000")
		w.WriteHeader(200)
		io.WriteString(w, "<?xml version=")
		w.(stdhttp.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer srv.Close()
	p := newPub(t, Config{URL: srv.URL + "/", Method: "PUT", PutDirect: true,
		Timeout: config.Duration(4 * time.Second), ResponseTimeout: config.Duration(200 * time.Millisecond)})
	p.retry.tries = 1
	err := p.Publish("", newMsg(hdr(5), "Message_ЦО_ОП.xml", xmlOf(t, hdr(5), 2000), nil).Message)
	if err == nil || !strings.Contains(err.Error(), "(response_timeout)") {
		t.Fatalf("GET body stalled: Publish: %v; want it cut by response_timeout, not timeout", err)
	}
}

// TestPickupSecondOversizeMessageTaken: two different messages of the
// same size, each over the size limit by its Content-Length, one after the
// other (the service hands each once): the first is dead-lettered, the
// second was taken for "the file served before" (its digest was of the
// problem text and the name only, the same for both) and vanished without
// a record (found by review). Its headers and first bytes tell it now.
func TestPickupSecondOversizeMessageTaken(t *testing.T) {
	bodies := [][]byte{xmlOf(t, hdr(5), 30_000), xmlOf(t, hdr(6), 30_000)}
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(stdhttp.HandlerFunc(func(w stdhttp.ResponseWriter, r *stdhttp.Request) {
		mu.Lock()
		i := n
		n++
		mu.Unlock()
		if i >= len(bodies) {
			w.WriteHeader(204)
			return
		}
		w.Header().Set("Content-Disposition", `attachment; filename="Message_CO_OP.xml"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(bodies[i])))
		w.WriteHeader(200)
		w.Write(bodies[i])
	}))
	defer srv.Close()
	p, err := NewPickup("CO", Config{URL: srv.URL, Interval: config.Duration(100 * time.Millisecond),
		Limits: exchange.Limits{MaxSize: 10_000}}, nil, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer p.Close()
	ch, _ := p.Subscribe(ctx, "")
	m := next(t, ch, 5*time.Second)
	t.Logf("first: problem %q", m.Metadata.Get(exchange.MetaProblem))
	m.Ack()
	select {
	case m := <-ch:
		t.Logf("second: problem %q", m.Metadata.Get(exchange.MetaProblem))
		m.Ack()
	case <-time.After(4 * time.Second):
		mu.Lock()
		gets := n
		mu.Unlock()
		t.Fatalf("the second oversize message (No 6) was served (%d GETs) but never handed: lost without a dead letter", gets)
	}
}

// TestHealthURLPlainHTTPNoPassword: with url https:// and health_url
// http://, relay check sent the basic-auth password in clear text (found
// by review): credentials go only to url's host, never down to http.
func TestHealthURLPlainHTTPNoPassword(t *testing.T) {
	t.Setenv("HTTP_REVIEW_PW", "s3cret")
	var got string
	srv := httptest.NewServer(stdhttp.HandlerFunc(func(w stdhttp.ResponseWriter, r *stdhttp.Request) {
		got = r.Header.Get("Authorization")
		w.WriteHeader(200)
	}))
	defer srv.Close()
	cfg := Config{URL: "https://erp.invalid/base/hs/exchange/message", HealthURL: srv.URL + "/health",
		User: "relay", PasswordEnv: "HTTP_REVIEW_PW"}
	if err := Check(context.Background(), "ERP", "deliver", cfg, nil); err != nil {
		t.Logf("Check: %v", err)
	}
	if got != "" {
		t.Fatalf("health_url over plain http got Authorization %q (url is https://)", got)
	}
}
