package e2e

// http endpoint tests against a real nginx (nginx_test.go) as the WebDAV
// folder a node reads from: deliveries by PUT arrive byte-identical under
// their names (Cyrillic codes, .xml and .zip, basic auth), an outage of
// the server only delays them, and a refusal (404, 1C's error reply)
// dead-letters the message with the server's words.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/pipeline"
	"github.com/relay1c/relay/test/realserver"
)

// hxPasswordEnv holds the basic-auth password of nginx's /auth/ location.
const hxPasswordEnv = "RELAY_E2E_HTTP_PASSWORD"

// hxDeliver is a deliver value for nodeSpec.deliverYAML: method to the URL
// of path on ng, with short timeouts.
func hxDeliver(ng *realserver.Nginx, method, path string, extra ...string) string {
	opts := append([]string{
		fmt.Sprintf("url: %q", ng.URL(path)),
		"method: " + method,
		"connect_timeout: 5s",
		"response_timeout: 10s",
		"timeout: 1m",
	}, extra...)
	return "{ http: { " + strings.Join(opts, ", ") + " } }"
}

// TestHTTPDeliverToNginx: ЦО sends to ОП (a WebDAV folder) and to СКЛАД
// (the same behind basic auth) at once, .xml and .zip, small and 5 MB;
// each message arrives by PUT byte-identical under its name, nothing else
// is left in the folders, and no endpoint shows an error.
func TestHTTPDeliverToNginx(t *testing.T) {
	const total = 4
	ng := startNginx(t)
	s := newSite(t,
		nodeSpec{code: "ЦО"},
		nodeSpec{code: "ОП", deliverYAML: hxDeliver(ng, "PUT", "dav/ОП/in/")},
		nodeSpec{code: "СКЛАД", deliverYAML: hxDeliver(ng, "PUT", "auth/склад/in",
			"user: "+realserver.NginxUser, "password_env: "+hxPasswordEnv)})
	s.start(t)

	type leg struct{ to, dir string }
	legs := []leg{{"ОП", "dav/ОП/in"}, {"СКЛАД", "auth/склад/in"}}
	var wg sync.WaitGroup
	errs := make(chan error, 2*total)
	for _, l := range legs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := uint64(1); n <= total; n++ {
				h := header("ЦО", l.to, n, 0)
				size := int64(3000 + int(n)*7001)
				if n == 3 {
					size = 5 << 20
				}
				format, data := exchange.FormatXML, fxXML(t, h, size)
				if n%2 == 0 {
					format, data = exchange.FormatZip, fxZip(t, h, size)
				}
				name := exchange.FileName("ЦО", l.to, format)
				src, dst := filepath.Join(s.out("ЦО"), name), ng.Root(l.dir+"/"+name)
				if err := os.WriteFile(src, data, 0o644); err != nil {
					errs <- err
					return
				}
				if !fxAwait(30*time.Second, func() bool { return fxFileSum(dst) == fxSum(data) }) {
					errs <- fmt.Errorf("ЦО→%s No %d (%s, %d bytes) not at %s within 30s", l.to, n, format, len(data), dst)
					return
				}
				if !fxAwait(5*time.Second, func() bool { return gone(src) }) {
					errs <- fmt.Errorf("ЦО→%s No %d: source not taken", l.to, n)
					return
				}
				// The node's 1C reads the message and removes it.
				if err := os.Remove(dst); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("nodes: %+v", fxNodes(t, s))
		t.FailNow()
	}
	for _, l := range legs {
		if es, err := os.ReadDir(ng.Root(l.dir)); err != nil || len(es) != 0 {
			t.Errorf("%s holds %d entries (%v), want none left", l.dir, len(es), err)
		}
		c := channelWhen(t, s, "ЦО", l.to, func(c api.ChannelView) bool { return c.DeliveredNo == total && c.Pending == 0 })
		if c.DeliveredNo != total || c.Pending != 0 || c.Dead+c.Duplicates+c.Stale+c.Superseded != 0 || c.LastError != "" {
			t.Errorf("channel ЦО→%s: %+v", l.to, c)
		}
	}
	for code, n := range fxNodes(t, s) {
		if n.PickupError != "" || n.DeliverError != "" {
			t.Errorf("node %s shows endpoint errors: %+v", code, n)
		}
	}
	if ls := fxDead(t, s); len(ls) != 0 {
		t.Errorf("dead letters: %+v", ls)
	}
}

