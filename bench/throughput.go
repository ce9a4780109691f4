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
	Sync          string        // the embedded server's nats.sync ("" = its default)
	BaselineFsync bool          // the baseline fsyncs file and folder like the relay does
	Floor         bool          // also run the floor (floorSteps) each round
	Timeout       time.Duration
	LogLevel      slog.Level // the in-process relay logs at this level into io.Discard
	CPUProfile    string     // CPU profile of this relay run, if set (runThroughput: of an extra, unreported relay run)
	BlockProfile  string     // blocking profile of this relay run (where goroutines wait), if set; the same
	progress
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

	// Delivered is the number of messages written to in/: for the baseline
	// and the floor the distinct (channel, No) their writers wrote (tracker
	// verify: all of them, or the run failed); for the relay the messages
	// its channel state resolved other than by a drop (sent minus
	// superseded, stale, duplicate and dead). The rest is from the relay's
	// channel state (relay side only).
	Delivered, Superseded, Stale, Duplicates, Dead uint64
}

// msgsPerSec is messages written to in/ per second: in latest mode the
// relay's superseded messages (taken in, never written) do not count.
func (r tpResult) msgsPerSec() float64 { return float64(r.Delivered) / r.Elapsed.Seconds() }

// mbPerSec is MB written to in/ per second, reckoned as the average file
// size times Delivered (the messages differ in size by a few bytes).
func (r tpResult) mbPerSec() float64 {
	return float64(r.Bytes) * float64(r.Delivered) / float64(max(r.Messages, 1)) / 1e6 / r.Elapsed.Seconds()
}

// cpuPerMsg is the bench process's CPU per message over the run.
func (r tpResult) cpuPerMsg() time.Duration {
	return (r.CPU / time.Duration(max(r.Messages, 1))).Round(10 * time.Microsecond)
}

// dirRoutingYAML is the relay's config for a site of makeSite: every node
// picks up from <node>/out and delivers into <node>/in, in mode ("" = the
// default).
func dirRoutingYAML(id, listen string, nodes []string, mode string, settle, poll time.Duration) string {
	var b strings.Builder
	b.WriteString(relayYAML(id, listen))
	for _, n := range nodes {
		fmt.Fprintf(&b, "  %q:\n%s", n, modeYAML(mode))
		fmt.Fprintf(&b, "    pickup: { dir: { path: ./%s/out, settle: %s, poll_interval: %s, incomplete_timeout: 10m } }\n", n, settle, poll)
		fmt.Fprintf(&b, "    deliver: { dir: ./%s/in }\n", n)
	}
	return b.String()
}

// modeYAML is a node's mode line, or nothing for the default mode. A
// sequential node overwrites unread files: the bench's watchers read every
// version as it lands, as a node that takes its files away at once would,
// so waiting for an acknowledgement (which no bench node sends) measures
// nothing but that wait.
func modeYAML(mode string) string {
	switch mode {
	case "":
		return ""
	case "sequential":
		return "    mode: sequential\n    overwrite_unread: true\n"
	}
	return "    mode: " + mode + "\n"
}

// runRelayThroughput runs an in-process relay (daemon.Start, embedded
// JetStream) on a fresh site and times the workload through it.
func runRelayThroughput(ctx context.Context, w *workload, o tpOptions) (res tpResult, err error) {
	res = tpResult{Side: "relay", Messages: w.messages, Bytes: w.bytes}
	root, err := tempSite(o.Dir, "relay-bench-tp-", w.nodes)
	if err != nil {
		return res, err
	}
	defer removeTemp(root)
	listen, err := freeAddr()
	if err != nil {
		return res, err
	}
	cfgPath := filepath.Join(root, "routing.yaml")
	yaml := dirRoutingYAML("bench", listen, w.nodes, o.Mode, o.Settle, o.Poll)
	if o.Sync != "" {
		yaml += "nats:\n  sync: " + o.Sync + "\n"
	}
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
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

	run, err := startSide(ctx, dirSite(root), w)
	if err != nil {
		return res, err
	}
	defer run.stop()
	tr := run.tr
	tr.numbersCheckedElsewhere() // by the channel state: checkStates

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
	if err := tr.wait(ctx, o.Timeout, run.produce(writeLike1C), nil); err != nil {
		return res, fmt.Errorf("relay: %w", err)
	}
	res.Elapsed = tr.doneAt.Sub(start)
	res.CPU = cpuTime() - cpu0
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	res.Observed = tr.seen()
	res.Lat = w.latencies(&tr.mu)

	// Every message must be accounted for by the channel state (the numbers
	// `relay status --json` prints): resolved = sent, the final No
	// delivered, nothing dead; in sequential mode nothing superseded.
	if err := checkStates(ctx, r, w, o.Mode, &res); err != nil {
		return res, fmt.Errorf("relay: %w", err)
	}
	// Then, once all is resolved, every inbox read once more: the final
	// message with the right sha256, nothing gone back.
	if _, err := tr.verify(); err != nil {
		return res, fmt.Errorf("relay: after the run: %w", err)
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
// messages, then checks the outcome: nothing dead, stale or duplicate, and
// in sequential mode (every message written) nothing superseded either.
// res.Delivered is the messages resolved other than by a drop.
func checkStates(ctx context.Context, r *daemon.Relay, w *workload, mode string, res *tpResult) error {
	return awaitStates(ctx, r, time.Now().Add(60*time.Second), func(chans []pipeline.Channel) ([]string, error) {
		states := benchStates(chans)
		var left []string
		var sum tpResult
		for _, c := range w.channels {
			st, ok := states[c.key()]
			switch {
			case !ok:
				left = append(left, fmt.Sprintf("%s→%s: no channel state", c.from, c.to))
			case st.Resolved < uint64(len(c.msgs)) || st.Queued > st.Resolved:
				left = append(left, fmt.Sprintf("%s→%s: resolved %d of %d", c.from, c.to, st.Resolved, len(c.msgs)))
			case st.DeliveredNo != c.final():
				left = append(left, fmt.Sprintf("%s→%s: delivered No %d, want %d", c.from, c.to, st.DeliveredNo, c.final()))
			}
			sum.Superseded += st.Superseded
			sum.Stale += st.Stale
			sum.Duplicates += st.Duplicates
			sum.Dead += st.Dead
		}
		if len(left) > 0 {
			return left, nil
		}
		res.Superseded, res.Stale, res.Duplicates, res.Dead = sum.Superseded, sum.Stale, sum.Duplicates, sum.Dead
		res.Delivered = uint64(w.messages) - sum.Superseded - sum.Stale - sum.Duplicates - sum.Dead
		if sum.Dead > 0 || sum.Stale > 0 || sum.Duplicates > 0 {
			return nil, fmt.Errorf("messages lost: %d dead, %d stale, %d duplicate", sum.Dead, sum.Stale, sum.Duplicates)
		}
		if mode == "sequential" && sum.Superseded > 0 {
			return nil, fmt.Errorf("mode sequential, yet %d messages superseded (not written)", sum.Superseded)
		}
		return nil, nil
	})
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
