package main

// The ftp scenario: -ftp-messages files of -ftp-size moved FTP→FTP from
// a/out to b/in of one vsftpd on 127.0.0.1, by the relay binary and by curl,
// in the same run. See bench/README.md.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/test/realserver"
)

// ftpOptions are the knobs of the ftp scenario.
type ftpOptions struct {
	Dir       string // parent of the temp folders
	Messages  int
	Channels  int   // destination nodes; messages are spread over them
	Size      int64 // body size of each message
	Settle    time.Duration
	Poll      time.Duration
	RelayBin  string
	Baselines []string // "batch", "perfile"
	Timeout   time.Duration
	Verbose   io.Writer
}

func (o ftpOptions) logf(format string, args ...any) {
	if o.Verbose != nil {
		fmt.Fprintf(o.Verbose, format+"\n", args...)
	}
}

// ftpSide is one side's run of the ftp scenario.
type ftpSide struct {
	Name     string
	Elapsed  time.Duration // first write into a/out → last final message in b/in with the right sha256
	Observed int           // versions seen in b/in with the right sha256
	Passes   int           // baseline: list + move rounds
	Procs    int           // baseline: curl processes (each one login)
	CPU      time.Duration // relay: CPU of the relay process over the run
	PeakRSS  int64         // relay: VmHWM
	Taken    dist          // write into a/out → gone from a/out
	Seen     dist          // write into a/out → seen in b/in
}

// ftpReport is the ftp scenario's outcome.
type ftpReport struct {
	w         *workload
	opts      ftpOptions
	relay     ftpSide
	baselines []ftpSide
}

// best is the fastest baseline.
func (r *ftpReport) best() ftpSide {
	b := r.baselines[0]
	for _, s := range r.baselines[1:] {
		if s.Elapsed < b.Elapsed {
			b = s
		}
	}
	return b
}

// ftpWorkload makes the messages: node A sends to channels destination
// nodes (B, or B001..Bnnn), messages spread evenly, each message generated
// in memory before any clock starts.
func ftpWorkload(messages, channels int, bodySize int64) (*workload, error) {
	if channels < 1 || messages < channels {
		return nil, fmt.Errorf("need -ftp-messages (%d) >= -ftp-channels (%d) >= 1", messages, channels)
	}
	w := &workload{messages: messages, nodes: []string{"A"}}
	for i := range channels {
		to := "B"
		if channels > 1 {
			to = fmt.Sprintf("B%03d", i+1)
		}
		w.nodes = append(w.nodes, to)
		w.channels = append(w.channels, &channel{from: "A", to: to})
	}
	per, extra := messages/channels, messages%channels
	var buf bytes.Buffer
	for ci, c := range w.channels {
		count := per
		if ci < extra {
			count++
		}
		for k := 1; k <= count; k++ {
			buf.Reset()
			h := exchange.Header{ExchangePlan: benchPlan, From: c.from, To: c.to, MessageNo: uint64(k), ReceivedNo: uint64(k - 1)}
			if err := exchangetest.WriteXML(&buf, h, bodySize); err != nil {
				return nil, err
			}
			data := bytes.Clone(buf.Bytes())
			sum := sha256.Sum256(data)
			c.msgs = append(c.msgs, sent{no: uint64(k), data: data, sha: hex.EncodeToString(sum[:])})
			w.bytes += int64(len(data))
		}
	}
	return w, nil
}

