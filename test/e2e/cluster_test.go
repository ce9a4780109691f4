package e2e

// Several relays: two replicas of one relay id on a three-server JetStream
// cluster of nats-server processes (the head office), and an office
// relay whose embedded NATS is a leaf node of that cluster.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/pipeline"
	"github.com/relay1c/relay/test/realserver"
)

// startCluster starts three nats-servers in JetStream domain hq, of the
// version relay embeds (clusterServer). The cluster tests start their own
// servers, so they run once: not again in the script's pass against a
// single external server.
func startCluster(t *testing.T, leafTLS bool) *realserver.NATSCluster {
	t.Helper()
	return startClusterOf(t, false, leafTLS)
}

// clusterServer is the nats-server binary of the module version relay
// embeds, built from the module cache. Not Debian's: Debian 12's 2.9.10
// loses a crashed server's stream data to replayed purges and lets two
// compare-and-set writes both succeed in a cluster, and relay refuses it
// for replicas > 1 (see TestClusterOldServerRefused, which runs Debian's).
func clusterServer(t *testing.T) string {
	t.Helper()
	return natsBinary.build(t, "github.com/nats-io/nats-server/v2", "nats-server")
}

// startClusterOf is startCluster, of Debian's nats-server if debian.
func startClusterOf(t *testing.T, debian, leafTLS bool) *realserver.NATSCluster {
	t.Helper()
	// Mostly waiting (lease lapses, an outage): run beside each other.
	t.Parallel()
	if testing.Short() {
		t.Skip("cluster tests skipped under -short")
	}
	if natsURL() != "" {
		t.Skip("the cluster tests start their own nats-servers; they ran in the embedded pass")
	}
	bin := "" // Debian's
	if !debian {
		bin = clusterServer(t)
	}
	c, err := realserver.StartNATSCluster(bin, t.TempDir(), 3, "hq", leafTLS)
	if err != nil {
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") != "1" && strings.Contains(err.Error(), "not found") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("nats-server n1 log tail:\n%s", c.LogTail(0))
		}
	})
	return c
}

