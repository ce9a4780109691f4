// Command bench measures relay against a raw baseline in the same run:
//
//	go run ./bench -scenario throughput   # 2,000 × 10 KB on 200 channels, dir→dir, vs plain JetStream (-rounds 5: median of 5)
//	go run ./bench -scenario big          # one 1 GiB message through the relay binary, vs cp
//	go run ./bench -scenario ftp          # 500 × 100 KB FTP→FTP (vsftpd) on 20 channels through the relay binary, vs curl
//	go run ./bench -scenario ftpbig       # one 1 GiB message FTP→FTP through the relay binary, vs curl
//	go run ./bench -scenario mail         # 200 × 200 KB by mail (relay A → SMTP → postfix → IMAP → relay B) on 20 channels, vs go-smtp + go-imap
//	go run ./bench -scenario mailbig      # one 200 MiB message by mail in 10 MiB parts, vs go-smtp + go-imap; both relays' peak RSS
//	go run ./bench -scenario push         # 2,000 × 10 KB POSTed to /api/v1/messages of the relay binary, vs a plain net/http server
//	go run ./bench                        # all: throughput, big, ftp, mail and push
//
// See bench/README.md for what each number means.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenario := fs.String("scenario", "all", "throughput | big | ftp | ftpbig | mail | mailbig | push | all (= throughput, big, ftp, mail, push)")
	messages := fs.Int("messages", 2000, "throughput: messages in all")
	rounds := fs.Int("rounds", 1, "throughput: rounds of baseline, floor and relay on fresh sites (the order rotates from round to round), odd; the table shows the round with the median ratio and lists every round's ratio")
	channels := fs.Int("channels", 200, "throughput: channels (plan, from, to); nodes = smallest n with n(n-1) >= channels")
	size := fs.String("size", "10240", "throughput: body size of each message (file is ~0.4 KB more)")
	mode := fs.String("mode", "sequential", "throughput: node mode, sequential (every message written) or latest")
	settle := fs.Duration("settle", 50*time.Millisecond, "pickup settle (dir and ftp pickups), > 0")
	poll := fs.Duration("poll", 100*time.Millisecond, "pickup poll_interval, >= 100ms (dir and ftp pickups)")
	natsSync := fs.String("sync", "", "throughput: the relay's nats.sync (embedded server: how often its store is flushed, or always); empty: the default")
	baseFsync := fs.Bool("baseline-fsync", true, "baseline fsyncs each written file and its folder, as the relay does")
	floor := fs.Bool("floor", true, "throughput: also run the floor each round (the baseline plus only what the contract asks for per message, no relay code)")
	bigSize := fs.String("bigsize", "1GiB", "big, ftpbig: size of the message file")
	relayBin := fs.String("relay-bin", "", "big, ftp, ftpbig, mail, mailbig: relay binary to run (default: go build ./cmd/relay into the temp dir)")
	ftpMessages := fs.Int("ftp-messages", 500, "ftp: messages in all")
	ftpChannels := fs.Int("ftp-channels", 20, "ftp: destination nodes (channels A→Bnnn, all delivering into b/in); each gets messages/channels, written one after the other; < 50 (vsftpd's per-address connection limit, see README)")
	ftpSize := fs.String("ftp-size", "100KiB", "ftp: body size of each message (file is ~0.4 KB more)")
	ftpBaseline := fs.String("ftp-baseline", "batch", "ftp: curl baselines to run, comma-separated: batch (one curl per pass, one login), perfile (one curl per file)")
	mailMessages := fs.Int("mail-messages", 200, "mail: messages in all")
	mailChannels := fs.Int("mail-channels", 20, "mail: destination nodes (channels ЦО→WH01..WHnn, all through one mailbox); each gets messages/channels, written one after the other")
	mailSize := fs.String("mail-size", "200KiB", "mail: body size of each message (file is ~0.4 KB more)")
	mailMaxSize := fs.String("mail-max-size", "10MiB", "mail, mailbig: relay A's max_message_size and postfix's message_size_limit (>= 64KiB)")
	mailBigSize := fs.String("mail-bigsize", "200MiB", "mailbig: size of the message file")
	pushMessages := fs.Int("push-messages", 2000, "push: messages in all")
	pushSize := fs.String("push-size", "10KiB", "push: body size of each message (file is ~0.4 KB more)")
	pushConc := fs.Int("push-concurrency", 8, "push: requests in flight")
	dir := fs.String("dir", "", "parent of the temp folders (default $TMPDIR); must have room for ~3× -bigsize (~4× for ftpbig, ~5× -mail-bigsize for mailbig, whose mail server keeps its Maildirs under $TMPDIR); for ftp/ftpbig every folder above it must be enterable by others (vsftpd's user)")
	timeout := fs.Duration("timeout", 10*time.Minute, "per run")
	logLevel := fs.String("relay-log-level", "info", "throughput: in-process relay log level (logs are formatted, then discarded)")
	cpuProfile := fs.String("cpuprofile", "", "throughput: write a CPU profile of the relay here, from an extra relay run after the rounds (not counted)")
	blockProfile := fs.String("blockprofile", "", "throughput: write a blocking profile of the relay here, from an extra relay run after the rounds (not counted)")
	quiet := fs.Bool("q", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var bodySize, bigBytes, ftpBody, mailBody, mailMax, mailBig, pushBody int64
	for _, f := range []struct {
		name string
		val  string
		n    *int64
	}{{"size", *size, &bodySize}, {"bigsize", *bigSize, &bigBytes}, {"ftp-size", *ftpSize, &ftpBody},
		{"mail-size", *mailSize, &mailBody}, {"mail-max-size", *mailMaxSize, &mailMax}, {"mail-bigsize", *mailBigSize, &mailBig},
		{"push-size", *pushSize, &pushBody}} {
		var err error
		if *f.n, err = parseSize(f.val); err != nil {
			fmt.Fprintf(stderr, "bench: -%s: %v\n", f.name, err)
			return 2
		}
	}
	if *rounds < 1 || (*rounds > 1 && *rounds%2 == 0) {
		// With an even count there is no middle round: either one picked
		// would lean one way (the upper one towards the relay).
		fmt.Fprintf(stderr, "bench: -rounds %d: want an odd number (1, 3, 5, ...), so that one round is the median\n", *rounds)
		return 2
	}
	if *settle <= 0 {
		// 0 in routing.yaml means "unset": the pickup would settle for its
		// default (2s dir, 5s ftp), not for no time at all.
		fmt.Fprintf(stderr, "bench: -settle %s: want more than 0 (0 in routing.yaml means the pickup's default)\n", *settle)
		return 2
	}
	if mailMax < 64<<10 {
		fmt.Fprintf(stderr, "bench: -mail-max-size %s: below 64KiB, the smallest max_message_size relay accepts\n", *mailMaxSize)
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(stderr, "bench: -relay-log-level:", err)
		return 2
	}
	var ftpBaselines []string
	for _, b := range strings.Split(*ftpBaseline, ",") {
		switch b = strings.TrimSpace(b); b {
		case "batch", "perfile":
			ftpBaselines = append(ftpBaselines, b)
		default:
			fmt.Fprintf(stderr, "bench: -ftp-baseline %q: want batch, perfile or both comma-separated\n", b)
			return 2
		}
	}
	doTP, doBig, doFTP, doFTPBig, doMail, doMailBig, doPush := false, false, false, false, false, false, false
	switch *scenario {
	case "throughput":
		doTP = true
	case "big":
		doBig = true
	case "ftp":
		doFTP = true
	case "ftpbig":
		doFTPBig = true
	case "mail":
		doMail = true
	case "mailbig":
		doMailBig = true
	case "push":
		doPush = true
	case "all":
		doTP, doBig, doFTP, doMail, doPush = true, true, true, true, true
	default:
		fmt.Fprintf(stderr, "bench: -scenario %q: want throughput, big, ftp, ftpbig, mail, mailbig, push or all\n", *scenario)
		return 2
	}
	var verbose io.Writer = stderr
	if *quiet {
		verbose = nil
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	finished := make(chan struct{})
	defer close(finished) // before stop: lastResort is to see run end, not a signal
	go lastResort(ctx, finished)

	fmt.Fprintf(stdout, "relay bench: nproc=%d GOMAXPROCS=%d %s %s/%s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	rep := &report{}
	failed := false
	// ok reports a scenario's failure on stderr; it says whether there was none.
	ok := func(scenario string, err error) bool {
		if err != nil {
			fmt.Fprintf(stderr, "bench: %s: %v\n", scenario, err)
			failed = true
		}
		return err == nil
	}
	log := progress{Verbose: verbose}
	if doTP {
		o := tpOptions{Dir: *dir, Settle: *settle, Poll: *poll, Mode: *mode, Sync: *natsSync, BaselineFsync: *baseFsync, Floor: *floor,
			Timeout: *timeout, LogLevel: lvl, CPUProfile: *cpuProfile, BlockProfile: *blockProfile, progress: log}
		if tp, err := runThroughput(ctx, *messages, *channels, bodySize, *rounds, o); ok("throughput", err) {
			rep.tp = &tp
		}
	}
	bo := bigOptions{Dir: *dir, Size: bigBytes, RelayBin: *relayBin, Settle: *settle, Poll: *poll, Timeout: *timeout, progress: log}
	if doBig && ctx.Err() == nil {
		if b, err := runBig(ctx, bo); ok("big", err) {
			rep.big, rep.bigSettle = &b, bo.Settle
		}
	}
	if doFTP && *ftpChannels+1 > 50 {
		fmt.Fprintf(stderr, "bench: warning: -ftp-channels %d: the relay keeps one FTP connection per node (%d here) and vsftpd serves at most 50 per client address; expect 421 refusals and retries\n", *ftpChannels, *ftpChannels+1)
	}
	if doFTP && *scenario == "all" {
		if err := ftpAvailable(); err != nil {
			fmt.Fprintf(stderr, "bench: ftp: skipped in -scenario all: %v\n", err)
			doFTP = false
		}
	}
	if doFTP && ctx.Err() == nil {
		o := ftpOptions{Dir: *dir, Messages: *ftpMessages, Channels: *ftpChannels, Size: ftpBody, Settle: *settle, Poll: *poll,
			RelayBin: *relayBin, Baselines: ftpBaselines, Timeout: *timeout, progress: log}
		if f, err := runFTP(ctx, o); ok("ftp", err) {
			rep.ftp = &f
		}
	}
	if doFTPBig && ctx.Err() == nil {
		if b, err := runFTPBig(ctx, bo); ok("ftpbig", err) {
			rep.ftpBig, rep.ftpBigSettle = &b, bo.Settle
		}
	}
	if doMail && *scenario == "all" {
		if err := mailAvailable(); err != nil {
			fmt.Fprintf(stderr, "bench: mail: skipped in -scenario all: %v\n", err)
			doMail = false
		}
	}
	mo := mailOptions{Dir: *dir, Messages: *mailMessages, Channels: *mailChannels, Size: mailBody, MaxSize: mailMax, BigSize: mailBig,
		Settle: *settle, Poll: *poll, RelayBin: *relayBin, Timeout: *timeout, progress: log}
	if doMail && ctx.Err() == nil {
		if m, err := runMail(ctx, mo); ok("mail", err) {
			rep.mail = &m
		}
	}
	if doMailBig && ctx.Err() == nil {
		if b, err := runMailBig(ctx, mo); ok("mailbig", err) {
			rep.mailBig = &b
		}
	}
	if doPush && ctx.Err() == nil {
		o := pushOptions{Dir: *dir, Bin: *relayBin, Concurrency: *pushConc, Timeout: *timeout, progress: log}
		if p, err := runPush(ctx, *pushMessages, *channels, pushBody, o); ok("push", err) {
			rep.push = &p
		}
	}
	rep.print(stdout)
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

// tpReport is the throughput scenario's outcome: the round with the median
// ratio, and every round's ratio.
type tpReport struct {
	w               *workload
	opts            tpOptions
	relay, baseline tpResult
	floor           *tpResult // nil without -floor
	ratios          []float64 // relay/baseline msg/s of each round, in run order
	floorRatios     []float64 // floor/baseline msg/s of each round
	orders          []string  // each round's order of the sides, in run order
	profiled        bool      // an extra, unreported relay run wrote the profiles
}

func (t tpReport) ratio() float64 { return t.relay.msgsPerSec() / t.baseline.msgsPerSec() }

// sideOrder is the order of the sides in round i (from 0): the list
// baseline, floor, relay (without floor: baseline, relay) rotated by i, so
// that over rounds each side runs first, in the middle and last alike. The
// disk's cost drifts with what the previous runs left behind (on ext4, file
// creation slows after many deletes), which a fixed order would charge to
// one side.
func sideOrder(i int, floor bool) []string {
	sides := []string{"baseline", "floor", "relay"}
	if !floor {
		sides = []string{"baseline", "relay"}
	}
	k := i % len(sides)
	return append(sides[k:len(sides):len(sides)], sides[:k]...)
}

// runThroughput generates the workload once, then runs the baseline, the
// floor and the relay on it, each on a fresh site, rounds times (an odd
// number), rotating their order (sideOrder). This machine's speed drifts
// between runs; a ratio from runs seconds apart, taken as the median of
// several rounds, is what the figure means. With a profile asked for, one
// more relay run after the rounds writes it; that run is not reported.
func runThroughput(ctx context.Context, messages, channels int, bodySize int64, rounds int, o tpOptions) (tpReport, error) {
	if rounds < 1 || (rounds > 1 && rounds%2 == 0) {
		return tpReport{}, fmt.Errorf("-rounds %d: want an odd number, so that one round is the median", rounds)
	}
	w, err := newWorkload(messages, channels, bodySize)
	if err != nil {
		return tpReport{}, err
	}
	type round struct{ relay, baseline, floor tpResult }
	var runs []round
	rep := tpReport{w: w, opts: o}
	prof := o // the extra relay run's options
	o.CPUProfile, o.BlockProfile = "", ""
	for i := range rounds {
		var r round
		order := sideOrder(i, o.Floor)
		for _, side := range order {
			switch side {
			case "baseline":
				r.baseline, err = runBaselineThroughput(ctx, w, o, false)
			case "floor":
				r.floor, err = runBaselineThroughput(ctx, w, o, true)
			case "relay":
				r.relay, err = runRelayThroughput(ctx, w, o)
			}
			if err != nil {
				return rep, err
			}
		}
		runs = append(runs, r)
		rep.orders = append(rep.orders, strings.Join(order, ", "))
		rep.ratios = append(rep.ratios, r.relay.msgsPerSec()/r.baseline.msgsPerSec())
		if o.Floor {
			rep.floorRatios = append(rep.floorRatios, r.floor.msgsPerSec()/r.baseline.msgsPerSec())
			o.logf("round %d of %d (%s): ratio %.2f (floor %.2f)", i+1, rounds, rep.orders[i], rep.ratios[i], rep.floorRatios[i])
		} else {
			o.logf("round %d of %d (%s): ratio %.2f", i+1, rounds, rep.orders[i], rep.ratios[i])
		}
	}
	order := make([]int, len(runs))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return rep.ratios[order[a]] < rep.ratios[order[b]] })
	med := runs[order[len(order)/2]] // rounds is odd: the middle one
	rep.relay, rep.baseline = med.relay, med.baseline
	if o.Floor {
		rep.floor = &med.floor
	}
	if prof.CPUProfile != "" || prof.BlockProfile != "" {
		// Profiling slows the relay (the block profile most): its run is
		// an extra one, not one of the rounds.
		o.logf("profile: an extra relay run, not counted")
		if _, err := runRelayThroughput(ctx, w, prof); err != nil {
			return rep, fmt.Errorf("profiled relay run: %w", err)
		}
		rep.profiled = true
	}
	return rep, nil
}

type report struct {
	tp           *tpReport
	big          *bigResult
	bigSettle    time.Duration
	ftp          *ftpReport
	ftpBig       *ftpBigResult
	ftpBigSettle time.Duration
	mail         *mailReport
	mailBig      *mailBigResult
	push         *pushReport
}

func (r *report) print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	defer tw.Flush()
	if t := r.tp; t != nil {
		fmt.Fprintf(tw, "\nthroughput: %d messages, %s avg, on %d channels / %d nodes; dir pickup settle %s, poll_interval %s; mode %s; baseline fsync %v\n",
			t.w.messages, humanBytes(t.w.bytes/int64(t.w.messages)), len(t.w.channels), len(t.w.nodes), t.opts.Settle, t.opts.Poll, t.opts.Mode, t.opts.BaselineFsync)
		fmt.Fprintln(tw, "METRIC\tRELAY\tBASELINE\tRELAY/BASELINE")
		fmt.Fprintf(tw, "elapsed\t%s\t%s\t%.2f\n", t.relay.Elapsed.Round(time.Millisecond), t.baseline.Elapsed.Round(time.Millisecond), t.relay.Elapsed.Seconds()/t.baseline.Elapsed.Seconds())
		fmt.Fprintf(tw, "messages/s\t%.1f\t%.1f\t%.2f  (target >= 0.50: %s)\n", t.relay.msgsPerSec(), t.baseline.msgsPerSec(), t.ratio(), okIf(t.ratio() >= 0.5))
		if len(t.ratios) > 1 {
			rs := make([]string, len(t.ratios))
			for i, r := range t.ratios {
				rs[i] = fmt.Sprintf("%.2f", r)
			}
			fmt.Fprintf(tw, "  ratio by round\t%s (the median round is shown; order per round: %s)\t\t\n", strings.Join(rs, " "), strings.Join(t.orders, " / "))
		}
		fmt.Fprintf(tw, "MB/s\t%.2f\t%.2f\t%.2f\n", t.relay.mbPerSec(), t.baseline.mbPerSec(), t.relay.mbPerSec()/t.baseline.mbPerSec())
		fmt.Fprintf(tw, "written to in/\t%d (+%d superseded)\t%d\t\n", t.relay.Delivered, t.relay.Superseded, t.baseline.Delivered)
		fmt.Fprintf(tw, "seen+sha256 ok\t%d\t%d\t\n", t.relay.Observed, t.baseline.Observed)
		fmt.Fprintf(tw, "CPU per message\t%s\t%s\t%.2f\n", t.relay.cpuPerMsg(), t.baseline.cpuPerMsg(), t.relay.CPU.Seconds()/t.baseline.CPU.Seconds())
		if f := t.floor; f != nil {
			fmt.Fprintf(tw, "floor messages/s\t%.1f (relay/floor %.2f)\t\t%.2f  (floor/baseline)\n", f.msgsPerSec(), t.relay.msgsPerSec()/f.msgsPerSec(), f.msgsPerSec()/t.baseline.msgsPerSec())
			fmt.Fprintf(tw, "floor CPU per message\t%s\t\t%.2f\n", f.cpuPerMsg(), f.CPU.Seconds()/t.baseline.CPU.Seconds())
			if len(t.floorRatios) > 1 {
				rs := make([]string, len(t.floorRatios))
				for i, r := range t.floorRatios {
					rs[i] = fmt.Sprintf("%.2f", r)
				}
				fmt.Fprintf(tw, "  floor/baseline by round\t%s\t\t\n", strings.Join(rs, " "))
			}
		}
		if t.profiled {
			fmt.Fprintf(tw, "profiles\tof an extra relay run after the rounds, not counted above\t\t\n")
		}
	}
	if b := r.big; b != nil {
		fmt.Fprintf(tw, "\nbig: one %s message, relay binary as a child process, dir pickup settle %s\n", humanBytes(b.Size), r.bigSettle)
		fmt.Fprintln(tw, "METRIC\tRELAY\tREFERENCE\tRATIO")
		fmt.Fprintf(tw, "wall, out/ → in/\t%s\tcp %s\t%.2f× cp\n", b.Relay.Round(time.Millisecond), b.Cp.Round(time.Millisecond), b.Relay.Seconds()/b.Cp.Seconds())
		fmt.Fprintf(tw, "\t\tcp+fsync %s\t%.2f× cp+fsync\n", b.CpFsync.Round(time.Millisecond), b.Relay.Seconds()/b.CpFsync.Seconds())
		fmt.Fprintf(tw, "  of which ingest\t%s\t\t\n", b.Ingested.Round(time.Millisecond))
		fmt.Fprintf(tw, "MB/s\t%.1f\tcp %.1f\t\n", float64(b.Size)/1e6/b.Relay.Seconds(), float64(b.Size)/1e6/b.Cp.Seconds())
		fmt.Fprintf(tw, "peak RSS (VmHWM)\t%s\t\ttarget < 150 MiB: %s\n", humanBytes(b.PeakRSS), okIf(b.PeakRSS < 150<<20))
		fmt.Fprintf(tw, "RSS idle / ingest / deliver / stop\t%s / %s / %s / %s\t\t\n", humanBytes(b.RSSIdle), humanBytes(b.RSSIngest), humanBytes(b.RSSDeliver), humanBytes(b.RSSAtStop))
	}
	if f := r.ftp; f != nil {
		printFTP(tw, f)
	}
	if b := r.ftpBig; b != nil {
		printFTPBig(tw, b, r.ftpBigSettle)
	}
	if m := r.mail; m != nil {
		printMail(tw, m)
	}
	if b := r.mailBig; b != nil {
		printMailBig(tw, b)
	}
	if p := r.push; p != nil {
		fmt.Fprintln(tw)
		p.print(tw)
	}
}

