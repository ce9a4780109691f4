package e2e

import (
	"fmt"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// TestSlowDeliveryHoldsNoOtherChannel: while node SLOW's HTTP service holds
// a delivery open, ЦО's messages to ОП on eight other channels (other
// exchange plans) are delivered one after another. The plans are chosen so
// that each channel shared a lock with the stuck one under the striped
// channel locks relay had before (64 mutexes by FNV-1a of the channel key):
// there every one of them waited for the stuck delivery.
func TestSlowDeliveryHoldsNoOtherChannel(t *testing.T) {
	stuck := header("ЦО", "SLOW", 1, 0)
	stuckFile := exchange.FileName(stuck.From, stuck.To, exchange.FormatXML)
	svc := startHoldingService(t, func(string) bool { return true })
	s := newSite(t,
		nodeSpec{code: "ЦО"},
		nodeSpec{code: "ОП"},
		nodeSpec{code: "SLOW", deliverYAML: svc.deliverYAML()})
	s.start(t)

	write := func(h exchange.Header) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(s.out(h.From), exchange.FileName(h.From, h.To, exchange.FormatXML)), fxXML(t, h, 2000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(stuck)
	waitFor(t, 20*time.Second, "SLOW's delivery to reach its service", func() bool { return svc.count(stuckFile) > 0 })

	stripe := func(plan, from, to string) uint32 {
		h := fnv.New32a()
		h.Write([]byte(bus.ChannelKey(plan, from, to)))
		return h.Sum32() % 64
	}
	want := stripe(stuck.ExchangePlan, stuck.From, stuck.To)
	var plans []string
	for i := 0; len(plans) < 8; i++ {
		if p := fmt.Sprintf("План%d", i); stripe(p, "ЦО", "ОП") == want {
			plans = append(plans, p)
		}
	}
	dst := filepath.Join(s.in("ОП"), exchange.FileName("ЦО", "ОП", exchange.FormatXML))
	for i, plan := range plans {
		h := exchange.Header{ExchangePlan: plan, From: "ЦО", To: "ОП", MessageNo: uint64(i + 1)}
		waitFor(t, 10*time.Second, "ЦО's outbox free for the next message", func() bool {
			return gone(filepath.Join(s.out("ЦО"), exchange.FileName("ЦО", "ОП", exchange.FormatXML)))
		})
		write(h)
		waitFor(t, 15*time.Second, fmt.Sprintf("%s:ЦО→ОП No %d delivered while SLOW's delivery hangs", plan, h.MessageNo), func() bool { return readNo(dst) == h.MessageNo })
	}
	if n := svc.count(stuckFile); n != 1 {
		t.Errorf("SLOW's service got %d requests while the first was held, want 1", n)
	}
}

// TestLongDeliveryLeavesNodeFlowing: node ОП's HTTP service holds SHOP1's
// message No 1 open (a big file on a slow line); SHOP1's No 2 arrives
// meanwhile. ЦО's messages to ОП are still delivered: the worker that took
// SHOP1's No 2 hands it back after a short wait for its channel instead of
// waiting out No 1, which tied up both of the node's workers. No 2 follows
// No 1 once that is done.
func TestLongDeliveryLeavesNodeFlowing(t *testing.T) {
	shopFile := exchange.FileName("SHOP1", "ОП", exchange.FormatXML)
	svc := startHoldingService(t, func(file string) bool { return file == shopFile })
	// requests begun, by sender
	count := func(from string) int { return svc.count(exchange.FileName(from, "ОП", exchange.FormatXML)) }

	s := newSite(t,
		nodeSpec{code: "ЦО"},
		nodeSpec{code: "SHOP1"},
		nodeSpec{code: "ОП", deliverYAML: svc.deliverYAML()})
	s.start(t)
	write := func(h exchange.Header) {
		t.Helper()
		path := filepath.Join(s.out(h.From), exchange.FileName(h.From, h.To, exchange.FormatXML))
		waitFor(t, 10*time.Second, h.From+"'s outbox free for the next message", func() bool { return gone(path) })
		if err := os.WriteFile(path, fxXML(t, h, 2000), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("%s→%s No %d picked up", h.From, h.To, h.MessageNo), func() bool { return gone(path) })
	}

	write(header("SHOP1", "ОП", 1, 0))
	waitFor(t, 20*time.Second, "SHOP1's No 1 to reach ОП's service", func() bool { return count("SHOP1") == 1 })
	write(header("SHOP1", "ОП", 2, 0))
	time.Sleep(500 * time.Millisecond) // a worker takes No 2 and finds its channel busy
	for no := uint64(1); no <= 3; no++ {
		write(header("ЦО", "ОП", no, 0))
		waitFor(t, 15*time.Second, fmt.Sprintf("ЦО→ОП No %d delivered while SHOP1's No 1 is held", no), func() bool { return count("ЦО") == int(no) })
	}
	if n := count("SHOP1"); n != 1 {
		t.Fatalf("ОП's service got %d of SHOP1's messages while No 1 was held, want 1", n)
	}
	svc.release()
	waitFor(t, 20*time.Second, "SHOP1's No 2 delivered after No 1", func() bool { return count("SHOP1") == 2 })
}

// holdingService is a node's WebDAV folder on 127.0.0.1 that counts the
// PUTs it gets by file name and holds open those hold picks until release
// (called at the latest when the test ends) or until the request ends. It
// holds no file: the delivery's look at the folder (GET) is answered 404.
type holdingService struct {
	srv     *httptest.Server
	mu      sync.Mutex
	got     map[string]int
	release func()
}

func startHoldingService(t *testing.T, hold func(file string) bool) *holdingService {
	t.Helper()
	released := make(chan struct{})
	var once sync.Once
	h := &holdingService{got: map[string]int{}, release: func() { once.Do(func() { close(released) }) }}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			http.NotFound(w, r)
			return
		}
		file := path.Base(r.URL.Path)
		h.mu.Lock()
		h.got[file]++
		h.mu.Unlock()
		if hold(file) {
			select {
			case <-released:
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(h.release) // runs first: lets a held request end before the close
	return h
}

// count is how many PUTs of file the service got.
func (h *holdingService) count(file string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.got[file]
}

// deliverYAML is a node's deliver endpoint PUTting into the service
// (straight to the file's name: the service counts requests by name).
func (h *holdingService) deliverYAML() string {
	return fmt.Sprintf("{ http: { url: %q, method: PUT, put_direct: true, response_timeout: 5m, timeout: 5m } }", h.srv.URL+"/in/")
}
