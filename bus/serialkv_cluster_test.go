package bus

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/test/realserver"
)

// TestSerialKVOnDebianCluster counts by compare-and-set on one key of a
// replicated bucket of three Debian nats-server 2.9.10 (the version with
// nats-server#4320, which Open refuses for replicas > 1 but which may still
// be one server of a cluster in a rolling upgrade): three connections, one
// to each server, three writers each. Through jetstream's own writes more
// than half the counts are lost here; serialized, none, or on a loaded
// machine (CI, -race) one now and then.
func TestSerialKVOnDebianCluster(t *testing.T) {
	c := debianCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	plain := countOn(ctx, t, c.ClientURL(), "plain", false)
	serial := countOn(ctx, t, c.ClientURL(), "serial", true)
	t.Logf("counts lost of %d: %d with jetstream's own writes, %d serialized", casWriters*casCounts, plain, serial)
	// Not none: under the race detector and a loaded machine a leader
	// change now and then lets one through (why relay refuses this
	// version); a tenth of the control's at most.
	if serial*10 > plain {
		t.Fatalf("serialized writes lost %d counts, jetstream's own %d", serial, plain)
	}
}

// debianCluster starts three Debian nats-server (2.9.10 here) on 127.0.0.1
// and stops them with the test; skipped under -short, or when the package
// is not installed unless RELAY_E2E_REQUIRE_SERVERS=1 (scripts/test.sh).
func debianCluster(t *testing.T) *realserver.NATSCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("real servers skipped under -short")
	}
	return realserver.DebianNATSClusterT(t)
}

const casWriters, casCounts = 9, 60

// countOn has casWriters writers (spread over one connection per server of
// urls) add casCounts each to a counter in a new R3 bucket, by
// compare-and-set, serialized or not; it returns how many counts are not in.
func countOn(ctx context.Context, t *testing.T, urls, bucket string, serial bool) int {
	t.Helper()
	var kvs []jetstream.KeyValue
	for i, url := range strings.Split(urls, ",") {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		var kv jetstream.KeyValue
		if i == 0 {
			kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, Replicas: 3, History: 1, Storage: jetstream.FileStorage})
		} else {
			kv, err = js.KeyValue(ctx, bucket)
		}
		if err != nil {
			t.Fatal(err)
		}
		if serial {
			kv = newSerialKV(js, kv)
		}
		kvs = append(kvs, kv)
	}
	var wg sync.WaitGroup
	errs := make(chan error, casWriters)
	for w := range casWriters {
		kv := kvs[w%len(kvs)]
		wg.Go(func() {
			for range casCounts {
				if err := increment(ctx, kv); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e, err := kvs[0].Get(ctx, "n")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(string(e.Value()))
	if err != nil {
		t.Fatal(err)
	}
	return casWriters*casCounts - n
}

// increment adds one to key n by compare-and-set, as States.Update does.
func increment(ctx context.Context, kv jetstream.KeyValue) error {
	for attempt := 0; ; attempt++ {
		n, rev := 0, uint64(0)
		e, err := kv.Get(ctx, "n")
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if n, err = strconv.Atoi(string(e.Value())); err != nil {
				return err
			}
			rev = e.Revision()
		}
		v := []byte(strconv.Itoa(n + 1))
		if rev == 0 {
			_, err = kv.Create(ctx, "n", v)
		} else {
			_, err = kv.Update(ctx, "n", v, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) || attempt > 200 {
			return err
		}
		time.Sleep(rand.N(time.Duration(attempt+1) * time.Millisecond))
	}
}
