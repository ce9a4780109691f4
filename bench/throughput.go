package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/daemon"
	"github.com/relay1c/relay/pipeline"
)

// tpOptions are the knobs of the throughput scenario.
type tpOptions struct {
	Dir           string        // parent of the temp folders ("" = os.TempDir())
	Settle        time.Duration // dir pickup settle
	Poll          time.Duration // dir pickup poll_interval
	Mode          string        // node mode: sequential | latest
	BaselineFsync bool          // the baseline fsyncs file and folder like the relay does
	Timeout       time.Duration
	LogLevel      slog.Level // the in-process relay logs at this level into io.Discard
	CPUProfile    string     // CPU profile of the relay run, if set
	BlockProfile  string     // blocking profile of the relay run (where goroutines wait), if set
	Verbose       io.Writer  // progress lines, or nil
}

// tpResult is one side's run.
type tpResult struct {
	Side     string
	Messages int
	Bytes    int64
	Elapsed  time.Duration
	Observed int // versions the tracker saw in in/ with the right sha256
	Lat      latencies
	CPU      time.Duration // CPU of the whole bench process from first write to last delivery

	// From the relay's channel state (relay side only).
	Delivered, Superseded, Stale, Duplicates, Dead uint64
}

func (r tpResult) msgsPerSec() float64 { return float64(r.Messages) / r.Elapsed.Seconds() }
func (r tpResult) mbPerSec() float64   { return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds() }

func (o tpOptions) logf(format string, args ...any) {
	if o.Verbose != nil {
		fmt.Fprintf(o.Verbose, format+"\n", args...)
	}
}

// routingYAML is the relay's config for the bench site.
func routingYAML(listen string, nodes []string, o tpOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "relay:\n  id: bench\n  data_dir: ./data\n  listen: %s\nnodes:\n", listen)
	for _, n := range nodes {
		fmt.Fprintf(&b, "  %q:\n", n)
		if o.Mode != "" {
			fmt.Fprintf(&b, "    mode: %s\n", o.Mode)
		}
		fmt.Fprintf(&b, "    pickup: { dir: { path: ./%s/out, settle: %s, poll_interval: %s, incomplete_timeout: 10m } }\n", n, o.Settle, o.Poll)
		fmt.Fprintf(&b, "    deliver: { dir: ./%s/in }\n", n)
	}
	return b.String()
}

// produce runs one producer per channel, as a 1C node would: write message
// n+1 (straight to the final name) only once message n has been taken.
// taken blocks until the file at path was taken. mu guards the stamps.
func produce(ctx context.Context, root string, w *workload, mu *sync.Mutex, taken func(ctx context.Context, path string, c *channel, m sent) error) <-chan error {
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for _, c := range w.channels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(root, c.from, "out", c.name())
			for i, m := range c.msgs {
				mu.Lock()
				c.times[i].written = time.Now()
				mu.Unlock()
				if err := writeLike1C(path, m.data); err != nil {
					sendErr(errc, fmt.Errorf("producer %s→%s: %w", c.from, c.to, err))
					return
				}
				if err := taken(ctx, path, c, m); err != nil {
					if ctx.Err() == nil {
						sendErr(errc, fmt.Errorf("producer %s→%s No %d: %w", c.from, c.to, m.no, err))
					}
					return
				}
				mu.Lock()
				c.times[i].taken = time.Now()
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(errc) }()
	return errc
}

func sendErr(c chan<- error, err error) {
	select {
	case c <- err:
	default:
	}
}

