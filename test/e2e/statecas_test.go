package e2e

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/pipeline"
)

// TestClusterStateCAS has three relays (one connection to each server of
// the cluster, three lanes each) count on one channel at once: every count
// must be in the end, and no Update may give up under the contention. It
// runs relay's own writes (serialKV on a replicated bucket) on the cluster
// servers the tests use; against the nats-server bug it works around
// (#4320), see bus's TestSerialKVOnDebianCluster.
func TestClusterStateCAS(t *testing.T) {
	c := startCluster(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	urls := strings.Split(c.ClientURL(), ",")
	const lanes, counts = 3, 60
	var states []*pipeline.States
	for _, url := range urls {
		b, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: url, Replicas: 3}, ID: "hq"}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		states = append(states, pipeline.NewStates(b.Channels))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(states)*lanes)
	for _, s := range states {
		for range lanes {
			wg.Go(func() {
				for range counts {
					if _, err := s.Update(ctx, "P", "A", "B", func(c *pipeline.Channel) { c.Resolved++ }); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := states[0].Get(ctx, "P", "A", "B")
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(len(states) * lanes * counts); got.Resolved != want {
		t.Fatalf("the channel counted %d of %d updates: %d lost", got.Resolved, want, want-got.Resolved)
	}
}
