package main

// The ftpbig scenario: one big message FTP→FTP (a/out → b/in of one vsftpd)
// through the relay binary, against curl downloading the same file to local
// disk and uploading it to b/in; with the relay's peak RSS.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
)

// ftpBigOptions are the knobs of the ftpbig scenario.
type ftpBigOptions struct {
	Dir      string
	Size     int64
	RelayBin string
	Settle   time.Duration
	Poll     time.Duration
	Timeout  time.Duration
	Verbose  io.Writer
}

func (o ftpBigOptions) logf(format string, args ...any) {
	if o.Verbose != nil {
		fmt.Fprintf(o.Verbose, format+"\n", args...)
	}
}

// ftpBigResult is the outcome of the ftpbig scenario.
type ftpBigResult struct {
	Size         int64
	CurlDownload time.Duration // curl RETR a/out → local disk
	CurlUpload   time.Duration // curl STOR local → b/in temp name, RNFR/RNTO
	Ingested     time.Duration // file in a/out → deleted from a/out (in JetStream)
	Relay        time.Duration // file in a/out → renamed into b/in
	PeakRSS      int64         // VmHWM of the relay process
	RSSIdle      int64
	RSSIngest    int64 // sampled VmRSS maximum while the file is in a/out
	RSSDeliver   int64 // ... after it left a/out
	RSSAtStop    int64
	CPU          time.Duration // relay process CPU over the run
}

func (r ftpBigResult) curl() time.Duration { return r.CurlDownload + r.CurlUpload }

// runFTPBig generates the message into the server's stage/ folder, times
// curl on it, then the relay.
func runFTPBig(ctx context.Context, o ftpBigOptions) (res ftpBigResult, err error) {
	res.Size = o.Size
	curl, err := curlPath()
	if err != nil {
		return res, err
	}
	root, err := tempDir(o.Dir, "relay-bench-ftpbig-")
	if err != nil {
		return res, err
	}
	defer removeTemp(root)
	bin, err := relayBinary(ctx, o.RelayBin, root, o.logf)
	if err != nil {
		return res, err
	}
	v, closeServer, err := ftpServer(root, o.logf)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := closeServer(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	const from, to = "A", "B"
	name := exchange.FileName(from, to, exchange.FormatXML)
	staged, outPath, inPath := v.Path(ftpStageDir+"/"+name), v.Path(ftpOutDir+"/"+name), v.Path(ftpInDir+"/"+name)

	// Generate (streaming) and fsync, straight into the server's tree, so no
	// writeback of it runs during the clocks.
	o.logf("ftpbig: generating %s into %s", humanBytes(o.Size), staged)
	sentSHA, size, err := generateBig(staged, exchange.Header{ExchangePlan: benchPlan, From: from, To: to, MessageNo: 1}, o.Size)
	if err != nil {
		return res, err
	}
	res.Size = size
	if err := os.Chown(staged, v.UID, v.GID); err != nil {
		return res, err
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	// Baseline: the file appears in a/out; curl downloads it to local disk,
	// then uploads it to b/in under a temp name and renames it.
	if err := os.Rename(staged, outPath); err != nil {
		return res, err
	}
	local := filepath.Join(root, "curl-"+name)
	var dl, ul curlConfig
	dl.download(v, ftpOutDir+"/"+name, local, false)
	ul.upload(v, local, ftpInDir, name)
	t := time.Now()
	if err := runCurl(ctx, curl, filepath.Join(root, "dl.conf"), &dl); err != nil {
		return res, err
	}
	res.CurlDownload = time.Since(t)
	t = time.Now()
	if err := runCurl(ctx, curl, filepath.Join(root, "ul.conf"), &ul); err != nil {
		return res, err
	}
	res.CurlUpload = time.Since(t)
	o.logf("ftpbig: curl download %s, upload %s", res.CurlDownload.Round(time.Millisecond), res.CurlUpload.Round(time.Millisecond))
	// Untimed: check, and put things back for the relay.
	got, err := sha256File(inPath)
	if err != nil {
		return res, err
	}
	if got != sentSHA {
		return res, fmt.Errorf("curl: uploaded file sha256 %s, sent %s", got, sentSHA)
	}
	for _, p := range []string{local, inPath} {
		if err := os.Remove(p); err != nil {
			return res, err
		}
	}
	if err := os.Rename(outPath, staged); err != nil {
		return res, err
	}

	// The relay.
	dir := filepath.Join(root, "relay-run") // root/relay is the built binary
	if err := os.Mkdir(dir, 0o755); err != nil {
		return res, err
	}
	listen, err := freeAddr()
	if err != nil {
		return res, err
	}
	cfgPath := filepath.Join(dir, "routing.yaml")
	cfg := fmt.Sprintf("relay:\n  id: bench-ftpbig\n  data_dir: ./data\n  listen: %s\nnodes:\n", listen) +
		fmt.Sprintf("  %s:\n    pickup: { ftp: { url: %q, password_env: %s, settle: %s, poll_interval: %s, incomplete_timeout: 10m } }\n",
			from, v.URL(ftpOutDir), ftpPasswordEnv, o.Settle, o.Poll) +
		fmt.Sprintf("  %s:\n    deliver: { ftp: { url: %q, password_env: %s } }\n", to, v.URL(ftpInDir), ftpPasswordEnv)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return res, err
	}
	if err := os.Setenv(ftpPasswordEnv, v.Password); err != nil {
		return res, err
	}
	logPath := filepath.Join(dir, "relay.log")
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
	pid := child.cmd.Process.Pid
	if _, res.RSSIdle, err = procMem(pid); err != nil {
		return res, err
	}
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
			_, rss, err := procMem(pid)
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
	for _, d := range []string{filepath.Dir(outPath), filepath.Dir(inPath)} {
		if err := w.Add(d); err != nil {
			return res, err
		}
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		return res, err
	}
	o.logf("ftpbig: relay: moving the file into %s", ftpOutDir)
	t0 := time.Now()
	if err := os.Rename(staged, outPath); err != nil {
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
			case ev.Name == outPath && ev.Has(fsnotify.Remove) && res.Ingested == 0:
				res.Ingested = time.Since(t0)
				ingested.Store(true)
				o.logf("ftpbig: relay: ingested after %s", res.Ingested.Round(time.Millisecond))
			case ev.Name == inPath && ev.Has(fsnotify.Create):
				res.Relay = time.Since(t0)
			}
		case <-w.Errors:
		case <-poll.C:
			if _, err := os.Stat(inPath); err == nil {
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
	cpu1, err := procCPU(pid)
	if err != nil {
		return res, err
	}
	res.CPU = cpu1 - cpu0
	o.logf("ftpbig: relay: delivered after %s", res.Relay.Round(time.Millisecond))

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
	got, err = sha256File(inPath)
	if err != nil {
		return res, err
	}
	if got != sentSHA {
		return res, fmt.Errorf("relay: delivered file sha256 %s, sent %s", got, sentSHA)
	}
	stopSample()
	<-sampled
	res.PeakRSS, res.RSSAtStop, err = procMem(pid)
	return res, err
}