// waitRun waits until the tracker saw every final message, a producer
// fails, or the timeout.
func waitRun(ctx context.Context, t *tracker, prodErr <-chan error, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-t.done:
			return nil
		case err, ok := <-prodErr:
			if ok && err != nil {
				return err
			}
			prodErr = nil // all producers finished; deliveries may still be on their way
		case <-deadline.C:
			p := t.problems()
			if len(p) > 5 {
				p = append(p[:5], fmt.Sprintf("... %d more", len(p)-5))
			}
			return fmt.Errorf("timed out after %s: %s", timeout, strings.Join(p, "; "))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// runRelayThroughput runs an in-process relay (daemon.Start, embedded
// JetStream) on a fresh site and times the workload through it.
func runRelayThroughput(ctx context.Context, w *workload, o tpOptions) (res tpResult, err error) {
	res = tpResult{Side: "relay", Messages: w.messages, Bytes: w.bytes}
	root, err := tempDir(o.Dir, "relay-bench-tp-")
	if err != nil {
		return res, err
	}
	defer removeTemp(root)
	if err := makeSite(root, w.nodes); err != nil {
		return res, err
	}
	listen, err := freeAddr()
	if err != nil {
		return res, err
	}
	cfgPath := filepath.Join(root, "routing.yaml")
	if err := os.WriteFile(cfgPath, []byte(routingYAML(listen, w.nodes, o)), 0o644); err != nil {
		return res, err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return res, err
	}

	rctx, stopRelay := context.WithCancel(ctx)
	log := slog.New(slog.NewTextHandler(relayLogOut(), &slog.HandlerOptions{Level: o.LogLevel}))
	r, err := daemon.Start(rctx, cfg, log, daemon.Options{})
	if err != nil {
		stopRelay()
		return res, err
	}
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(rctx) }()
	defer func() {
		stopRelay()
		select {
		case rerr := <-runDone:
			if rerr != nil && err == nil {
				err = fmt.Errorf("relay run: %w", rerr)
			}
		case <-time.After(90 * time.Second):
			if err == nil {
				err = errors.New("relay did not stop within 90s")
			}
		}
	}()
	if err := waitReady(ctx, r, 30*time.Second); err != nil {
		return res, err
	}

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	inW, err := watchDirs(root, w.nodes, "in")
	if err != nil {
		return res, err
	}
	defer inW.Close()
	outW, err := watchDirs(root, w.nodes, "out")
	if err != nil {
		return res, err
	}
	defer outW.Close()
	tr := newTracker(root, w)
	go tr.run(wctx, inW)
	sig := newTakenSignals(root, w)
	go sig.run(wctx, outW)

	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}

	if o.BlockProfile != "" {
		runtime.SetBlockProfileRate(int(10 * time.Microsecond))
		defer func() {
			runtime.SetBlockProfileRate(0)
			if f, ferr := os.Create(o.BlockProfile); ferr == nil {
				_ = pprof.Lookup("block").WriteTo(f, 0)
				f.Close()
			}
		}()
	}

	o.logf("relay: %d messages on %d channels, %d nodes", w.messages, len(w.channels), len(w.nodes))
	cpu0 := cpuTime()
	start := time.Now()
	prodErr := produce(wctx, root, w, &tr.mu, func(ctx context.Context, path string, _ *channel, _ sent) error {
		return sig.waitGone(ctx, path)
	})
	if err := waitRun(ctx, tr, prodErr, o.Timeout); err != nil {
		return res, fmt.Errorf("relay: %w", err)
	}
	res.Elapsed = tr.doneAt.Sub(start)
	res.CPU = cpuTime() - cpu0
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if p := tr.problems(); len(p) > 0 {
		return res, fmt.Errorf("relay: %s", strings.Join(p, "; "))
	}
	tr.mu.Lock()
	res.Observed = tr.observed
	tr.mu.Unlock()
	res.Lat = w.latencies(&tr.mu)

	// Every message must be accounted for by the channel state (the numbers
	// `relay status --json` prints): resolved = sent, the final No
	// delivered, nothing dead.
	if err := checkStates(ctx, r, w, &res); err != nil {
		return res, fmt.Errorf("relay: %w", err)
	}
	o.logf("relay: %.0f msg/s, %d delivered, %d superseded, %d seen in in/", res.msgsPerSec(), res.Delivered, res.Superseded, res.Observed)
	o.logf("relay: CPU %s (%.0f%% of one core over the run)", res.CPU.Round(time.Millisecond), 100*res.CPU.Seconds()/res.Elapsed.Seconds())
	o.logf("relay: write→taken %s; taken→in/ %s", res.Lat.pickup, res.Lat.deliver)
	return res, nil
}

func waitReady(ctx context.Context, r *daemon.Relay, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		ok, why := r.Ready()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay not ready after %s: %s", d, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkStates waits (untimed) until every channel has resolved all its
// messages, then checks the outcome.
func checkStates(ctx context.Context, r *daemon.Relay, w *workload, res *tpResult) error {
	want := map[string]*channel{}
	for _, c := range w.channels {
		want[c.key()] = c
	}
	deadline := time.Now().Add(60 * time.Second)
	var last []string
	for {
		chans, err := r.Channels(ctx)
		if err != nil {
			return err
		}
		byKey := map[string]pipeline.Channel{}
		for _, c := range chans {
			if c.Plan == benchPlan {
				byKey[c.From+"\x00"+c.To] = c
			}
		}
		last = last[:0]
		var sum tpResult
		for k, c := range want {
			st, ok := byKey[k]
			switch {
			case !ok:
				last = append(last, fmt.Sprintf("%s→%s: no channel state", c.from, c.to))
			case st.Resolved < uint64(len(c.msgs)) || st.Queued > st.Resolved:
				last = append(last, fmt.Sprintf("%s→%s: resolved %d of %d", c.from, c.to, st.Resolved, len(c.msgs)))
			case st.DeliveredNo != c.final():
				last = append(last, fmt.Sprintf("%s→%s: delivered No %d, want %d", c.from, c.to, st.DeliveredNo, c.final()))
			}
			sum.Superseded += st.Superseded
			sum.Stale += st.Stale
			sum.Duplicates += st.Duplicates
			sum.Dead += st.Dead
		}
		if len(last) == 0 {
			res.Superseded, res.Stale, res.Duplicates, res.Dead = sum.Superseded, sum.Stale, sum.Duplicates, sum.Dead
			res.Delivered = uint64(w.messages) - sum.Superseded - sum.Stale - sum.Duplicates - sum.Dead
			if sum.Dead > 0 || sum.Stale > 0 || sum.Duplicates > 0 {
				return fmt.Errorf("messages lost: %d dead, %d stale, %d duplicate", sum.Dead, sum.Stale, sum.Duplicates)
			}
			dead, err := r.DeadLetters(ctx)
			if err != nil {
				return err
			}
			if len(dead) > 0 {
				return fmt.Errorf("%d dead letter(s), first: %s: %s", len(dead), dead[0].FileName, dead[0].Reason)
			}
			return nil
		}
		if time.Now().After(deadline) {
			if len(last) > 5 {
				last = append(last[:5], fmt.Sprintf("... %d more", len(last)-5))
			}
			return fmt.Errorf("channel state: %s", strings.Join(last, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// relayLogOut is where the in-process relay logs: $BENCH_RELAY_LOG, or nowhere.
func relayLogOut() io.Writer {
	if p := os.Getenv("BENCH_RELAY_LOG"); p != "" {
		if f, err := os.Create(p); err == nil {
			return f
		}
	}
	return io.Discard
}
