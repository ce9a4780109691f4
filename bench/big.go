package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// bigOptions are the knobs of the one-big-message scenario.
type bigOptions struct {
	Dir      string
	Size     int64  // target file size
	RelayBin string // prebuilt relay binary, "" = go build ./cmd/relay
	Settle   time.Duration
	Poll     time.Duration
	Timeout  time.Duration
	Verbose  io.Writer
}

func (o bigOptions) logf(format string, args ...any) {
	if o.Verbose != nil {
		fmt.Fprintf(o.Verbose, format+"\n", args...)
	}
}

// bigResult is the outcome of the big scenario.
type bigResult struct {
	Size      int64
	Generate  time.Duration // writing the file (untimed for the ratio)
	Cp        time.Duration // cp src dst
	CpFsync   time.Duration // cp, then fsync of the copy
	Ingested  time.Duration // file in out/ → file deleted from out/ (in JetStream)
	Relay     time.Duration // file in out/ → file renamed into in/
	PeakRSS   int64         // VmHWM of the relay process, bytes
	RSSAtStop int64         // VmRSS just before stopping
	RSSIdle   int64         // VmRSS once ready, before the file arrived
	// Sampled VmRSS maxima (every 50ms) while ingesting (file still in
	// out/) and while delivering (after it left out/).
	RSSIngest, RSSDeliver int64
}

