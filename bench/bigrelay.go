package main

// One big message through the relay binary, shared by big (dir→dir) and
// ftpbig (FTP→FTP): the two differ only in the routing and in where the
// message is placed and expected.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/pipeline"
)

// bigOptions are the knobs of the one-big-message scenarios (big, ftpbig).
type bigOptions struct {
	Dir      string
	Size     int64  // target file size
	RelayBin string // prebuilt relay binary, "" = go build ./cmd/relay
	Settle   time.Duration
	Poll     time.Duration
	Timeout  time.Duration
	progress
}

// bigMessage is one generated big message: where it waits, how the clock
// starts (its rename into the pickup folder) and where it must appear.
type bigMessage struct {
	staged  string // the fsynced file, outside both endpoints
	out     string // the path in the pickup folder it is renamed to
	outName string // the pickup folder as the progress lines name it
	in      string // the path the relay delivers it to
	sha256  string // of the staged file
}

// bigRelayRun is what runBigRelay measured.
type bigRelayRun struct {
	Ingested time.Duration // rename into the pickup folder → deleted from it (in JetStream)
	Relay    time.Duration // rename into the pickup folder → final name in the delivery folder
	CPU      time.Duration // relay process CPU over Relay
	PeakRSS  int64         // VmHWM of the relay process, bytes
	RSSIdle  int64         // VmRSS once ready, before the file arrived
	// Sampled VmRSS maxima (every 50ms) while ingesting (file still in the
	// pickup folder) and while delivering (after it left).
	RSSIngest, RSSDeliver int64
	RSSAtStop             int64 // VmRSS after the checks, just before stopping
}

// runBigRelay starts the relay binary bin in dir with the routing
// config(listen), then times msg through it: from its rename into the
// pickup folder until it appears in the delivery folder, noting when it
// left the pickup folder, the relay's CPU, and its RSS per phase. Then,
// untimed, the channel must show the message resolved, nothing dead, and
// the delivered file the sent sha256. The relay is stopped by its PID on
// every path.
func runBigRelay(ctx context.Context, bin, dir string, config func(listen string) string, msg bigMessage, timeout time.Duration, log progress) (run bigRelayRun, err error) {
	r, err := startRelay(ctx, bin, dir, config, 30*time.Second)
	if err != nil {
		return run, err
	}
	defer r.finish(&err)
	pid := r.pid()
	if _, run.RSSIdle, err = procMem(pid); err != nil {
		return run, err
	}
	rss := sampleRSS(ctx, pid)
	defer rss.stop()
	w, err := newWatcher(filepath.Dir(msg.out), filepath.Dir(msg.in))
	if err != nil {
		return run, err
	}
	defer w.Close()
	cpu0, err := procCPU(pid)
	if err != nil {
		return run, err
	}

	log.logf("moving the file into %s", msg.outName)
	t0 := time.Now()
	if err := os.Rename(msg.staged, msg.out); err != nil {
		return run, err
	}
	if run.Ingested, run.Relay, err = awaitBig(ctx, w, r.child, msg, t0, timeout, rss, log); err != nil {
		return run, err
	}
	cpu1, err := procCPU(pid)
	if err != nil {
		return run, err
	}
	run.CPU = cpu1 - cpu0
	log.logf("delivered after %s", run.Relay.Round(time.Millisecond))

	// Untimed checks: the channel resolved, nothing dead, same bytes.
	if err := awaitStates(ctx, r.state(), t0.Add(timeout), oneResolved); err != nil {
		return run, err
	}
	if err := checkSHA256(msg.in, msg.sha256, "relay: delivered file"); err != nil {
		return run, err
	}
	run.RSSIngest, run.RSSDeliver = rss.stop()
	run.PeakRSS, run.RSSAtStop, err = procMem(pid)
	return run, err
}

// awaitBig waits until msg.in appears (an fsnotify create on w, or a stat
// every second in case the event was missed), noting when msg.out was
// removed (ingested, which also switches rss to its delivery phase); both
// since t0. It fails when the relay exits, timeout after t0, or when ctx
// ends.
func awaitBig(ctx context.Context, w *fsnotify.Watcher, c *child, msg bigMessage, t0 time.Time, timeout time.Duration, rss *rssSampler, log progress) (ingested, relay time.Duration, err error) {
	deadline := time.NewTimer(time.Until(t0.Add(timeout)))
	defer deadline.Stop()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for relay == 0 {
		select {
		case ev := <-w.Events:
			switch {
			case ev.Name == msg.out && ev.Has(fsnotify.Remove) && ingested == 0:
				ingested = time.Since(t0)
				rss.ingested.Store(true)
				log.logf("ingested after %s", ingested.Round(time.Millisecond))
			case ev.Name == msg.in && ev.Has(fsnotify.Create):
				relay = time.Since(t0)
			}
		case <-w.Errors:
		case <-poll.C:
			if _, err := os.Stat(msg.in); err == nil {
				relay = time.Since(t0) // missed event: at most 1s late
			}
			if c.exited() {
				return ingested, relay, errors.New("relay exited")
			}
		case <-deadline.C:
			return ingested, relay, fmt.Errorf("big message not delivered after %s", timeout)
		case <-ctx.Done():
			return ingested, relay, ctx.Err()
		}
	}
	return ingested, relay, nil
}

// oneResolved is awaitStates' pending for the big scenarios: one channel,
// its one message resolved and delivered.
func oneResolved(chans []pipeline.Channel) ([]string, error) {
	if len(chans) == 1 && chans[0].Resolved == 1 && chans[0].DeliveredNo == 1 {
		return nil, nil
	}
	return []string{"never showed the message resolved"}, nil
}

// rssSampler samples a process's VmRSS every 50ms and keeps the maximum
// before and after ingested is set.
type rssSampler struct {
	ingested        atomic.Bool
	ingest, deliver int64
	cancel          context.CancelFunc
	done            chan struct{}
}

func sampleRSS(ctx context.Context, pid int) *rssSampler {
	s := &rssSampler{done: make(chan struct{})}
	ctx, s.cancel = context.WithCancel(ctx)
	go func() {
		defer close(s.done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			_, rss, err := procMem(pid)
			if err != nil {
				continue
			}
			if s.ingested.Load() {
				s.deliver = max(s.deliver, rss)
			} else {
				s.ingest = max(s.ingest, rss)
			}
		}
	}()
	return s
}

// stop ends the sampling (again is fine) and returns the maxima.
func (s *rssSampler) stop() (ingest, deliver int64) {
	s.cancel()
	<-s.done
	return s.ingest, s.deliver
}

// generateBig writes one message from → to of about size bytes to path,
// streaming, and fsyncs it (so no writeback of it runs during the clocks).
func generateBig(path, from, to string, size int64) (sha string, n int64, err error) {
	f, err := os.Create(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	sum := sha256.New()
	h := exchange.Header{ExchangePlan: benchPlan, From: from, To: to, MessageNo: 1}
	body := max(size-512, 0) // header and closing tags
	if err := exchangetest.WriteXML(io.MultiWriter(f, sum), h, body); err != nil {
		return "", 0, err
	}
	if err := f.Sync(); err != nil {
		return "", 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(sum.Sum(nil)), fi.Size(), f.Close()
}

func fsyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkSHA256 fails unless the file at path has the sha256 want; what names
// the file in the error.
func checkSHA256(path, want, what string) error {
	got, err := sha256File(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s sha256 %s, sent %s", what, got, want)
	}
	return nil
}