// runFTP runs the baselines, then the relay, on the same server folders.
func runFTP(ctx context.Context, o ftpOptions) (rep ftpReport, err error) {
	rep.opts = o
	if rep.w, err = ftpWorkload(o.Messages, o.Channels, o.Size); err != nil {
		return rep, err
	}
	curl, err := curlPath()
	if err != nil {
		return rep, err
	}
	root, err := tempDir(o.Dir, "relay-bench-ftp-")
	if err != nil {
		return rep, err
	}
	defer removeTemp(root)
	bin, err := relayBinary(ctx, o.RelayBin, root, o.logf)
	if err != nil {
		return rep, err
	}
	v, closeServer, err := ftpServer(root, o.logf)
	if err != nil {
		return rep, err
	}
	defer func() {
		if cerr := closeServer(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	for _, b := range o.Baselines {
		side, err := runFTPBaseline(ctx, v, curl, root, rep.w, b, o)
		if err != nil {
			return rep, fmt.Errorf("baseline curl %s: %w", b, err)
		}
		rep.baselines = append(rep.baselines, side)
		if err := emptyFolder(v, ftpInDir); err != nil {
			return rep, err
		}
	}
	if rep.relay, err = runFTPRelay(ctx, v, bin, root, rep.w, o); err != nil {
		return rep, fmt.Errorf("relay: %w", err)
	}
	return rep, nil
}

// ftpProducer plays node A: per channel it writes message n+1 into a/out
// only once message n has left it (taken), as a 1C node does. Each file is
// written under a hidden temp name and renamed, so the curl baseline, which
// has no settle, never reads half a file; the relay waits settle anyway.
type ftpProducer struct {
	v     *realserver.Vsftpd
	w     *workload
	mu    *sync.Mutex // guards the stamps
	watch *fsnotify.Watcher
	gone  map[string]chan struct{} // by file name
}

func newFTPProducer(v *realserver.Vsftpd, w *workload, mu *sync.Mutex) (*ftpProducer, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := fw.Add(v.Path(ftpOutDir)); err != nil {
		fw.Close()
		return nil, err
	}
	p := &ftpProducer{v: v, w: w, mu: mu, watch: fw, gone: map[string]chan struct{}{}}
	for _, c := range w.channels {
		p.gone[c.name()] = make(chan struct{}, 1)
	}
	return p, nil
}

func (p *ftpProducer) close() { p.watch.Close() }

// run starts the producers; the channel yields the first error, or closes
// when every message was written and taken.
func (p *ftpProducer) run(ctx context.Context) <-chan error {
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-p.watch.Events:
				if !ok {
					return
				}
				if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
					if ch := p.gone[filepath.Base(ev.Name)]; ch != nil {
						select {
						case ch <- struct{}{}:
						default:
						}
					}
				}
			case _, ok := <-p.watch.Errors:
				if !ok {
					return
				}
			}
		}
	}()
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for _, c := range p.w.channels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			final := p.v.Path(ftpOutDir + "/" + c.name())
			tmp := p.v.Path(ftpOutDir + "/.bench-" + c.name())
			for i, m := range c.msgs {
				p.mu.Lock()
				c.times[i].written = time.Now()
				p.mu.Unlock()
				if err := p.write(tmp, final, m.data); err != nil {
					sendErr(errc, fmt.Errorf("producer %s: %w", c.name(), err))
					return
				}
				if err := p.waitGone(ctx, final, p.gone[c.name()]); err != nil {
					if ctx.Err() == nil {
						sendErr(errc, err)
					}
					return
				}
				p.mu.Lock()
				c.times[i].taken = time.Now()
				p.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(errc) }()
	return errc
}

func (p *ftpProducer) write(tmp, final string, data []byte) error {
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Chown(tmp, p.v.UID, p.v.GID); err != nil {
		return err
	}
	return os.Rename(tmp, final)
}