// TestHTTPNginxDownAndBack: while nginx is stopped, messages for ОП are
// taken from the senders' folders and wait; /api/v1/nodes shows ОП's
// delivery failing. Once nginx is back they arrive byte-identical, the
// error clears, and nothing is dead.
func TestHTTPNginxDownAndBack(t *testing.T) {
	const outage = 5 * time.Second
	ng := startNginx(t)
	s := newSite(t,
		nodeSpec{code: "A"},
		nodeSpec{code: "Б"},
		nodeSpec{code: "ОП", mode: "sequential", deliverYAML: hxDeliver(ng, "PUT", "dav/op/in/")})
	s.start(t)

	down := time.Now()
	ng.Stop()
	type msg struct {
		from string
		name string
		data []byte
	}
	msgs := []msg{
		{"A", exchange.FileName("A", "ОП", exchange.FormatXML), fxXML(t, header("A", "ОП", 1, 0), 40_000)},
		{"Б", exchange.FileName("Б", "ОП", exchange.FormatZip), fxZip(t, header("Б", "ОП", 1, 0), 40_000)},
	}
	for _, m := range msgs {
		src := filepath.Join(s.out(m.from), m.name)
		if err := os.WriteFile(src, m.data, 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, m.name+" taken", func() bool { return gone(src) })
	}
	waitFor(t, 15*time.Second, "ОП's delivery error shown", func() bool {
		return strings.Contains(fxNodes(t, s)["ОП"].DeliverError, "connection refused")
	})
	t.Logf("while down: deliver_error %q", fxNodes(t, s)["ОП"].DeliverError)
	time.Sleep(time.Until(down.Add(outage)))
	for _, m := range msgs {
		if !gone(ng.Root("dav/op/in/" + m.name)) {
			t.Fatalf("%s delivered while nginx was down", m.name)
		}
		if c := channel(t, s, m.from, "ОП"); c.DeliveredNo != 0 || c.Pending != 1 || c.Dead != 0 {
			t.Errorf("channel %s→ОП while down: %+v", m.from, c)
		}
	}
	if ls := fxDead(t, s); len(ls) != 0 {
		t.Fatalf("dead letters while down: %+v", ls)
	}

	if err := ng.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, m := range msgs {
		dst := ng.Root("dav/op/in/" + m.name)
		waitFor(t, 60*time.Second, m.name+" delivered after nginx is back", func() bool { return fxFileSum(dst) == fxSum(m.data) })
	}
	t.Logf("delivered %s after nginx came back", time.Since(back).Round(100*time.Millisecond))
	waitFor(t, 10*time.Second, "ОП's delivery error cleared", func() bool { return fxNodes(t, s)["ОП"].DeliverError == "" })
	for _, m := range msgs {
		if c := channelWhen(t, s, m.from, "ОП", func(c api.ChannelView) bool { return c.DeliveredNo == 1 && c.Pending == 0 }); c.DeliveredNo != 1 || c.Pending != 0 || c.Dead != 0 {
			t.Errorf("channel %s→ОП: %+v", m.from, c)
		}
	}
	if ls := fxDead(t, s); len(ls) != 0 {
		t.Errorf("dead letters: %+v", ls)
	}
}

// TestHTTPRefusedIsDead: a target answering 404, and a 1C HTTP service
// answering 200 with {"error": true, ...}, dead-letter the message with
// the status or the service's description; other nodes are not affected.
func TestHTTPRefusedIsDead(t *testing.T) {
	ng := startNginx(t)
	s := newSite(t,
		nodeSpec{code: "ЦО"},
		nodeSpec{code: "GONE", deliverYAML: hxDeliver(ng, "PUT", "gone/in/")},
		nodeSpec{code: "ERP", deliverYAML: hxDeliver(ng, "POST", "1c-error/hs/exchange/message")},
		nodeSpec{code: "ОП", deliverYAML: hxDeliver(ng, "PUT", "dav/op/in/")})
	s.start(t)

	for _, to := range []string{"GONE", "ERP", "ОП"} {
		if err := os.WriteFile(filepath.Join(s.out("ЦО"), exchange.FileName("ЦО", to, exchange.FormatXML)), fxXML(t, header("ЦО", to, 1, 0), 3000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var letters []pipeline.DeadLetter
	waitFor(t, 30*time.Second, "two dead letters", func() bool { letters = fxDead(t, s); return len(letters) >= 2 })
	waitFor(t, 10*time.Second, "ЦО→ОП delivered", func() bool {
		return readNo(ng.Root("dav/op/in/"+exchange.FileName("ЦО", "ОП", exchange.FormatXML))) == 1
	})
	byNode := map[string]pipeline.DeadLetter{}
	for _, l := range letters {
		byNode[l.Node] = l
		t.Logf("dead letter %s: %s", l.Node, l.Reason)
	}
	if len(letters) != 2 {
		t.Errorf("dead letters %+v, want GONE's and ERP's", letters)
	}
	want := map[string]string{
		"GONE": "http GONE: PUT http://" + ng.Addr() + "/gone/in/Message_ЦО_GONE.xml: 404 Not Found",
		"ERP":  "http ERP: POST " + ng.URL("1c-error/hs/exchange/message") + ": 200 OK: the service reported an error: Обмен с узлом заблокирован",
	}
	for node, w := range want {
		l, ok := byNode[node]
		switch {
		case !ok:
			t.Errorf("no dead letter for %s", node)
		case l.Stage != pipeline.StageDeliver || !strings.HasPrefix(l.Reason, w) || strings.Contains(l.Reason, "\n") || l.Header == nil || l.Header.MessageNo != 1:
			t.Errorf("dead letter for %s: %+v; want stage deliver, No 1 and a reason starting %q", node, l, w)
		}
		if c := channel(t, s, "ЦО", node); c.Dead != 1 || c.DeliveredNo != 0 || c.Pending != 0 {
			t.Errorf("channel ЦО→%s: %+v", node, c)
		}
	}
}