// relayDir writes a relay's routing.yaml into a folder of its own (its data
// dir and log live there); the exchange folders are shared, absolute paths.
func relayDir(t *testing.T, relay, nats, nodes string) *site {
	t.Helper()
	s := &site{root: t.TempDir(), listen: freeAddr(t)}
	s.cfg = filepath.Join(s.root, "routing.yaml")
	yaml := fmt.Sprintf("relay:\n  id: %s\n  data_dir: ./data\n  listen: %s\nnats: %s\n%s", relay, s.listen, nats, nodes)
	if err := os.WriteFile(s.cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// dirNode is a node's YAML with dir endpoints under root/<code>/{out,in}.
func dirNode(t *testing.T, root, code, relay, mode string) string {
	t.Helper()
	for _, d := range []string{"out", "in"} {
		if err := os.MkdirAll(filepath.Join(root, code, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m := ""
	if mode != "" {
		m = "    mode: " + mode + "\n"
	}
	return fmt.Sprintf("  %s:\n    relay: %s\n%s    pickup: { dir: { path: %q, settle: 150ms, poll_interval: 300ms } }\n    deliver: { dir: %q }\n",
		code, relay, m, filepath.Join(root, code, "out"), filepath.Join(root, code, "in"))
}

// waitReady waits for a relay process's /readyz.
func waitReady(t *testing.T, s *site, d time.Duration) {
	t.Helper()
	waitFor(t, d, "relay ready on "+s.listen, func() bool {
		resp, err := http.Get("http://" + s.listen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// jsOn is a JetStream client of the cluster, for the test's own checks.
func jsOn(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// channelState reads a channel's state from EXCHANGE_CHANNELS.
func channelState(ctx context.Context, js jetstream.JetStream, plan, from, to string) (pipeline.Channel, error) {
	var c pipeline.Channel
	kv, err := js.KeyValue(ctx, bus.BucketChannels)
	if err != nil {
		return c, err
	}
	e, err := kv.Get(ctx, bus.ChannelKey(plan, from, to))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	return c, json.Unmarshal(e.Value(), &c)
}

// traceStuck logs, for a test that failed, the channel's state and every
// recorded step of the number after its delivered one: whether that message
// was ever taken in, dead-lettered, dropped or delivered.
func traceStuck(t *testing.T, js jetstream.JetStream, listen, plan, from, to string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := channelState(ctx, js, plan, from, to)
	if err != nil {
		t.Logf("stuck channel: state: %v", err)
		return
	}
	t.Logf("stuck channel %s:%s->%s: %+v", plan, from, to, st)
	channel := plan + ":" + from + "->" + to
	for _, e := range traceEvents(ctx, t, listen, url.Values{"q": {"Message_" + from + "_" + to + ".xml"}}) {
		if e.Channel == channel && e.No == st.DeliveredNo+1 {
			t.Logf("No %d: %s %s at %s: %s (msg %s, source %s)", e.No, e.Step, e.Node, e.Time.Format(time.RFC3339Nano), e.Detail, e.MsgID, e.Source)
		}
	}
}

// leaseHolder is the instance holding a lease ("" when none).
func leaseHolder(ctx context.Context, js jetstream.JetStream, key string) string {
	kv, err := js.KeyValue(ctx, bus.BucketLeases)
	if err != nil {
		return ""
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return ""
	}
	return string(e.Value())
}

// traceEvents asks the relay API at listen for a trace (query: node=<code>
// or q=<file name>), all of it: the way an operator reads them, through the
// relay's own reading of EXCHANGE_EVENTS. A server of the cluster that
// restarted a moment ago answers "no responders" for a while for the
// consumers placed on it; that reading rides it out (once, the test's
// own reader failed for a whole minute on it).
func traceEvents(ctx context.Context, t *testing.T, listen string, query url.Values) []pipeline.Event {
	t.Helper()
	// The relay's own connection may sit on a server that restarted a
	// moment ago: a failed trace is asked again, for up to a minute.
	var last string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		out, err := askTrace(ctx, listen, query)
		if err == nil {
			return out
		}
		last = err.Error()
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("trace %s: %s", query.Encode(), last)
		}
	}
}

// askTrace is one GET /api/v1/trace of the relay API at listen.
func askTrace(ctx context.Context, listen string, query url.Values) ([]pipeline.Event, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+listen+"/api/v1/trace?limit=1000000&"+query.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var out []pipeline.Event
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// oneCWriter writes No 1, 2, ... of one channel into the sender's outbox,
// each only after the previous was taken, as 1C does.
type oneCWriter struct {
	path     string
	from, to string
	last     atomic.Uint64
	// takenAt is when the writer saw each number leave the outbox.
	mu      sync.Mutex
	takenAt map[uint64]time.Time
	err     error
	stop    chan struct{}
	done    chan struct{}
	halted  sync.Once
}

func startWriter(path, from, to string, pace time.Duration) *oneCWriter {
	w := &oneCWriter{path: path, from: from, to: to, stop: make(chan struct{}), done: make(chan struct{}), takenAt: map[uint64]time.Time{}}
	go func() {
		defer close(w.done)
		for n := uint64(1); ; n++ {
			var buf bytes.Buffer
			if w.err = exchangetest.WriteXML(&buf, header(from, to, n, 0), 4<<10); w.err != nil {
				return
			}
			tmp := w.path + ".tmp~"
			if w.err = os.WriteFile(tmp, buf.Bytes(), 0o644); w.err != nil {
				return
			}
			if w.err = os.Rename(tmp, w.path); w.err != nil {
				return
			}
			w.last.Store(n)
			for {
				select {
				case <-w.stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				if _, err := os.Stat(w.path); errors.Is(err, fs.ErrNotExist) {
					w.mu.Lock()
					w.takenAt[n] = time.Now()
					w.mu.Unlock()
					break
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(pace):
			}
		}
	}()
	return w
}

// taken is when number n left the outbox.
func (w *oneCWriter) taken(n uint64) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.takenAt[n]
	return at, ok
}

// halt stops writing and returns the last number written (and taken, or
// waiting in the outbox).
func (w *oneCWriter) halt() uint64 {
	w.halted.Do(func() { close(w.stop) })
	<-w.done
	return w.last.Load()
}

// TestClusterOldServerRefused: relay with replicas 3 on a cluster of
// Debian 12's nats-server 2.9.10 stops at start and says why, rather than
// run where a crashed server loses what was stored before relay's last
// purge. (Each process the test starts is stopped by PID: the relay exits
// by itself, CommandContext kills it if not.)
func TestClusterOldServerRefused(t *testing.T) {
	c := startClusterOf(t, true, false)
	bin := buildRelay(t)
	s := relayDir(t, "hq", fmt.Sprintf("{ url: %q, replicas: 3 }", c.ClientURL()), "nodes:\n"+dirNode(t, t.TempDir(), "A", "hq", ""))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run", "-c", s.cfg)
	cmd.Dir = s.root
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("relay run on nats-server 2.9.10 with replicas 3: %v, want exit status 1\n%s", err, out)
	}
	if strings.Contains(string(out), "nats disconnected") {
		t.Errorf("relay's own close of its connection is warned about:\n%s", out)
	}
	for _, want := range []string{"runs nats-server 2.9.10", "2.9.21 or later", "nats-server#4196", "nats://127.0.0.1:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("relay's refusal does not say %q:\n%s", want, out)
		}
	}
	// With replicas 1 the same server is fine (a stream of one server has
	// no raft log to replay).
	one := relayDir(t, "hq", fmt.Sprintf("{ url: %q }", c.ClientURL()), "nodes:\n"+dirNode(t, t.TempDir(), "A", "hq", ""))
	p := newRelayProc(t, bin, one)
	p.start()
	waitReady(t, one, 60*time.Second)
}

// TestClusterReplicas: two relays with the same id on a three-server
// cluster share one node's pickup through a lease and its deliveries
// through the durable consumer. The lease holder is SIGKILLed five times
// while messages flow (the other takes the pickup over; the time it takes
// is the failover figure), then one NATS server is stopped. Every message
// arrives, in order, once.
func TestClusterReplicas(t *testing.T) {
	c := startCluster(t, false)
	bin := buildRelay(t)
	ex := t.TempDir()
	// M pulls its messages over HTTP (http_pull), from one replica only.
	const mToken = "m-secret-token"
	nodes := "nodes:\n" + dirNode(t, ex, "A", "hq", "") + dirNode(t, ex, "B", "hq", "sequential") +
		"  M:\n    relay: hq\n    api_token_env: RELAY_E2E_M_TOKEN\n    deliver: { http_pull: {} }\n"
	natsYAML := fmt.Sprintf("{ url: %q, replicas: 3 }", c.ClientURL())
	sites := []*site{relayDir(t, "hq", natsYAML, nodes), relayDir(t, "hq", natsYAML, nodes)}
	procs := []*relayProc{newRelayProc(t, bin, sites[0]), newRelayProc(t, bin, sites[1])}
	for i, p := range procs {
		p.env = []string{"RELAY_E2E_M_TOKEN=" + mToken}
		p.start()
		waitReady(t, sites[i], 60*time.Second)
	}
	js := jsOn(t, c.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	out := filepath.Join(ex, "A", "out", "Message_A_B.xml")
	// B's 1C acknowledges what its folder shows: each number waits for
	// that (B is sequential), about a second and a half a message; A
	// writes one a second.
	acknowledge(t, filepath.Join(ex, "B", "out"), "B", "A", filepath.Join(ex, "B", "in", "Message_A_B.xml"))
	w := startWriter(out, "A", "B", time.Second)
	defer w.halt()
	holder := func() int {
		h := leaseHolder(ctx, js, "pickup."+bus.Token("A"))
		for i, s := range sites {
			if strings.HasSuffix(h, "/"+s.listen) {
				return i
			}
		}
		return -1
	}
	waitFor(t, 30*time.Second, "a pickup lease holder", func() bool { return holder() >= 0 })

	var failovers []time.Duration
	for round := 1; round <= 5; round++ {
		time.Sleep(1500 * time.Millisecond)
		// Kill while a message waits in the outbox. The dying holder may
		// still take that one; once the lease has moved, whatever waits is
		// taken by the other replica, and when it is, is the failover.
		waitFor(t, 10*time.Second, "a message waiting in the outbox", func() bool {
			_, err := os.Stat(out)
			return err == nil
		})
		h := holder()
		if h < 0 {
			t.Fatalf("round %d: no lease holder", round)
		}
		t0 := time.Now()
		procs[h].kill()
		waitFor(t, 60*time.Second, fmt.Sprintf("round %d: the lease to move from replica %d", round, h), func() bool { return holder() == 1-h })
		next := w.last.Load() // waiting now, or about to be written
		if _, done := w.taken(next); done {
			next++ // taken by the dying holder; the next is the other's
		}
		var at time.Time
		waitFor(t, 60*time.Second, fmt.Sprintf("round %d: No %d taken by the other replica", round, next), func() bool {
			var ok bool
			at, ok = w.taken(next)
			return ok
		})
		failovers = append(failovers, at.Sub(t0))
		procs[h].start()
		waitReady(t, sites[h], 60*time.Second)
	}
	slices.Sort(failovers)
	t.Logf("FIGURE failover (SIGKILL of the lease holder to the first pickup by the other replica), lease_ttl 6s: median %s, min %s, max %s, all %v",
		failovers[2].Round(10*time.Millisecond), failovers[0].Round(10*time.Millisecond), failovers[4].Round(10*time.Millisecond), failovers)

	// One NATS server stops: the flow goes on through the other two.
	before := w.last.Load()
	if err := c.Stop(1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "10 more messages picked up with one NATS server stopped", func() bool {
		return w.last.Load() >= before+10
	})
	st, _ := channelState(ctx, js, "Магазины", "A", "B")
	t.Logf("with n2 stopped: written up to No %d, delivered No %d", w.last.Load(), st.DeliveredNo)
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}

	last := w.halt()
	t.Cleanup(func() {
		if t.Failed() {
			traceStuck(t, js, sites[0].listen, "Магазины", "A", "B")
		}
	})
	// Every number arrives: B is sequential, so a lost message would hold
	// the channel below it for good. The killed replicas' in-flight
	// deliveries come back after the delivery ack wait (30s).
	waitFor(t, 120*time.Second, fmt.Sprintf("B to hold No %d", last), func() bool {
		st, err := channelState(ctx, js, "Магазины", "A", "B")
		return err == nil && st.DeliveredNo == last
	})
	if got := readNo(filepath.Join(ex, "B", "in", "Message_A_B.xml")); got != last {
		t.Fatalf("B's inbox holds No %d, want %d", got, last)
	}
	// Every number delivered, none twice (sequential: none superseded).
	delivered := map[uint64]int{}
	for _, e := range traceEvents(ctx, t, sites[0].listen, url.Values{"node": {"B"}}) {
		if e.Step == pipeline.StepDelivered {
			delivered[e.No]++
		}
	}
	for no := uint64(1); no <= last; no++ {
		if n := delivered[no]; n != 1 {
			t.Errorf("No %d delivered %d times, want once", no, n)
		}
	}
	t.Logf("%d messages, %d delivery events, all delivered once", last, len(delivered))

	// A message for M waits in the mailbox of the replica that took it
	// from JetStream; M talks to replica 0 only. With replica 0 down, the
	// message parks at replica 1; unfetched there, it goes back to
	// JetStream after 2 × lease_ttl and comes round to replica 0.
	procs[0].kill()
	if _, err := exchangetest.WriteFile(filepath.Join(ex, "A", "out"), header("A", "M", 1, 0), 2<<10, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "A→M taken in by replica 1", func() bool {
		st, err := channelState(ctx, js, "Магазины", "A", "M")
		return err == nil && st.PickedNo == 1
	})
	time.Sleep(time.Second) // parked in replica 1's mailbox
	procs[0].start()
	waitReady(t, sites[0], 60*time.Second)
	pull := func(method, path string) (int, http.Header) {
		req, _ := http.NewRequestWithContext(ctx, method, "http://"+sites[0].listen+path, nil)
		req.Header.Set("Authorization", "Bearer "+mToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	t0 := time.Now()
	var offer http.Header
	waitFor(t, 90*time.Second, "M's message offered by replica 0", func() bool {
		code, hdr := pull(http.MethodGet, "/api/v1/nodes/M/messages/next")
		offer = hdr
		return code == http.StatusOK
	})
	if code, _ := pull(http.MethodPost, "/api/v1/nodes/M/messages/"+offer.Get("Relay-Message-Id")+"/ack"); code != http.StatusOK {
		t.Fatalf("ack on replica 0: %d", code)
	}
	waitFor(t, 30*time.Second, "A→M delivered", func() bool {
		st, err := channelState(ctx, js, "Магазины", "A", "M")
		return err == nil && st.DeliveredNo == 1
	})
	t.Logf("M pulled its message from replica 0 after %s", time.Since(t0).Round(100*time.Millisecond))
	var dead []json.RawMessage
	if err := relayJSON(bin, sites[0], &dead, "dead", "list"); err != nil {
		t.Fatal(err)
	}
	if len(dead) != 0 {
		t.Fatalf("dead letters: %s", dead)
	}
}

// TestOfficeLeaf: an office relay whose embedded NATS is a leaf node of the
// head office cluster, over TLS. Messages cross both ways; with the whole cluster
// stopped for 30s the office keeps taking in and delivering locally, and
// what it took in for head office nodes arrives once the cluster is back.
func TestOfficeLeaf(t *testing.T) {
	c := startCluster(t, true)
	bin := buildRelay(t)
	ex := t.TempDir()
	nodes := "nodes:\n" + dirNode(t, ex, "HQ1", "hq", "") + dirNode(t, ex, "OFF", "office1", "") + dirNode(t, ex, "OFF2", "office1", "")
	hq := relayDir(t, "hq", fmt.Sprintf("{ url: %q, replicas: 3 }", c.ClientURL()), nodes)
	// The link is TLS, verified against the head office's certificate.
	office := relayDir(t, "office1", fmt.Sprintf("{ leaf: { url: %q, tls: { ca_file: %q } } }", c.LeafURL(0), c.CertFile), nodes)
	hqp, offp := newRelayProc(t, bin, hq), newRelayProc(t, bin, office)
	hqp.start()
	offp.start()
	waitReady(t, hq, 60*time.Second)
	waitReady(t, office, 60*time.Second)

	put := func(from, to string, no uint64) {
		t.Helper()
		if _, err := exchangetest.WriteFile(filepath.Join(ex, from, "out"), header(from, to, no, 0), 2<<10, exchange.FormatXML); err != nil {
			t.Fatal(err)
		}
	}
	arrived := func(from, to string, no uint64) func() bool {
		return func() bool { return readNo(filepath.Join(ex, to, "in", "Message_"+from+"_"+to+".xml")) == no }
	}

	// Link up: both ways.
	put("HQ1", "OFF", 1)
	put("OFF", "HQ1", 1)
	waitFor(t, 60*time.Second, "HQ1→OFF No 1 at the office", arrived("HQ1", "OFF", 1))
	waitFor(t, 60*time.Second, "OFF→HQ1 No 1 at the head office", arrived("OFF", "HQ1", 1))

	// The head office goes away for 30s. Its servers stop, their ports
	// stay reserved (Close would give them up for another test to take
	// meanwhile: found by review).
	for i := range 3 {
		if err := c.Stop(i); err != nil {
			t.Fatal(err)
		}
	}
	down := time.Now()
	put("OFF", "OFF2", 1)
	put("OFF", "HQ1", 2)
	waitFor(t, 20*time.Second, "OFF→OFF2 delivered at the office while the cluster is down", arrived("OFF", "OFF2", 1))
	waitFor(t, 20*time.Second, "OFF→HQ1 No 2 taken in by the office while the cluster is down", func() bool {
		_, err := os.Stat(filepath.Join(ex, "OFF", "out", "Message_OFF_HQ1.xml"))
		return errors.Is(err, fs.ErrNotExist)
	})
	if arrived("OFF", "HQ1", 2)() {
		t.Fatal("OFF→HQ1 No 2 arrived with the head office down")
	}
	time.Sleep(time.Until(down.Add(30 * time.Second)))
	for i := range 3 {
		if err := c.Start(i); err != nil {
			t.Fatal(err)
		}
	}
	back := time.Now()
	waitFor(t, 90*time.Second, "OFF→HQ1 No 2 at the head office after the cluster returned", arrived("OFF", "HQ1", 2))
	t.Logf("OFF→HQ1 No 2 arrived %s after the cluster returned", time.Since(back).Round(100*time.Millisecond))
	if exited := hqp.exited() || offp.exited(); exited {
		t.Fatal("a relay exited during the outage")
	}

	// Each relay's status: what went to the other relay is handed over,
	// not pending; what came from it was delivered here.
	type row struct {
		pipeline.Channel
		Pending uint64 `json:"pending"`
	}
	// Right after the outage JetStream may still answer "temporarily
	// unavailable": ask until it answers.
	status := func(s *site) map[string]row {
		var rows []row
		waitFor(t, 30*time.Second, "relay status to answer", func() bool {
			return relayJSON(bin, s, &rows, "status") == nil
		})
		out := map[string]row{}
		for _, r := range rows {
			out[r.From+"→"+r.To] = r
		}
		return out
	}
	waitFor(t, 30*time.Second, "the office's status to show OFF→HQ1 handed to hq", func() bool {
		r := status(office)["OFF→HQ1"]
		return r.HandedTo == "hq" && r.HandedNo == 2 && r.Pending == 0
	})
	waitFor(t, 30*time.Second, "the head office's status to show HQ1→OFF handed to office1", func() bool {
		r := status(hq)["HQ1→OFF"]
		return r.HandedTo == "office1" && r.HandedNo == 1 && r.Pending == 0
	})
	if r := status(hq)["OFF→HQ1"]; r.DeliveredNo != 2 || r.Pending != 0 {
		t.Errorf("head office status of OFF→HQ1: delivered %d, pending %d; want 2, 0", r.DeliveredNo, r.Pending)
	}
	if r := status(office)["OFF→OFF2"]; r.DeliveredNo != 1 || r.Pending != 0 {
		t.Errorf("office status of OFF→OFF2: delivered %d, pending %d; want 1, 0", r.DeliveredNo, r.Pending)
	}
}

// TestPayloadReadAfterWrite: two relays start together on a new
// three-server cluster (both create the streams), and a payload is
// readable the moment its put returns, from another connection (another
// relay replica, or an office fetching it). Any replica may answer a direct
// get, and one that has not applied the put yet answers "not found", which
// a fetch would take for a payload that is gone.
func TestPayloadReadAfterWrite(t *testing.T) {
	c := startCluster(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Two replicas start at the same moment on the new cluster, and create
	// the streams and buckets side by side. Their context has no deadline,
	// as relay's has none: each request waits the client's default timeout.
	var bs [2]*bus.Bus
	var errs [2]error
	var wg sync.WaitGroup
	for i := range bs {
		wg.Go(func() {
			bs[i], errs[i] = bus.Open(context.Background(), bus.Settings{NATS: config.NATS{URL: c.ClientURL(), Replicas: 3}, ID: "hq"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		})
	}
	wg.Wait()
	for i, b := range bs {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		t.Cleanup(b.Close)
	}
	w, r := bs[0], bs[1]
	misses := 0
	for i := range 300 {
		size := 2 << 10
		if i%50 == 0 {
			size = 300 << 10 // stored by Put, in three chunks
		}
		data := bytes.Repeat([]byte{byte(i)}, size)
		name := fmt.Sprintf("read-after-write/%d", i)
		n, sum, err := w.PutPayload(ctx, name, int64(size), bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		for _, open := range []func() (io.ReadCloser, error){
			func() (io.ReadCloser, error) { return r.OpenKnownPayload(ctx, name, n, sum) },
			func() (io.ReadCloser, error) { return r.OpenPayload(ctx, name) },
		} {
			rc, err := open()
			if err == nil {
				var got []byte
				got, err = io.ReadAll(rc)
				rc.Close()
				if err == nil && !bytes.Equal(got, data) {
					err = fmt.Errorf("read %d bytes, not the %d written", len(got), len(data))
				}
			}
			if err != nil {
				misses++
				t.Errorf("payload %s right after its put: %v", name, err)
			}
		}
		if misses > 5 {
			t.Fatal("giving up")
		}
	}

	// The buckets: a value read from another connection right after its
	// write is that write (a channel state one revision behind makes a
	// delivery hold for a gap that is not there, or deliver again).
	for _, kv := range [][2]jetstream.KeyValue{{w.Channels, r.Channels}, {w.Taken, r.Taken}, {w.Leases, r.Leases}} {
		stale := 0
		for i := range 300 {
			key := fmt.Sprintf("read-after-write.%d", i%20)
			rev, err := kv[0].Put(ctx, key, []byte(strconv.Itoa(i)))
			if err != nil {
				t.Fatal(err)
			}
			e, err := kv[1].Get(ctx, key)
			switch {
			case err != nil:
				t.Errorf("%s %s right after its put: %v", kv[0].Bucket(), key, err)
				stale++
			case e.Revision() != rev:
				t.Errorf("%s %s right after its put: revision %d, want %d", kv[0].Bucket(), key, e.Revision(), rev)
				stale++
			}
			if stale > 5 {
				t.Fatal("giving up")
			}
		}
	}

	// The records: a delivery reads the channel's records (a lower number
	// queued before its own in sequential mode, the newest in latest mode)
	// right after another replica's ingest stored them.
	subject := bus.Subject("P", "A", "B")
	stale := 0
	for i := range 300 {
		ack, err := w.JS.Publish(ctx, subject, []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		m, err := r.Exchange.GetLastMsgForSubject(ctx, subject)
		switch {
		case err != nil:
			t.Errorf("record %d right after its publish: %v", i, err)
			stale++
		case m.Sequence != ack.Sequence:
			t.Errorf("record %d right after its publish: the last is seq %d, want %d", i, m.Sequence, ack.Sequence)
			stale++
		}
		if stale > 5 {
			t.Fatal("giving up")
		}
	}
}
