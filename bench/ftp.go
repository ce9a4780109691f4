package main

// The ftp scenario: -ftp-messages files of -ftp-size moved FTP→FTP from
// a/out to b/in of one vsftpd on 127.0.0.1, by the relay binary and by curl,
// in the same run. See bench/README.md.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/relay1c/relay/pipeline"
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
	progress
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
	return w, w.generate(bodySize)
}

// runFTP runs the baselines, then the relay, on the same server folders.
func runFTP(ctx context.Context, o ftpOptions) (rep ftpReport, err error) {
	rep.opts = o
	if rep.w, err = ftpWorkload(o.Messages, o.Channels, o.Size); err != nil {
		return rep, err
	}
	fb, err := startFTPBench(ctx, o.Dir, "relay-bench-ftp-", o.RelayBin, o.logf)
	if err != nil {
		return rep, err
	}
	defer fb.close(&err)

	for _, b := range o.Baselines {
		side, err := runFTPBaseline(ctx, fb, rep.w, b, o)
		if err != nil {
			return rep, fmt.Errorf("baseline curl %s: %w", b, err)
		}
		rep.baselines = append(rep.baselines, side)
		if err := emptyFolder(fb.v, ftpInDir); err != nil {
			return rep, err
		}
	}
	if rep.relay, err = runFTPRelay(ctx, fb, rep.w, o); err != nil {
		return rep, fmt.Errorf("relay: %w", err)
	}
	return rep, nil
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
func runFTPBaseline(ctx context.Context, fb *ftpBench, w *workload, kind string, o ftpOptions) (side ftpSide, err error) {
	side.Name = "curl " + kind
	local, err := os.MkdirTemp(fb.root, "curl-")
	if err != nil {
		return side, err
	}
	defer os.RemoveAll(local)
	run, err := startSide(ctx, ftpSite(fb.v), w)
	if err != nil {
		return side, err
	}
	defer run.stop()
	tr := run.tr
	// curl's transfers are not reported number by number (one curl process
	// moves a whole pass): only the versions the tracker reads are checked.
	tr.numbersCheckedElsewhere()

	o.logf("%s: %d messages on %d channels", side.Name, w.messages, len(w.channels))
	moverErr := make(chan error, 1)
	moverDone := make(chan struct{})
	start := time.Now()
	prodErr := run.produce(ftpWrite(fb.v))
	go func() {
		defer close(moverDone)
		if err := moveWithCurl(run.ctx, fb, local, kind, tr.done, &side); err != nil {
			sendErr(moverErr, err)
		}
	}()
	werr := tr.wait(ctx, o.Timeout, prodErr, moverErr)
	run.cancel()
	<-moverDone
	if werr != nil {
		return side, werr
	}
	side.Elapsed = tr.doneAt.Sub(start)
	side.Observed = tr.seen()
	side.Taken, side.Seen = ftpLatencies(w, &tr.mu)
	o.logf("%s: %s, %d passes, %d curl processes", side.Name, side.Elapsed.Round(time.Millisecond), side.Passes, side.Procs)
	return side, nil
}

// moveWithCurl is the baseline's mover: passes of list and move (through
// local) until done is closed or ctx ends, counting them and the curl
// processes into side.
func moveWithCurl(ctx context.Context, fb *ftpBench, local, kind string, done <-chan struct{}, side *ftpSide) error {
	conf := filepath.Join(local, "curl.conf")
	for ctx.Err() == nil {
		select {
		case <-done:
			return nil
		default:
		}
		names, err := curlList(ctx, fb.curl, fb.v, ftpOutDir)
		if err != nil {
			return err
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
			cc.download(fb.v, ftpOutDir+"/"+n, filepath.Join(local, n), true)
			cc.upload(fb.v, filepath.Join(local, n), ftpInDir, n)
			if kind == "perfile" {
				side.Procs++
				if err := runCurl(ctx, fb.curl, conf, &cc); err != nil {
					return err
				}
			}
		}
		if kind != "perfile" {
			side.Procs++
			if err := runCurl(ctx, fb.curl, conf, &cc); err != nil {
				return err
			}
		}
	}
	return nil
}

// runFTPRelay starts the relay binary on the server's folders (node A picks
// up from a/out, every destination node delivers into b/in, sequential so
// that every message is written) and times the workload through it.
func runFTPRelay(ctx context.Context, fb *ftpBench, w *workload, o ftpOptions) (side ftpSide, err error) {
	side.Name = "relay"
	dir, err := os.MkdirTemp(fb.root, "relay-")
	if err != nil {
		return side, err
	}
	defer os.RemoveAll(dir)
	var to []string
	for _, c := range w.channels {
		to = append(to, c.to)
	}
	config := func(listen string) string {
		return ftpRoutingYAML("bench-ftp", listen, fb.v, w.channels[0].from, to, "sequential", o.Settle, o.Poll)
	}
	r, err := startRelay(ctx, fb.bin, dir, config, 60*time.Second)
	if err != nil {
		return side, err
	}
	defer r.finish(&err)
	pid := r.pid()

	run, err := startSide(ctx, ftpSite(fb.v), w)
	if err != nil {
		return side, err
	}
	defer run.stop()
	tr := run.tr
	tr.numbersCheckedElsewhere() // by the channel state: checkFTPStates

	o.logf("relay: %d messages on %d channels", w.messages, len(w.channels))
	cpu0, err := procCPU(pid)
	if err != nil {
		return side, err
	}
	start := time.Now()
	if err := tr.wait(ctx, o.Timeout, run.produce(ftpWrite(fb.v)), r.exitErr(run.ctx)); err != nil {
		return side, err
	}
	side.Elapsed = tr.doneAt.Sub(start)
	cpu1, err := procCPU(pid)
	if err != nil {
		return side, err
	}
	side.CPU = cpu1 - cpu0
	side.Observed = tr.seen()
	side.Taken, side.Seen = ftpLatencies(w, &tr.mu)

	// Untimed: every message accounted for by the channel state, nothing dead.
	if err := checkFTPStates(ctx, r.state(), w); err != nil {
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
func checkFTPStates(ctx context.Context, r relayState, w *workload) error {
	return awaitStates(ctx, r, time.Now().Add(60*time.Second), func(chans []pipeline.Channel) ([]string, error) {
		states := benchStates(chans)
		var left []string
		missing := 0
		for _, ch := range w.channels {
			st, ok := states[ch.key()]
			switch {
			case !ok:
				missing++
			case st.Dead > 0 || st.Stale > 0 || st.Duplicates > 0 || st.Superseded > 0:
				return nil, fmt.Errorf("%s: %d dead, %d stale, %d duplicate, %d superseded", ch.name(), st.Dead, st.Stale, st.Duplicates, st.Superseded)
			case st.Resolved < uint64(len(ch.msgs)) || st.DeliveredNo != ch.final():
				left = append(left, fmt.Sprintf("%s→%s: resolved %d of %d, delivered No %d", ch.from, ch.to, st.Resolved, len(ch.msgs), st.DeliveredNo))
			}
		}
		if missing > 0 {
			left = append(left, fmt.Sprintf("%d of %d channels have no state", missing, len(w.channels)))
		}
		return left, nil
	})
}

// ftpLatencies sums up the stamps of the last run, both from the write into
// a/out: until the file was gone from a/out, and until it was seen in b/in.
// The relay may deliver before it deletes the source (the delete follows the
// JetStream ack, the delivery may be quicker), so the two are not a sequence.
func ftpLatencies(w *workload, mu *sync.Mutex) (taken, seen dist) {
	return w.span(mu, stampWritten, stampTaken), w.span(mu, stampWritten, stampSeen)
}