// runBig times one big message through the real relay binary, against cp
// of the same file on the same filesystem.
func runBig(ctx context.Context, o bigOptions) (res bigResult, err error) {
	res.Size = o.Size
	root, err := tempDir(o.Dir, "relay-bench-big-")
	if err != nil {
		return res, err
	}
	defer removeTemp(root)

	bin := o.RelayBin
	if bin == "" {
		bin = filepath.Join(root, "relay")
		o.logf("big: go build -o %s ./cmd/relay", bin)
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/relay1c/relay/cmd/relay")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return res, fmt.Errorf("build relay: %w", err)
		}
	}

	const from, to = "A", "B"
	name := exchange.FileName(from, to, exchange.FormatXML)
	if err := makeSite(root, []string{from, to}); err != nil {
		return res, err
	}
	stageDir := filepath.Join(root, "stage")
	if err := os.MkdirAll(stageDir, 0o755); err != nil {
		return res, err
	}
	staged := filepath.Join(stageDir, name)

	// Generate (streaming) and fsync, so no writeback of it runs during the clocks.
	o.logf("big: generating %s", humanBytes(o.Size))
	t := time.Now()
	sentSHA, size, err := generateBig(staged, exchange.Header{ExchangePlan: benchPlan, From: from, To: to, MessageNo: 1}, o.Size)
	if err != nil {
		return res, err
	}
	res.Generate, res.Size = time.Since(t), size

	// cp baseline on the same filesystem (the source is in the page cache, as
	// it is for the relay).
	cpDst := filepath.Join(root, "cp-"+name)
	t = time.Now()
	if out, err := exec.CommandContext(ctx, "cp", staged, cpDst).CombinedOutput(); err != nil {
		return res, fmt.Errorf("cp: %v: %s", err, out)
	}
	res.Cp = time.Since(t)
	if err := fsyncFile(cpDst); err != nil {
		return res, err
	}
	res.CpFsync = time.Since(t)
	if err := os.Remove(cpDst); err != nil {
		return res, err
	}
	o.logf("big: cp %s, cp+fsync %s", res.Cp.Round(time.Millisecond), res.CpFsync.Round(time.Millisecond))

	// The relay.
	listen, err := freeAddr()
	if err != nil {
		return res, err
	}
	cfgPath := filepath.Join(root, "routing.yaml")
	cfg := fmt.Sprintf("relay:\n  id: bench-big\n  data_dir: ./data\n  listen: %s\nnodes:\n", listen)
	for _, n := range []string{from, to} {
		cfg += fmt.Sprintf("  %s:\n    pickup: { dir: { path: ./%s/out, settle: %s, poll_interval: %s, incomplete_timeout: 10m } }\n    deliver: { dir: ./%s/in }\n",
			n, n, o.Settle, o.Poll, n)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return res, err
	}
	logPath := filepath.Join(root, "relay.log")
	child, err := startChild(bin, logPath, "run", "-c", cfgPath)
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := child.stop(); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			err = fmt.Errorf("%w\nrelay log tail:\n%s", err, tail(logPath, 20))
		}
	}()
	if err := child.waitReady(ctx, listen, 30*time.Second); err != nil {
		return res, err
	}

	if _, res.RSSIdle, err = procMem(child.cmd.Process.Pid); err != nil {
		return res, err
	}
	// Sample VmRSS to tell which phase drives the peak.
	var ingested atomic.Bool
	sampleCtx, stopSample := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tk.C:
			}
			_, rss, err := procMem(child.cmd.Process.Pid)
			if err != nil {
				continue
			}
			if ingested.Load() {
				res.RSSDeliver = max(res.RSSDeliver, rss)
			} else {
				res.RSSIngest = max(res.RSSIngest, rss)
			}
		}
	}()
	defer func() { stopSample(); <-sampled }()

	w, err := fsnotify.NewWatcher()
	if err != nil {
		return res, err
	}
	defer w.Close()
	outDir, inDir := filepath.Join(root, from, "out"), filepath.Join(root, to, "in")
	for _, d := range []string{outDir, inDir} {
		if err := w.Add(d); err != nil {
			return res, err
		}
	}
	delivered := filepath.Join(inDir, name)

	o.logf("big: moving the file into %s", outDir)
	t0 := time.Now()
	if err := os.Rename(staged, filepath.Join(outDir, name)); err != nil {
		return res, err
	}
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for res.Relay == 0 {
		select {
		case ev := <-w.Events:
			switch {
			case ev.Name == filepath.Join(outDir, name) && ev.Has(fsnotify.Remove) && res.Ingested == 0:
				res.Ingested = time.Since(t0)
				ingested.Store(true)
				o.logf("big: ingested after %s", res.Ingested.Round(time.Millisecond))
			case ev.Name == delivered && ev.Has(fsnotify.Create):
				res.Relay = time.Since(t0)
			}
		case <-w.Errors:
		case <-poll.C:
			if _, err := os.Stat(delivered); err == nil {
				res.Relay = time.Since(t0) // missed event: at most 1s late
			}
			if child.exited() {
				return res, errors.New("relay exited")
			}
		case <-deadline.C:
			return res, fmt.Errorf("big message not delivered after %s", o.Timeout)
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	o.logf("big: delivered after %s", res.Relay.Round(time.Millisecond))

	// Untimed checks: the channel resolved, nothing dead, same bytes.
	c := api.NewClient(listen, "")
	for {
		chans, err := c.Channels(ctx)
		if err != nil {
			return res, err
		}
		if len(chans) == 1 && chans[0].Resolved == 1 && chans[0].DeliveredNo == 1 {
			break
		}
		if child.exited() {
			return res, errors.New("relay exited")
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-deadline.C:
			return res, errors.New("channel state never showed the message resolved")
		case <-time.After(100 * time.Millisecond):
		}
	}
	if dead, err := c.DeadLetters(ctx); err != nil || len(dead) > 0 {
		return res, fmt.Errorf("dead letters: %v %v", dead, err)
	}
	got, err := sha256File(delivered)
	if err != nil {
		return res, err
	}
	if got != sentSHA {
		return res, fmt.Errorf("delivered file sha256 %s, sent %s", got, sentSHA)
	}
	stopSample()
	<-sampled
	res.PeakRSS, res.RSSAtStop, err = procMem(child.cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	return res, nil
}

func generateBig(path string, h exchange.Header, size int64) (string, int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	sum := sha256.New()
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

// procMem reads VmHWM (peak RSS) and VmRSS of pid, in bytes.
func procMem(pid int) (hwm, rss int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		if k == "VmHWM" {
			hwm = kb << 10
		} else {
			rss = kb << 10
		}
	}
	if hwm == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
	}
	return hwm, rss, sc.Err()
}

// child is the relay process; stop ends it by its PID on every path.
type child struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

func startChild(bin, logPath string, args ...string) (*child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = childAttr() // dies with the bench even on SIGKILL
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start relay: %w", err)
	}
	registerChild(cmd.Process.Pid)
	c := &child{cmd: cmd, log: lf, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 30s, then SIGKILL.
func (c *child) stop() error {
	defer c.log.Close()
	defer unregisterChild(c.cmd.Process.Pid)
	if c.exited() {
		return fmt.Errorf("relay had exited: %v", c.err)
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
		return errors.New("relay did not stop within 30s of SIGTERM; killed")
	}
}

func (c *child) waitReady(ctx context.Context, listen string, d time.Duration) error {
	deadline := time.Now().Add(d)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		if c.exited() {
			return fmt.Errorf("relay exited at start: %v", c.err)
		}
		if resp, err := hc.Get("http://" + listen + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay not ready after %s", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
