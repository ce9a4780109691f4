package main

// The push scenario: a load generator POSTs every message of a workload to
// the relay binary's /api/v1/messages over loopback, several requests at a
// time, and times each 202 (which the relay sends only once JetStream holds
// the message). The baseline in the same run is the same load against a
// plain net/http server that writes each body to a file and answers 202:
// the cost of HTTP and the disk alone.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relay1c/relay/pipeline"
)

// pushOptions are the knobs of the push scenario.
type pushOptions struct {
	Dir         string // parent of the temp folders
	Bin         string // relay binary ("" = build it)
	Concurrency int    // requests in flight
	Timeout     time.Duration
	progress
}

// pushResult is one side's run.
type pushResult struct {
	Side     string
	Messages int
	Bytes    int64
	Elapsed  time.Duration
	Lat      dist  // time to the 202
	PeakRSS  int64 // relay side only
}

func (r pushResult) msgsPerSec() float64 { return float64(r.Messages) / r.Elapsed.Seconds() }
func (r pushResult) mbPerSec() float64   { return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds() }

// pushReport is the scenario's outcome.
type pushReport struct {
	relay, baseline pushResult
	concurrency     int
}

func (p pushReport) ratio() float64 { return p.relay.msgsPerSec() / p.baseline.msgsPerSec() }

func (p pushReport) print(out io.Writer) {
	fmt.Fprintf(out, "push: %d messages of ~%s, %d requests in flight, over loopback\n", p.relay.Messages, humanBytes(p.relay.Bytes/int64(max(1, p.relay.Messages))), p.concurrency)
	for _, r := range []pushResult{p.baseline, p.relay} {
		fmt.Fprintf(out, "  %-8s %7.0f msg/s %7.1f MB/s  202 after %s", r.Side, r.msgsPerSec(), r.mbPerSec(), r.Lat)
		if r.PeakRSS > 0 {
			fmt.Fprintf(out, "  peak RSS %s", humanBytes(r.PeakRSS))
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintf(out, "  relay / baseline: %.2f\n", p.ratio())
}

// runPush measures both sides on the same workload.
func runPush(ctx context.Context, messages, channels int, bodySize int64, o pushOptions) (pushReport, error) {
	rep := pushReport{concurrency: o.Concurrency}
	w, err := newWorkload(messages, channels, bodySize)
	if err != nil {
		return rep, err
	}
	bodies := pushBodies(w)
	o.logf("push: baseline (net/http writing files)")
	if rep.baseline, err = pushBaseline(ctx, bodies, o); err != nil {
		return rep, fmt.Errorf("baseline: %w", err)
	}
	o.logf("push: relay")
	if rep.relay, err = pushRelay(ctx, w, bodies, o); err != nil {
		return rep, fmt.Errorf("relay: %w", err)
	}
	return rep, nil
}

// pushBodies orders the messages so each channel's numbers rise: round
// robin over the channels, message k of every channel before k+1.
func pushBodies(w *workload) [][]byte {
	var out [][]byte
	for k := 0; ; k++ {
		added := false
		for _, c := range w.channels {
			if k < len(c.msgs) {
				out = append(out, c.msgs[k].data)
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

// load POSTs every body to url with o.Concurrency workers and returns the
// wall time and each request's time to its 202. Workers take bodies in
// order, so a channel's messages are sent in rising order (two may be in
// flight at once; the relay accepts either order).
func load(ctx context.Context, url string, bodies [][]byte, o pushOptions) (time.Duration, []time.Duration, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: o.Concurrency, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: o.Timeout}
	lat := make([]time.Duration, len(bodies))
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range o.Concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) || ctx.Err() != nil {
					return
				}
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(bodies[i]))
				if err == nil {
					req.Header.Set("Content-Type", "application/xml")
					t0 := time.Now()
					var resp *http.Response
					if resp, err = hc.Do(req); err == nil {
						msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
						resp.Body.Close()
						lat[i] = time.Since(t0)
						if resp.StatusCode != http.StatusAccepted {
							err = fmt.Errorf("message %d: %s: %s", i, resp.Status, strings.TrimSpace(string(msg)))
						}
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), lat, firstErr
}

func pushBaseline(ctx context.Context, bodies [][]byte, o pushOptions) (pushResult, error) {
	res := pushResult{Side: "baseline", Messages: len(bodies)}
	for _, b := range bodies {
		res.Bytes += int64(len(b))
	}
	dir, err := tempDir(o.Dir, "relay-bench-push-base-")
	if err != nil {
		return res, err
	}
	defer removeTemp(dir)
	var n atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("m%06d.xml", n.Add(1))))
		if err == nil {
			_, err = io.Copy(f, r.Body)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"id":"x"}`)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	go srv.Serve(ln)
	defer srv.Close()
	elapsed, lat, err := load(ctx, "http://"+ln.Addr().String()+"/api/v1/messages", bodies, o)
	res.Elapsed, res.Lat = elapsed, distOf(lat)
	return res, err
}

func pushRelay(ctx context.Context, w *workload, bodies [][]byte, o pushOptions) (res pushResult, err error) {
	res = pushResult{Side: "relay", Messages: len(bodies)}
	for _, b := range bodies {
		res.Bytes += int64(len(b))
	}
	root, err := tempSite(o.Dir, "relay-bench-push-", w.nodes)
	if err != nil {
		return res, err
	}
	defer removeTemp(root)
	bin, err := relayBinary(ctx, o.Bin, root, o.logf)
	if err != nil {
		return res, err
	}
	r, err := startRelay(ctx, bin, root, func(listen string) string {
		var b strings.Builder
		b.WriteString(relayYAML("bench", listen))
		for _, n := range w.nodes {
			fmt.Fprintf(&b, "  %q:\n    deliver: { dir: ./%s/in }\n", n, n)
		}
		return b.String()
	}, 30*time.Second)
	if err != nil {
		return res, err
	}
	registerChild(r.pid())
	defer func() { r.finish(&err); unregisterChild(r.pid()) }()
	elapsed, lat, err := load(ctx, "http://"+r.listen+"/api/v1/messages", bodies, o)
	res.Elapsed, res.Lat = elapsed, distOf(lat)
	if err != nil {
		return res, err
	}
	// Every message accepted must be accounted for: picked up on its
	// channel, and every channel's deliveries done (nothing queued is
	// unresolved, the final number written to in/). Not every message is
	// queued: pushed 4 at a time, a number can arrive after a higher one
	// was delivered, and is dropped at pickup (latest).
	err = awaitStates(ctx, r.state(), time.Now().Add(60*time.Second), func(chans []pipeline.Channel) ([]string, error) {
		states := benchStates(chans)
		var pending []string
		for _, c := range w.channels {
			st, ok := states[c.key()]
			if !ok || st.PickedNo != c.final() || st.Queued > st.Resolved || st.DeliveredNo != c.final() {
				pending = append(pending, fmt.Sprintf("%s→%s (picked No %d, delivered No %d, queued %d, resolved %d of %d)",
					c.from, c.to, st.PickedNo, st.DeliveredNo, st.Queued, st.Resolved, len(c.msgs)))
			}
		}
		return pending, nil
	})
	if err != nil {
		return res, err
	}
	// The peak once the deliveries are done too: the relay's whole run.
	if hwm, _, merr := procMem(r.pid()); merr == nil {
		res.PeakRSS = hwm
	}
	return res, nil
}