func okIf(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// parseSize reads 10240, 10KiB, 64MiB, 1GiB (K/M/G and KB/MB/GB are binary too).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suf)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suf)]), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size", s)
	}
	return n * mult, nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Cleanup registry: the scenarios stop their children and remove their
// folders with defers; if a signal arrives while a step that does not watch
// the context runs (generating or hashing a big file), lastResort does it.
var cleanup = struct {
	sync.Mutex
	pids  map[int]bool
	dirs  map[string]bool
	stops map[int]func() // servers that need more than one kill (vsftpd and its sessions)
	next  int
}{pids: map[int]bool{}, dirs: map[string]bool{}, stops: map[int]func(){}}

// registerStop makes lastResort call stop; the returned func unregisters it.
func registerStop(stop func()) (unregister func()) {
	cleanup.Lock()
	id := cleanup.next
	cleanup.next++
	cleanup.stops[id] = stop
	cleanup.Unlock()
	return func() {
		cleanup.Lock()
		delete(cleanup.stops, id)
		cleanup.Unlock()
	}
}

func registerChild(pid int) {
	cleanup.Lock()
	cleanup.pids[pid] = true
	cleanup.Unlock()
}

func unregisterChild(pid int) {
	cleanup.Lock()
	delete(cleanup.pids, pid)
	cleanup.Unlock()
}