func (p *ftpProducer) waitGone(ctx context.Context, path string, sig <-chan struct{}) error {
	t := time.NewTimer(250 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		select {
		case <-sig:
		case <-t.C:
			t.Reset(250 * time.Millisecond)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ftpTracker plays the destination nodes: it reads every message file that
// appears in b/in (the rename of an upload), checks its sha256 against what
// was sent for that (channel, MessageNo), and is done when every channel's
// final MessageNo was seen. A version overwritten by the next one before it
// was read is not seen; the relay side checks those through the channel
// state.
type ftpTracker struct {
	dir   string
	chans map[string]*chanTrack // by file name

	mu        sync.Mutex
	remaining int
	observed  int
	corrupt   []string
	doneAt    time.Time
	done      chan struct{}
}

func newFTPTracker(dir string, w *workload) *ftpTracker {
	t := &ftpTracker{dir: dir, chans: map[string]*chanTrack{}, remaining: len(w.channels), done: make(chan struct{})}
	for _, c := range w.channels {
		c.times = make([]stamps, len(c.msgs)) // reset for this side
		t.chans[c.name()] = &chanTrack{ch: c, seen: make([]bool, len(c.msgs)+1)}
	}
	return t
}

func (t *ftpTracker) observe(name string) {
	ct := t.chans[name]
	if ct == nil {
		return // a temp name, or not ours
	}
	data, err := os.ReadFile(filepath.Join(t.dir, name))
	if err != nil {
		return // replaced meanwhile, or not there yet
	}
	at := time.Now()
	h, err := exchange.ReadHeader(bytes.NewReader(data), exchange.DefaultLimits())
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case err != nil:
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: unreadable header: %v", name, err))
		return
	case h.ExchangePlan != benchPlan || h.From != ct.ch.from || h.To != ct.ch.to:
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: holds %s %s→%s", name, h.ExchangePlan, h.From, h.To))
		return
	case h.MessageNo < 1 || h.MessageNo > ct.ch.final():
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: MessageNo %d was never sent", name, h.MessageNo))
		return
	case ct.seen[h.MessageNo]:
		return
	}
	ct.ch.times[h.MessageNo-1].seen = at
	sum := sha256.Sum256(data)
	if got, want := hex.EncodeToString(sum[:]), ct.ch.msgs[h.MessageNo-1].sha; got != want {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: No %d has sha256 %s, sent %s", name, h.MessageNo, got, want))
		return
	}
	ct.seen[h.MessageNo] = true
	t.observed++
	if h.MessageNo == ct.ch.final() && !ct.complete {
		ct.complete = true
		t.remaining--
		if t.remaining == 0 {
			t.doneAt = at
			close(t.done)
		}
	}
}

// run watches b/in until ctx ends, with a slow rescan of the channels not
// yet complete in case fsnotify drops an event.
func (t *ftpTracker) run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	if err := fw.Add(t.dir); err != nil {
		fw.Close()
		return err
	}
	go func() {
		defer fw.Close()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-fw.Events:
				if !ok {
					return
				}
				if ev.Has(fsnotify.Create) {
					t.observe(filepath.Base(ev.Name))
				}
			case <-fw.Errors:
			case <-tick.C:
				t.mu.Lock()
				var names []string
				for n, ct := range t.chans {
					if !ct.complete {
						names = append(names, n)
					}
				}
				t.mu.Unlock()
				for _, n := range names {
					t.observe(n)
				}
			}
		}
	}()
	return nil
}

func (t *ftpTracker) problems() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.corrupt...)
	for n, ct := range t.chans {
		if !ct.complete {
			out = append(out, fmt.Sprintf("%s: final No %d never seen in %s", n, ct.ch.final(), ftpInDir))
		}
	}
	sort.Strings(out)
	return out
}

