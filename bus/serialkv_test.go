package bus

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The serialized writes keep jetstream's compare-and-set semantics; the
// cluster's lost updates are proved in test/e2e (TestClusterStateCAS).
func TestSerialKV(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, ok := b.Channels.(serialKV); ok {
		t.Fatal("EXCHANGE_CHANNELS of one server serialized (no need, and costly)")
	}
	kv := newSerialKV(b.JS, b.Channels)
	value := func(key string) string {
		t.Helper()
		e, err := kv.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return string(e.Value())
	}

	rev, err := kv.Create(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "k", []byte("x")); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("create of an existing key: %v, want ErrKeyExists", err)
	}
	if _, err := kv.Update(ctx, "k", []byte("x"), rev+100); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("update on a wrong revision: %v, want ErrKeyRevisionMismatch", err)
	}
	rev2, err := kv.Update(ctx, "k", []byte("2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("x"), rev); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("update on an old revision: %v, want ErrKeyRevisionMismatch", err)
	}
	if got := value("k"); got != "2" {
		t.Fatalf("k = %q, want 2", got)
	}

	// A write made on the same revision before this one (on an old server,
	// one the revision check let through) is a duplicate: a mismatch. (The
	// id is the stream's, so another key's write can carry it here.)
	m := &nats.Msg{Subject: "$KV." + BucketChannels + ".other", Data: []byte("other"), Header: nats.Header{}}
	if _, err := b.JS.PublishMsg(ctx, m, jetstream.WithMsgID("k@"+strconv.FormatUint(rev2, 10))); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("x"), rev2); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("update answered as a duplicate: %v, want ErrKeyRevisionMismatch", err)
	}
	if got := value("k"); got != "2" {
		t.Fatalf("k = %q after a duplicate, want 2", got)
	}

	// Deleted, purged, or gone from the stream within the duplicate window:
	// free for a create again.
	if err := kv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "k", []byte("after delete")); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
	if err := kv.Purge(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "k", []byte("after purge")); err != nil {
		t.Fatalf("create after purge: %v", err)
	}
	stream, err := b.JS.Stream(ctx, "KV_"+BucketChannels)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "gone", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+BucketChannels+".gone")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "gone", []byte("2")); err != nil {
		t.Fatalf("create of a key gone within the duplicate window: %v", err)
	}
	if got := value("gone"); got != "2" {
		t.Fatalf("gone = %q, want 2", got)
	}
	if _, err := kv.Create(ctx, "gone", []byte("x")); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("second create: %v, want ErrKeyExists", err)
	}
}

func TestClusterReady(t *testing.T) {
	for _, tc := range []struct {
		version  string
		replicas int
		ok       bool
	}{
		{"2.9.10", 1, true}, // one server: no raft log, no pre-check
		{"2.9.10", 3, false},
		{"2.9.20", 3, false},
		{"2.9.21", 3, true},
		{"2.9.21-RC.1", 3, true},
		{"2.10.0", 3, true},
		{"2.8.4", 2, false},
		{"v2.9.25", 3, true},
		{"2.15.2", 5, true},
		{"1.99.99", 3, false},
		{"3.0.0", 3, true},
		{"", 3, true}, // says nothing: not refused
		{"2.x", 3, true},
		{"2.9.10+deb12u1", 3, false}, // build metadata
		{"2.9.20+build.7", 3, false},
		{"2.10.1+abc", 3, true},
	} {
		err := clusterReady(tc.version, tc.replicas)
		if (err == nil) != tc.ok {
			t.Errorf("clusterReady(%q, %d) = %v, want ok %v", tc.version, tc.replicas, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "2.9.21 or later") {
			t.Errorf("clusterReady(%q): %v does not say what it needs", tc.version, err)
		}
	}
}