func tempDir(parent, pattern string) (string, error) {
	d, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", err
	}
	cleanup.Lock()
	cleanup.dirs[d] = true
	cleanup.Unlock()
	return d, nil
}

func removeTemp(d string) {
	if err := os.RemoveAll(d); err != nil {
		fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
	}
	cleanup.Lock()
	delete(cleanup.dirs, d)
	cleanup.Unlock()
}

// lastResort waits after a signal for the defers to finish the job; if they
// have not within 20s (or a second signal comes), it kills the children by
// PID, removes the folders and exits. It returns when run has finished
// (closed finished) before either: run is also called by the smoke tests,
// whose process goes on.
func lastResort(ctx context.Context, finished <-chan struct{}) {
	select {
	case <-finished:
		return
	case <-ctx.Done():
	}
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	select {
	case <-finished:
		return
	default:
	}
	select {
	case <-finished:
		return
	case <-time.After(20 * time.Second):
	case <-again:
	}
	cleanup.Lock()
	for pid := range cleanup.pids {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Signal(syscall.SIGKILL)
		}
	}
	for _, stop := range cleanup.stops {
		stop()
	}
	for d := range cleanup.dirs {
		_ = os.RemoveAll(d)
	}
	cleanup.Unlock()
	fmt.Fprintln(os.Stderr, "bench: interrupted; children killed, temp folders removed")
	os.Exit(130)
}