// wait blocks until the tracker is done, a producer or mover fails, or the timeout.
func (t *ftpTracker) wait(ctx context.Context, prodErr, moverErr <-chan error, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-t.done:
			if p := t.problems(); len(p) > 0 {
				return errors.New(strings.Join(p, "; "))
			}
			return nil
		case err, ok := <-prodErr:
			if ok && err != nil {
				return err
			}
			prodErr = nil
		case err, ok := <-moverErr:
			if ok && err != nil {
				return err
			}
			moverErr = nil
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

// runFTPBaseline moves the workload with curl, no relay: passes of "list
// a/out (NLST), then move every listed Message_* file" until the tracker has
// seen every final message in b/in. A move is a download to local disk
// followed by DELE of the source, then an upload to b/in under a temp name
// and RNFR/RNTO to the final name.
//
//	batch:   one curl process per pass does all its files in order over one
//	         reused connection (one login per pass);
//	perfile: one curl process per file (one login per file).
func runFTPBaseline(ctx context.Context, v *realserver.Vsftpd, curl, root string, w *workload, kind string, o ftpOptions) (side ftpSide, err error) {
	side.Name = "curl " + kind
	local, err := os.MkdirTemp(root, "curl-")
	if err != nil {
		return side, err
	}
	defer os.RemoveAll(local)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	tr := newFTPTracker(v.Path(ftpInDir), w)
	prod, err := newFTPProducer(v, w, &tr.mu)
	if err != nil {
		return side, err
	}
	defer prod.close()
	if err := tr.run(wctx); err != nil {
		return side, err
	}

	o.logf("%s: %d messages on %d channels", side.Name, w.messages, len(w.channels))
	moverErr := make(chan error, 1)
	moverDone := make(chan struct{})
	start := time.Now()
	prodErr := prod.run(wctx)
	go func() {
		defer close(moverDone)
		conf := filepath.Join(local, "curl.conf")
		for wctx.Err() == nil {
			select {
			case <-tr.done:
				return
			default:
			}
			names, err := curlList(wctx, curl, v, ftpOutDir)
			if err != nil {
				sendErr(moverErr, err)
				return
			}
			side.Procs++
			var msgs []string
			for _, n := range names {
				if isMessageName(n) {
					msgs = append(msgs, n)
				}
			}
			if len(msgs) == 0 {
				continue
			}
			side.Passes++
			var cc curlConfig
			for _, n := range msgs {
				if kind == "perfile" {
					cc = curlConfig{}
				}
				cc.download(v, ftpOutDir+"/"+n, filepath.Join(local, n), true)
				cc.upload(v, filepath.Join(local, n), ftpInDir, n)
				if kind == "perfile" {
					side.Procs++
					if err := runCurl(wctx, curl, conf, &cc); err != nil {
						sendErr(moverErr, err)
						return
					}
				}
			}
			if kind != "perfile" {
				side.Procs++
				if err := runCurl(wctx, curl, conf, &cc); err != nil {
					sendErr(moverErr, err)
					return
				}
			}
		}
	}()
	werr := tr.wait(ctx, prodErr, moverErr, o.Timeout)
	stop()
	<-moverDone
	if werr != nil {
		return side, werr
	}
	side.Elapsed = tr.doneAt.Sub(start)
	tr.mu.Lock()
	side.Observed = tr.observed
	tr.mu.Unlock()
	side.Taken, side.Seen = ftpLatencies(w, &tr.mu)
	o.logf("%s: %s, %d passes, %d curl processes", side.Name, side.Elapsed.Round(time.Millisecond), side.Passes, side.Procs)
	return side, nil
}

// ftpRoutingYAML is the relay's config: node A picks up from a/out, every
// destination node delivers into b/in, sequential so that every message is
// written.
func ftpRoutingYAML(listen string, v *realserver.Vsftpd, w *workload, o ftpOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "relay:\n  id: bench-ftp\n  data_dir: ./data\n  listen: %s\nnodes:\n", listen)
	fmt.Fprintf(&b, "  %q:\n    pickup: { ftp: { url: %q, password_env: %s, settle: %s, poll_interval: %s } }\n",
		w.channels[0].from, v.URL(ftpOutDir), ftpPasswordEnv, o.Settle, o.Poll)
	for _, c := range w.channels {
		fmt.Fprintf(&b, "  %q:\n    mode: sequential\n    deliver: { ftp: { url: %q, password_env: %s } }\n", c.to, v.URL(ftpInDir), ftpPasswordEnv)
	}
	return b.String()
}

