package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/test/realserver"
)

// recordingDelivery is a deliver adapter that keeps what it was given.
type recordingDelivery struct {
	mu   sync.Mutex
	got  map[uint64][]byte // by MessageNo
	node string
}

func (r *recordingDelivery) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		d, err := exchange.OpenDelivery(m.Context(), m, "test "+r.node)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(d.Body)
		d.Body.Close()
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.got[d.Header.MessageNo] = b
		r.mu.Unlock()
	}
	return nil
}

func (r *recordingDelivery) Close() error { return nil }

func (r *recordingDelivery) body(no uint64) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.got[no]
	return b, ok
}

// testEndpoints hands out one recording delivery per node and no pickups.
type testEndpoints struct{ delivers map[string]*recordingDelivery }

func (e testEndpoints) Pickup(node string, _ *config.Endpoint, _ *Memory, _ *slog.Logger) (message.Subscriber, error) {
	return nil, fmt.Errorf("no pickup for %s in this test", node)
}

func (e testEndpoints) Deliver(node string, _ *config.Endpoint, _ *slog.Logger) (message.Publisher, error) {
	return e.delivers[node], nil
}

// hubServer is the head office: an embedded server in JetStream domain hq
// with a leaf node port, stopped when the test ends.
func hubServer(t *testing.T) (ns *server.Server, leafURL string) {
	t.Helper()
	ns, leafURL, err := realserver.StartHub(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns, leafURL
}

// twoRelays is the routing.yaml of relay id (hq or office1) where the head
// office serves HQ1 and office1 serves OFF, OFF in mode offMode ("": the
// default).
func twoRelays(t *testing.T, id, offMode string) *config.Config {
	t.Helper()
	mode := ""
	if offMode != "" {
		mode = " mode: " + offMode + ","
	}
	cfg := testConfig(t, `relay: { id: `+id+`, listen: "127.0.0.1:1" }
nodes:
  HQ1: { relay: hq, deliver: { dir: ./hq1 } }
  OFF: { relay: office1,`+mode+` deliver: { dir: ./off } }
`)
	return cfg
}

// officeAndHub is a head office (JetStream domain hq, an embedded hub) and
// the bus of an office relay (domain office1, a leaf of the hub), with the
// office's config: HQ1 served by hq, OFF by office1. Closed when the test
// ends.
func officeAndHub(ctx context.Context, t *testing.T, log *slog.Logger) (*bus.Bus, *bus.Bus, *config.Config) {
	t.Helper()
	hub, leafURL := hubServer(t)
	hb, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hb.Close)

	cfg := twoRelays(t, "office1", "")
	ob, err := bus.Open(ctx, bus.Settings{
		NATS: config.NATS{Leaf: &config.Leaf{URL: leafURL}}, DataDir: t.TempDir(), ID: "office1",
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ob.Close)
	return hb, ob, cfg
}

// The office relay fetches its node's records from the head office's
// domain over a leaf connection. A record without a readable header and a
// record whose payload is gone become dead letters with their reason; the
// fetch goes on and the good record after them arrives byte-identical.
func TestFetchAcrossDomains(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	hb, ob, cfg := officeAndHub(ctx, t, log)

	// At the head office: a record without a header, one whose payload is
	// missing, and a good one, in that order, all for OFF.
	record := func(no uint64, withHeader bool, payload []byte) {
		t.Helper()
		id := "HQ1/OFF/" + strconv.FormatUint(no, 10)
		m := message.NewMessage(id, nil)
		if withHeader {
			exchange.SetHeader(m, exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: no})
		}
		m.Metadata.Set(exchange.MetaFileName, "Message_HQ1_OFF.xml")
		m.Metadata.Set(exchange.MetaObject, id)
		if payload != nil {
			m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(payload)))
			if _, err := hb.Payloads.Put(ctx, jetstream.ObjectMeta{Name: id}, bytes.NewReader(payload)); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := publishRecord(ctx, hb.JS, bus.Subject("P", "HQ1", "OFF"), m); err != nil {
			t.Fatal(err)
		}
	}
	good := bytes.Repeat([]byte("<v8msg/>"), 40000) // several object chunks
	record(1, false, []byte("x"))
	record(2, true, nil)
	record(3, true, good)

	off := &recordingDelivery{got: map[uint64][]byte{}, node: "OFF"}
	p, err := New(cfg, ob, testEndpoints{delivers: map[string]*recordingDelivery{"OFF": off}}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)

	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, ok := off.body(3); ok {
			if !bytes.Equal(b, good) {
				t.Fatalf("fetched payload differs: %d bytes, want %d", len(b), len(good))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the good record was not fetched and delivered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var reasons []string
	for time.Now().Before(deadline) && len(reasons) < 2 {
		dls, err := p.Dead().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		reasons = reasons[:0]
		for _, d := range dls {
			reasons = append(reasons, d.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{"unreadable record from relay hq: exchange: bad message header", "payload HQ1/OFF/2 is gone from relay hq"} {
		if !strings.Contains(all, want) {
			t.Errorf("no dead letter saying %q; dead letters:\n%s", want, all)
		}
	}
	if _, ok := off.body(2); ok {
		t.Error("the record without a payload was delivered")
	}
	// The head office's copies of the fetched payloads are dropped; the
	// unreadable record's payload is kept here with its dead letter.
	for _, obj := range []string{"HQ1/OFF/1", "HQ1/OFF/3"} {
		if _, err := hb.Payloads.GetInfo(ctx, obj); err == nil {
			t.Errorf("payload %s still at the head office after the fetch", obj)
		}
	}
	if _, err := ob.Payloads.GetInfo(ctx, "HQ1/OFF/1"); err != nil {
		t.Errorf("the unreadable record's payload is not kept with its dead letter: %v", err)
	}
}

// A payload damaged at the other relay (a chunk missing under its meta: the
// same damage a delivery turns into a dead letter) makes copyPayload fail
// with a permanent error. fetch.copy returns it, the session naks the
// record and ends, the next session gets the same record first again
// (MaxAckPending 1, stream order): every later message for the node waits
// behind it for good (found by review). It is a dead letter now, as at a
// delivery, and the node's later messages go on.
func TestFetchDamagedPayloadIsDeadLetter(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hb, ob, cfg := officeAndHub(ctx, t, log)

	bad := putRecord(t, hb, exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: 1}, "<one/>", true)
	putRecord(t, hb, exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: 2}, "<two/>", true)

	// Damage No 1's payload at the head office: its only chunk is lost.
	info, err := hb.Payloads.GetInfo(ctx, bad)
	if err != nil {
		t.Fatal(err)
	}
	s, err := hb.JS.Stream(ctx, "OBJ_"+bus.BucketPayloads)
	if err != nil {
		t.Fatal(err)
	}
	chunk, err := s.GetLastMsgForSubject(ctx, "$O."+bus.BucketPayloads+".C."+info.NUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, chunk.Sequence); err != nil {
		t.Fatal(err)
	}

	d := &scriptedDelivery{}
	p, err := New(cfg, ob, scriptedEndpoints{"OFF": d}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)

	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if slices.Contains(d.delivered(), 2) {
			return
		}
	}
	_, derr := p.EndpointErrors("OFF")
	dls, _ := p.Dead().List(ctx)
	t.Fatalf("No 2 (intact) never reached OFF in 30 s: the fetch is stuck on No 1, whose payload is damaged at hq (dead letters here: %d; OFF's delivery error: %q)", len(dls), derr)
}

// Two head office replicas share the fetch of HQ1's messages from office1
// through the lease fetch.office1.HQ1. When the replica that fetches loses
// the lease to the other one (a stall past 2/3 of the TTL, here the other
// replica writing the key), its session ends with its lease context's
// error, and run records that as the fetch's trouble: relay status on this
// replica shows "fetch from relay office1: context canceled" as HQ1's
// delivery error for as long as the other replica fetches — nothing is
// wrong, the link is up and the messages flow (found by review).
func TestFetchLeaseLossIsNoTrouble(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hb, _, _ := officeAndHub(ctx, t, log)

	hp, err := New(twoRelays(t, "hq", ""), hb, scriptedEndpoints{"HQ1": &scriptedDelivery{}}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if hp.leases == nil || len(hp.fetches) == 0 {
		t.Fatal("setup: no leases or no fetch at hq")
	}
	runUntilEnd(t, hp)
	key := "fetch." + bus.Token("office1") + "." + bus.Token("HQ1")
	// Wait until this replica holds the lease and fetches.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if e, err := hb.Leases.Get(ctx, key); err == nil && string(e.Value()) == hp.leases.owner {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("this replica never took the fetch lease")
		}
	}
	time.Sleep(500 * time.Millisecond)
	if _, derr := hp.EndpointErrors("HQ1"); derr != "" {
		t.Fatalf("setup: trouble before the lease moved: %q", derr)
	}
	// The other replica takes the lease and keeps it.
	other := "hq@other-replica/0.0.0.0:8088"
	var derr string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if _, err := hb.Leases.Put(ctx, key, []byte(other)); err != nil {
			t.Fatal(err)
		}
		_, derr = hp.EndpointErrors("HQ1")
	}
	if derr != "" {
		t.Fatalf("standby replica (another replica fetches, link up) shows HQ1's delivery error %q", derr)
	}
}
