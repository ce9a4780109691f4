package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/exchange"
)

// runBaselineThroughput moves the same files the raw way: per channel the
// producer writes the file to out/, reads it back, publishes it inline to a
// JetStream stream (waiting for the ack), deletes it and writes the next; a
// durable pull consumer hands each record to one writer per destination
// node (so a channel stays in order, the same parallelism the relay has),
// which writes it to <to>/in through a temp file and a rename (with fsync of
// file and folder when o.BaselineFsync, as the relay does) and acks it.
// Embedded nats-server, JetStream file storage in a temp dir, in-process
// connections only. With floor, the producer and the writers also do what
// the contract asks for per message (see floorSteps): the side is "floor".
func runBaselineThroughput(ctx context.Context, w *workload, o tpOptions, floor bool) (res tpResult, err error) {
	res = tpResult{Side: "baseline", Messages: w.messages, Bytes: w.bytes}
	if floor {
		res.Side = "floor"
	}
	side := res.Side
	root, err := tempSite(o.Dir, "relay-bench-base-", w.nodes)
	if err != nil {
		return res, err
	}
	defer removeTemp(root)

	ns, err := server.NewServer(&server.Options{
		ServerName: "bench-baseline",
		JetStream:  true,
		StoreDir:   filepath.Join(root, "jetstream"),
		NoSigs:     true,
		NoLog:      true,
		DontListen: true,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return res, err
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(30 * time.Second) {
		return res, errors.New("baseline nats-server did not start")
	}
	pubConn, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("bench-pub"))
	if err != nil {
		return res, err
	}
	defer pubConn.Close()
	subConn, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("bench-sub"))
	if err != nil {
		return res, err
	}
	defer subConn.Close()
	pjs, err := jetstream.New(pubConn)
	if err != nil {
		return res, err
	}
	sjs, err := jetstream.New(subConn)
	if err != nil {
		return res, err
	}
	if _, err := pjs.CreateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage,
	}); err != nil {
		return res, err
	}
	var fl *floorSteps
	if floor {
		if fl, err = newFloor(ctx, pjs, sjs); err != nil {
			return res, err
		}
		defer fl.wait()
	}
	cons, err := sjs.CreateOrUpdateConsumer(ctx, "BENCH", jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return res, err
	}

	s := dirSite(root)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	tr, err := startTracker(wctx, s, w)
	if err != nil {
		return res, err
	}
	defer tr.close()

	// Consumer side: one writer per destination node.
	writeErr := make(chan error, 1)
	queues := map[string]chan jetstream.Msg{}
	var writers sync.WaitGroup
	for _, n := range w.nodes {
		q := make(chan jetstream.Msg, 64)
		queues[n] = q
		dir := filepath.Join(root, n, "in")
		writers.Add(1)
		go func() {
			defer writers.Done()
			for m := range q {
				var err error
				if fl != nil {
					err = fl.deliver(ctx, dir, m, o.BaselineFsync, tr.writing)
				} else {
					err = writeData(dir, m.Subject(), m.Data(), o.BaselineFsync, tr.writing)
				}
				if err != nil {
					sendErr(writeErr, err)
					return
				}
				if err := m.Ack(); err != nil {
					sendErr(writeErr, err)
					return
				}
			}
		}()
	}
	iter, err := cons.Messages()
	if err != nil {
		return res, err
	}
	dispatchDone := make(chan struct{})
	go func() {
		defer close(dispatchDone)
		for {
			m, err := iter.Next()
			if err != nil {
				return // iter.Stop
			}
			// bench.<from>.<to>
			parts := strings.Split(m.Subject(), ".")
			q := queues[parts[len(parts)-1]]
			if q == nil {
				sendErr(writeErr, fmt.Errorf("%s: unexpected subject %s", side, m.Subject()))
				continue
			}
			select {
			case q <- m:
			case <-wctx.Done():
				return
			}
		}
	}()
	defer func() {
		iter.Stop()
		stopWatch()
		<-dispatchDone
		for _, q := range queues {
			close(q)
		}
		writers.Wait()
	}()

	// The producer takes its file itself: read, publish, delete.
	publish := func(ctx context.Context, path string, c *channel) error {
		if fl != nil {
			if err := fl.ingest(ctx, path, c); err != nil {
				return err
			}
			return os.Remove(path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if _, err := pjs.Publish(ctx, "bench."+c.from+"."+c.to, data); err != nil {
			return err
		}
		return os.Remove(path)
	}
	o.logf("%s: %d messages on %d channels", side, w.messages, len(w.channels))
	cpu0 := cpuTime()
	start := time.Now()
	prodErr := producer{s, writeLike1C, publish}.run(wctx, w, &tr.mu)
	// A writer failure ends the run as a producer failure would.
	if err := tr.wait(ctx, o.Timeout, prodErr, writeErr); err != nil {
		return res, fmt.Errorf("%s: %w", side, err)
	}
	res.Elapsed = tr.doneAt.Sub(start)
	res.CPU = cpuTime() - cpu0
	res.Observed = tr.seen()
	res.Lat = w.latencies(&tr.mu)
	// Untimed: every (channel, No) the writers reported is checked against
	// what was sent, none may be missing, and every inbox is read once more.
	written, err := tr.verify()
	if err != nil {
		return res, fmt.Errorf("%s: after the run: %w", side, err)
	}
	res.Delivered = uint64(written)
	o.logf("%s: %.0f msg/s, %d written to in/, %d seen in in/", side, res.msgsPerSec(), res.Delivered, res.Observed)
	o.logf("%s: CPU %s (%.0f%% of one core over the run)", side, res.CPU.Round(time.Millisecond), 100*res.CPU.Seconds()/res.Elapsed.Seconds())
	o.logf("%s: write→taken %s; taken→in/ %s", side, res.Lat.pickup, res.Lat.deliver)
	return res, nil
}

// writeData writes data as the file of the channel of subject
// (bench.<from>.<to>) into dir: temp file, (fsync), rename, (fsync dir).
// placing is told the final path and data just before the rename (the
// tracker's writing).
func writeData(dir, subject string, data []byte, fsync bool, placing func(path string, data []byte)) error {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 {
		return fmt.Errorf("bench: bad subject %s", subject)
	}
	name := exchange.FileName(parts[1], parts[2], exchange.FormatXML)
	tmp, err := os.CreateTemp(dir, ".bench-*.part")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if fsync {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	path := filepath.Join(dir, name)
	placing(path, data)
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if fsync {
		if d, err := os.Open(dir); err == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	return nil
}