// runFTPRelay starts the relay binary on the server's folders and times
// the workload through it.
func runFTPRelay(ctx context.Context, v *realserver.Vsftpd, bin, root string, w *workload, o ftpOptions) (side ftpSide, err error) {
	side.Name = "relay"
	dir, err := os.MkdirTemp(root, "relay-")
	if err != nil {
		return side, err
	}
	defer os.RemoveAll(dir)
	listen, err := freeAddr()
	if err != nil {
		return side, err
	}
	cfgPath := filepath.Join(dir, "routing.yaml")
	if err := os.WriteFile(cfgPath, []byte(ftpRoutingYAML(listen, v, w, o)), 0o644); err != nil {
		return side, err
	}
	if err := os.Setenv(ftpPasswordEnv, v.Password); err != nil {
		return side, err
	}
	logPath := filepath.Join(dir, "relay.log")
	child, err := startChild(bin, logPath, "run", "-c", cfgPath)
	if err != nil {
		return side, err
	}
	defer func() {
		if serr := child.stop(); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			err = fmt.Errorf("%w\nrelay log tail:\n%s", err, tail(logPath, 20))
		}
	}()
	if err := child.waitReady(ctx, listen, 60*time.Second); err != nil {
		return side, err
	}
	pid := child.cmd.Process.Pid

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	tr := newFTPTracker(v.Path(ftpInDir), w)
	prod, err := newFTPProducer(v, w, &tr.mu)
	if err != nil {
		return side, err
	}
	defer prod.close()
	if err := tr.run(wctx); err != nil {
		return side, err
	}
	exited := make(chan error, 1)
	go func() {
		select {
		case <-child.done:
			exited <- fmt.Errorf("relay exited: %v", child.err)
		case <-wctx.Done():
		}
	}()

	o.logf("relay: %d messages on %d channels", w.messages, len(w.channels))
	cpu0, err := procCPU(pid)
	if err != nil {
		return side, err
	}
	start := time.Now()
	prodErr := prod.run(wctx)
	if err := tr.wait(ctx, prodErr, exited, o.Timeout); err != nil {
		return side, err
	}
	side.Elapsed = tr.doneAt.Sub(start)
	cpu1, err := procCPU(pid)
	if err != nil {
		return side, err
	}
	side.CPU = cpu1 - cpu0
	tr.mu.Lock()
	side.Observed = tr.observed
	tr.mu.Unlock()
	side.Taken, side.Seen = ftpLatencies(w, &tr.mu)

	// Untimed: every message accounted for by the channel state, nothing dead.
	if err := checkFTPStates(ctx, api.NewClient(listen, ""), w); err != nil {
		return side, err
	}
	if side.PeakRSS, _, err = procMem(pid); err != nil {
		return side, err
	}
	o.logf("relay: %s, CPU %s, peak RSS %s; write→gone from a/out %s; write→in b/in %s", side.Elapsed.Round(time.Millisecond),
		side.CPU.Round(time.Millisecond), humanBytes(side.PeakRSS), side.Taken, side.Seen)
	return side, nil
}

// checkFTPStates waits until every channel resolved all its messages with
// the final one delivered, and no message is dead or dropped.
func checkFTPStates(ctx context.Context, c *api.Client, w *workload) error {
	want := map[string]*channel{}
	for _, ch := range w.channels {
		want[ch.key()] = ch
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		chans, err := c.Channels(ctx)
		if err != nil {
			return err
		}
		var last []string
		got := 0
		for _, st := range chans {
			ch := want[st.From+"\x00"+st.To]
			if st.Plan != benchPlan || ch == nil {
				continue
			}
			got++
			switch {
			case st.Dead > 0 || st.Stale > 0 || st.Duplicates > 0 || st.Superseded > 0:
				return fmt.Errorf("%s: %d dead, %d stale, %d duplicate, %d superseded", ch.name(), st.Dead, st.Stale, st.Duplicates, st.Superseded)
			case st.Resolved < uint64(len(ch.msgs)) || st.DeliveredNo != ch.final():
				last = append(last, fmt.Sprintf("%s→%s: resolved %d of %d, delivered No %d", ch.from, ch.to, st.Resolved, len(ch.msgs), st.DeliveredNo))
			}
		}
		if got < len(want) {
			last = append(last, fmt.Sprintf("%d of %d channels have no state", len(want)-got, len(want)))
		}
		if len(last) == 0 {
			dead, err := c.DeadLetters(ctx)
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

// ftpLatencies sums up the stamps of the last run, both from the write into
// a/out: until the file was gone from a/out, and until it was seen in b/in.
// The relay may deliver before it deletes the source (the delete follows the
// JetStream ack, the delivery may be quicker), so the two are not a sequence.
func ftpLatencies(w *workload, mu *sync.Mutex) (taken, seen dist) {
	mu.Lock()
	defer mu.Unlock()
	var t, s []time.Duration
	for _, c := range w.channels {
		for _, st := range c.times {
			if st.written.IsZero() {
				continue
			}
			if !st.taken.IsZero() {
				t = append(t, st.taken.Sub(st.written))
			}
			if !st.seen.IsZero() {
				s = append(s, st.seen.Sub(st.written))
			}
		}
	}
	return distOf(t), distOf(s)
}
