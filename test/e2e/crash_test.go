package e2e

// Crash tests: the real binary is SIGKILLed at random instants while 1C-like
// writers feed every channel (DESIGN.md §6.1: nothing lost, nothing
// half-written ever visible, numbers never go backwards), and a relay started
// on a backlog takes everything that waited for it.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/pipeline"
	"github.com/relay1c/relay/test/realserver"
)

// moduleRoot finds the directory holding go.mod above the test's folder.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// relayProc is `relay run` as a child process that can be killed and restarted.
type relayProc struct {
	t       testing.TB
	bin     string
	site    *site
	logPath string
	// env is added to the environment of the relay (NAME=value).
	env []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    <-chan struct{}
	starts  int
	started time.Time // when the current process was started
}

func newRelayProc(t testing.TB, bin string, s *site) *relayProc {
	rp := &relayProc{t: t, bin: bin, site: s, logPath: filepath.Join(s.root, "relay.log")}
	// Registered before any start: on every exit path (t.Fatal included) the
	// child is killed by PID and waited for; on failure its log tail is shown.
	t.Cleanup(func() {
		rp.kill()
		if t.Failed() {
			t.Logf("relay log (tail of %s):\n%s", rp.logPath, tailFile(rp.logPath, 80))
		}
	})
	return rp
}

// start runs a new `relay run -c routing.yaml`; its output is appended to the log.
func (rp *relayProc) start() {
	rp.t.Helper()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.cmd != nil {
		rp.t.Fatal("relay already running")
	}
	logf, err := os.OpenFile(rp.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		rp.t.Fatal(err)
	}
	rp.starts++
	fmt.Fprintf(logf, "===== test: start #%d at %s\n", rp.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(rp.bin, "run", "-c", rp.site.cfg, "--log-level", "info")
	cmd.Dir = rp.site.root
	cmd.Env = append(os.Environ(), rp.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test process: a test that times out (go test panics,
	// no cleanup runs) left its relays running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	rp.started = time.Now()
	done, err := realserver.StartDaemon(cmd, logf)
	if err != nil {
		rp.t.Fatalf("start relay: %v", err)
	}
	rp.cmd, rp.done = cmd, done
}

// kill SIGKILLs the running child (if any) by PID and waits for it to exit.
func (rp *relayProc) kill() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.cmd == nil {
		return
	}
	_ = rp.cmd.Process.Kill() // SIGKILL on Unix
	select {
	case <-rp.done:
	case <-time.After(30 * time.Second):
		rp.t.Errorf("relay pid %d did not exit after SIGKILL", rp.cmd.Process.Pid)
	}
	if logf, err := os.OpenFile(rp.logPath, os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(logf, "===== test: SIGKILL pid %d at %s\n", rp.cmd.Process.Pid, time.Now().Format(time.RFC3339Nano))
		logf.Close()
	}
	rp.cmd, rp.done = nil, nil
}

// exited reports whether the current child died on its own.
func (rp *relayProc) exited() bool {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.cmd == nil {
		return false
	}
	select {
	case <-rp.done:
		return true
	default:
		return false
	}
}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// crashChannel is one (from, to) pair with what its writer wrote.
type crashChannel struct {
	from, to string

	last uint64 // the writer's last MessageNo (read once it is done)

	mu   sync.Mutex
	sums map[uint64]string // MessageNo -> sha256 of the bytes written for it

	// written and taken are the last MessageNo whose file the writer
	// finished and the last one the relay took from the outbox: the killer
	// reads them to aim its kills (TestCrashSIGKILL).
	written, taken atomic.Uint64
	// done is set when the writer stopped.
	done atomic.Bool
}

func (c *crashChannel) name() string { return exchange.FileName(c.from, c.to, exchange.FormatXML) }

func (c *crashChannel) sum(no uint64) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sums[no]
	return s, ok
}

// writeLike1C writes data straight to its final name in a few pieces with
// pauses between them, so a half-written file sits in the folder for a while.
// Some pauses are longer than the pickup's settle time: then only the XML
// completeness check stands between the relay and a partial file. The last
// piece always carries the closing tag, so the document is never complete
// before the file is.
func writeLike1C(path string, data []byte, rng *rand.Rand) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	pieces := 2 + rng.IntN(4)
	limit := len(data) - 64
	cuts := []int{0}
	for i := 1; i < pieces; i++ {
		cuts = append(cuts, 1+rng.IntN(limit-1))
	}
	cuts = append(cuts, len(data))
	sortInts(cuts)
	for i := 0; i+1 < len(cuts); i++ {
		if _, err := f.Write(data[cuts[i]:cuts[i+1]]); err != nil {
			f.Close()
			return err
		}
		if i+2 < len(cuts) {
			pause := time.Duration(5+rng.IntN(60)) * time.Millisecond
			if rng.IntN(6) == 0 {
				pause = time.Duration(250+rng.IntN(200)) * time.Millisecond // > settle (200ms)
			}
			time.Sleep(pause)
		}
	}
	return f.Close()
}

func sortInts(a []int) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// inboxChecker scans every in/ folder continuously and records each time a
// final-name file is not a complete message, is not what the writer wrote
// for its number, or holds a lower MessageNo than seen before.
type inboxChecker struct {
	s     *site
	chans map[string]*crashChannel // by file name

	mu         sync.Mutex
	violations []string
	last       map[string]uint64 // path -> highest MessageNo seen
	scans      int
}

func (c *inboxChecker) violate(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.violations) < 50 {
		c.violations = append(c.violations, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
}

func (c *inboxChecker) run(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c.scan()
		select {
		case <-ctx.Done():
			c.scan()
			return
		case <-tick.C:
		}
	}
}

func (c *inboxChecker) scan() {
	for _, node := range c.s.nodes {
		dir := c.s.in(node)
		entries, err := os.ReadDir(dir)
		if err != nil {
			c.violate("list %s: %v", dir, err)
			continue
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "Message_") {
				continue
			}
			c.check(filepath.Join(dir, e.Name()), node)
		}
	}
	c.mu.Lock()
	c.scans++
	c.mu.Unlock()
}

func (c *inboxChecker) check(path, node string) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		c.violate("%s vanished from the inbox", path)
		return
	}
	if err != nil {
		c.violate("open %s: %v", path, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.violate("stat %s: %v", path, err)
		return
	}
	info, err := exchange.Inspect(f, fi.Size(), exchange.DefaultLimits(), "")
	if err != nil {
		c.violate("PARTIAL/INVALID file under a final name: %s (%d bytes): %v", path, fi.Size(), err)
		return
	}
	h := info.Header
	ch := c.chans[filepath.Base(path)]
	if ch == nil || h.To != node || h.From != ch.from || h.To != ch.to {
		c.violate("unexpected file %s in the inbox of %s: header %s→%s No %d", path, node, h.From, h.To, h.MessageNo)
		return
	}
	if want, ok := ch.sum(h.MessageNo); !ok {
		c.violate("%s holds No %d, which the writer never wrote", path, h.MessageNo)
	} else if want != info.SHA256 {
		c.violate("%s holds No %d with sha256 %s, the writer wrote %s", path, h.MessageNo, info.SHA256, want)
	}
	c.mu.Lock()
	prev := c.last[path]
	if h.MessageNo > prev {
		c.last[path] = h.MessageNo
	}
	c.mu.Unlock()
	if h.MessageNo < prev {
		c.violate("BACKWARDS: %s went from No %d to No %d", path, prev, h.MessageNo)
	}
}

// relayJSON runs `relay <args> --json -c routing.yaml` with the binary and
// decodes its output into v.
func relayJSON(bin string, s *site, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--json", "-c", s.cfg)...)
	cmd.Dir = s.root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("relay %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), v); err != nil {
		return fmt.Errorf("relay %s --json: %v:\n%s", strings.Join(args, " "), err, stdout.String())
	}
	return nil
}

type statusRow struct {
	Plan        string `json:"plan"`
	From        string `json:"from"`
	To          string `json:"to"`
	PickedNo    uint64 `json:"picked_no"`
	DeliveredNo uint64 `json:"delivered_no"`
	Superseded  uint64 `json:"superseded"`
	Dead        uint64 `json:"dead"`
	LastError   string `json:"last_error"`
}

func TestCrashSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("SIGKILL crash test skipped under -short")
	}
	sideBySide(t)
	const (
		perChannel = 12 // messages per channel at least
		kills      = 12 // aimed in turn at pickup, commit, delivery, delivery
	)
	began := time.Now()
	bin := buildRelay(t)
	t.Logf("built relay in %s", time.Since(began).Round(time.Millisecond))

	// ОП receives in sequential mode: there every message must arrive, in
	// order, so a message lost before it was queued would hold its channel
	// for good, and one lost at delivery is seen by its writer (it waits
	// for each in the inbox). ОП's 1C acknowledges what its inbox shows,
	// in each message it writes: relay writes a sender's next number into
	// ОП's folder only once the one there is acknowledged.
	s := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "ОП", mode: "sequential"}, nodeSpec{code: "SHOP1"})
	var chans []*crashChannel
	byName := map[string]*crashChannel{}
	for _, from := range s.nodes {
		for _, to := range s.nodes {
			if from != to {
				ch := &crashChannel{from: from, to: to, sums: map[uint64]string{}}
				chans = append(chans, ch)
				byName[ch.name()] = ch
			}
		}
	}

	rp := newRelayProc(t, bin, s)
	rp.start()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	checker := &inboxChecker{s: s, chans: byName, last: map[string]uint64{}}
	checkerDone := make(chan struct{})
	go func() { defer close(checkerDone); checker.run(ctx) }()
	defer func() { cancel(); <-checkerDone }()

	var killsDone atomic.Bool
	// Writers: one per channel, like 1C: message n+1 only after n was taken.
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var wg sync.WaitGroup
	writerErr := make(chan error, len(chans))
	for i, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ch.done.Store(true)
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			path := filepath.Join(s.out(ch.from), ch.name())
			// What ОП's message acknowledges: the number its inbox shows of
			// the reverse channel, which waits for it (others: the number
			// before, as before).
			reverse := byName[exchange.FileName(ch.to, ch.from, exchange.FormatXML)]
			received := func(n uint64) uint64 {
				if ch.from == "ОП" {
					return readNo(filepath.Join(s.in("ОП"), reverse.name()))
				}
				return n - 1
			}
			// At least perChannel messages, and on until the killer is
			// done: its kills must find something to land in; ОП's on
			// until the reverse channel's writer is done, whose last
			// number waits for ОП's acknowledgement of the one before.
			for n := uint64(1); n <= perChannel || !killsDone.Load() || ch.from == "ОП" && !reverse.done.Load(); n++ {
				ch.last = n
				var buf bytes.Buffer
				size := int64(512 + rng.IntN(48<<10))
				if ch.to == "ОП" {
					// Larger: a delivery that takes a while to write is
					// where the delivery kills must land.
					size = int64(64<<10 + rng.IntN(512<<10))
				}
				if err := exchangetest.WriteXML(&buf, header(ch.from, ch.to, n, received(n)), size); err != nil {
					writerErr <- err
					return
				}
				sum := sha256.Sum256(buf.Bytes())
				ch.mu.Lock()
				ch.sums[n] = hex.EncodeToString(sum[:])
				ch.mu.Unlock()
				if err := writeLike1C(path, buf.Bytes(), rng); err != nil {
					writerErr <- fmt.Errorf("%s No %d: %w", ch.name(), n, err)
					return
				}
				ch.written.Store(n)
				deadline := time.Now().Add(45 * time.Second)
				for {
					if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
						ch.taken.Store(n)
						break
					}
					if ctx.Err() != nil {
						return
					}
					if time.Now().After(deadline) {
						writerErr <- fmt.Errorf("%s No %d: not taken from %s within 45s", ch.name(), n, s.out(ch.from))
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				if ch.to != "ОП" {
					continue
				}
				// ОП's 1C needs every number: its senders write the next
				// one only once this one is in its inbox. A message the
				// relay recorded as delivered without writing it (a kill
				// between the record and the file) is then missed here,
				// where a later number would otherwise overwrite the
				// evidence.
				//
				// A message in flight when the relay is killed is offered
				// again only after AckWait, and on this sequential channel
				// the next one waits behind it and may be in flight at the
				// next kill: two AckWaits in a row are the relay working
				// as designed (CI saw No 6 come back after 30 s, then No 7
				// not by the 45 s this waited before).
				inbox := filepath.Join(s.in(ch.to), ch.name())
				deadline = deadline.Add(2 * pipeline.DefaultAckWait)
				for readNo(inbox) < n {
					if ctx.Err() != nil {
						return
					}
					if time.Now().After(deadline) {
						writerErr <- fmt.Errorf("%s No %d: taken, but the inbox holds No %d after %s: the message was lost", ch.name(), n, readNo(inbox), 45*time.Second+2*pipeline.DefaultAckWait)
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	defer func() { cancel(); <-writersDone }()

	// The killer: SIGKILL after a random pause, restart at once, same data
	// dir. Each kill is aimed, in turn, at a pickup (a complete file in an
	// outbox, not yet taken), at a commit (the moment a complete file
	// leaves a sequential channel's outbox: a relay that deleted it before
	// the message was stored would lose it there, and the channel would
	// wait for the gap for good) and at a delivery (a message taken from
	// its outbox that its destination does not hold yet). A kill that finds
	// none of its kind within 5 s lands where it is.
	krng := rand.New(rand.NewPCG(seed, 1<<32))
	outbox := func(ch *crashChannel) string { return filepath.Join(s.out(ch.from), ch.name()) }
	inPickup := func() bool {
		for _, ch := range chans {
			if ch.written.Load() > ch.taken.Load() {
				return true
			}
		}
		return false
	}
	complete := map[*crashChannel]bool{} // at the last look: a complete file waits in the outbox
	atCommit := func() bool {
		hit := false
		for _, ch := range chans {
			if ch.to != "ОП" {
				continue
			}
			_, err := os.Stat(outbox(ch))
			gone := errors.Is(err, fs.ErrNotExist)
			if gone && complete[ch] {
				hit = true
			}
			complete[ch] = !gone && ch.written.Load() > ch.taken.Load()
		}
		return hit
	}
	// A delivery to ОП, whose senders wait for each message (see the
	// writers): there a message lost at delivery is seen.
	inDelivery := func() bool {
		for _, ch := range chans {
			if taken := ch.taken.Load(); ch.to == "ОП" && taken > 0 && readNo(filepath.Join(s.in(ch.to), ch.name())) < taken {
				return true
			}
		}
		return false
	}
	aims := []struct {
		name string
		now  func() bool
	}{{"pickup", inPickup}, {"commit", atCommit}, {"delivery", inDelivery}, {"delivery", inDelivery}}
	landed := map[string]int{}
	var lastStart time.Time
	for k := 1; k <= kills; k++ {
		time.Sleep(time.Duration(300+krng.IntN(1200)) * time.Millisecond)
		if rp.exited() {
			t.Fatalf("relay exited on its own before kill #%d", k)
		}
		aim := aims[(k-1)%len(aims)]
		clear(complete)
		where := "no " + aim.name + " seen within 5s"
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if aim.now() {
				where = "mid-" + aim.name
				landed[aim.name]++
				// A few ms in: inside the step rather than at its start.
				time.Sleep(time.Duration(krng.IntN(8)) * time.Millisecond)
				break
			}
		}
		rp.kill()
		t.Logf("kill #%d at %s: %s", k, time.Since(began).Round(time.Millisecond), where)
		rp.start()
		lastStart = rp.started
	}
	killsDone.Store(true)
	t.Logf("%d kills done after %s: %v", kills, time.Since(began).Round(time.Millisecond), landed)
	for _, aim := range aims {
		if landed[aim.name] == 0 {
			t.Errorf("no kill landed mid-%s (%v): the test proved little", aim.name, landed)
		}
	}

	awaitWriters(t, writersDone, writerErr, 60*time.Second+2*pipeline.DefaultAckWait)
	t.Logf("writers done after %s", time.Since(began).Round(time.Millisecond))

	// Drain: every channel's destination holds N, byte-identical.
	drained := func() bool {
		for _, ch := range chans {
			want, _ := ch.sum(ch.last)
			p := filepath.Join(s.in(ch.to), ch.name())
			if readNo(p) != ch.last {
				return false
			}
			if got := sha(t, p); got != want {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(60 * time.Second)
	for !drained() {
		if rp.exited() {
			t.Fatal("relay exited on its own while draining")
		}
		if time.Now().After(deadline) {
			for _, ch := range chans {
				p := filepath.Join(s.in(ch.to), ch.name())
				t.Errorf("%s: destination holds No %d, want %d", ch.name(), readNo(p), ch.last)
			}
			t.FailNow()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("drained after %s", time.Since(began).Round(time.Millisecond))

	// The checker saw every version: never partial, never foreign, never backwards.
	cancel()
	<-checkerDone
	checker.report(t)

	for _, ch := range chans {
		want, _ := ch.sum(ch.last)
		if got := sha(t, filepath.Join(s.in(ch.to), ch.name())); got != want {
			t.Errorf("%s: final content sha256 %s, writer wrote %s", ch.name(), got, want)
		}
	}
	for _, node := range s.nodes {
		entries, err := os.ReadDir(s.out(node))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			t.Errorf("source left in %s: %s", s.out(node), e.Name())
		}
		entries, err = os.ReadDir(s.in(node))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			name := e.Name()
			switch {
			case strings.HasPrefix(name, "Message_"):
			case strings.HasPrefix(name, ".relay-") && strings.HasSuffix(name, ".part"):
				fi, err := e.Info()
				if err != nil {
					continue
				}
				if !fi.ModTime().Before(lastStart) {
					t.Errorf("partial file %s in %s written by the last (live) relay is left behind (mtime %s, last start %s)",
						name, s.in(node), fi.ModTime().Format(time.RFC3339Nano), lastStart.Format(time.RFC3339Nano))
				} else {
					t.Logf("leftover of a killed delivery (not under a final name): %s/%s, %d bytes", node, name, fi.Size())
				}
			default:
				t.Errorf("unexpected file in %s: %s", s.in(node), name)
			}
		}
	}

	// The operator's view agrees, once the last deliveries are recorded
	// (the file lands first, then the state).
	var rows []statusRow
	got := map[string]statusRow{}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := relayJSON(bin, s, &rows, "status")
		if err == nil {
			clear(got)
			for _, r := range rows {
				got[r.From+"→"+r.To] = r
			}
			if !slices.ContainsFunc(chans, func(ch *crashChannel) bool { return got[ch.from+"→"+ch.to].DeliveredNo != ch.last }) {
				break
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	for _, ch := range chans {
		r, ok := got[ch.from+"→"+ch.to]
		switch {
		case !ok:
			t.Errorf("relay status has no channel %s → %s: %+v", ch.from, ch.to, rows)
		case r.DeliveredNo != ch.last:
			t.Errorf("relay status %s → %s: delivered_no %d, want %d (%+v)", ch.from, ch.to, r.DeliveredNo, ch.last, r)
		case r.Plan != "Магазины":
			t.Errorf("relay status %s → %s: plan %q", ch.from, ch.to, r.Plan)
		case r.Dead != 0:
			t.Errorf("relay status %s → %s: %d dead letter(s): %+v", ch.from, ch.to, r.Dead, r)
		case ch.to == "ОП" && r.Superseded != 0:
			t.Errorf("relay status %s → %s: sequential channel has %d superseded messages", ch.from, ch.to, r.Superseded)
		}
	}
	noDeadLetters(t, bin, s)
	t.Logf("total %s, %d relay starts", time.Since(began).Round(time.Millisecond), rp.starts)
}

// TestRestartWithBacklog: files written while the relay is down are
// delivered once it starts — on its first start (a backlog it never saw
// the beginning of) and after a restart (the relay has state: delivered
// numbers, consumers, a sequential channel's last number).
func TestRestartWithBacklog(t *testing.T) {
	// ОП is sequential: a channel the relay first sees at No 3 must not be
	// held waiting for 1 and 2, which never existed on the relay's watch;
	// after the restart its No 4 follows the delivered No 3.
	s := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "ОП", mode: "sequential"}, nodeSpec{code: "SHOP1"})
	type sent struct {
		h    exchange.Header
		data []byte
	}
	var all []sent
	// write puts one message on every channel into the outboxes: number
	// first on ЦО → ОП, first-2 on the others.
	write := func(first uint64) []sent {
		var round []sent
		for _, from := range s.nodes {
			for _, to := range s.nodes {
				if from == to {
					continue
				}
				no := first - 2
				if from == "ЦО" && to == "ОП" {
					no = first
				}
				// ОП's 1C acknowledges what its inbox holds: the next
				// number goes into its folder only then.
				var received uint64
				if from == "ОП" {
					received = readNo(filepath.Join(s.in(from), exchange.FileName(to, from, exchange.FormatXML)))
				}
				h := header(from, to, no, received)
				var buf bytes.Buffer
				if err := exchangetest.WriteXML(&buf, h, int64(1000+len(all)*3000)); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(s.out(from), exchange.FileName(from, to, exchange.FormatXML)), buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				m := sent{h, buf.Bytes()}
				round, all = append(round, m), append(all, m)
			}
		}
		// Let the files age past settle before anything looks at them.
		time.Sleep(300 * time.Millisecond)
		return round
	}
	arrived := func(m sent) bool {
		got, err := os.ReadFile(filepath.Join(s.in(m.h.To), exchange.FileName(m.h.From, m.h.To, exchange.FormatXML)))
		return err == nil && bytes.Equal(got, m.data)
	}
	outEmpty := func() bool {
		for _, n := range s.nodes {
			if es, err := os.ReadDir(s.out(n)); err != nil || len(es) > 0 {
				return false
			}
		}
		return true
	}
	delivered := func(round []sent, when string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			done := outEmpty()
			for _, m := range round {
				done = done && arrived(m)
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				for _, m := range round {
					if !arrived(m) {
						p := filepath.Join(s.in(m.h.To), exchange.FileName(m.h.From, m.h.To, exchange.FormatXML))
						t.Errorf("%s: %s → %s No %d: not delivered byte-identical to %s (destination holds No %d)", when, m.h.From, m.h.To, m.h.MessageNo, p, readNo(p))
					}
				}
				for _, n := range s.nodes {
					es, _ := os.ReadDir(s.out(n))
					for _, e := range es {
						t.Errorf("%s: source left in %s: %s", when, s.out(n), e.Name())
					}
				}
				t.FailNow()
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Nothing else shows up in the inboxes (no temp files, no strays).
		for _, n := range s.nodes {
			es, err := os.ReadDir(s.in(n))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				if !strings.HasPrefix(e.Name(), "Message_") {
					t.Errorf("%s: unexpected file in %s: %s", when, s.in(n), e.Name())
				}
			}
			if len(es) != 2 {
				t.Errorf("%s: %s holds %d files, want 2", when, s.in(n), len(es))
			}
		}
	}

	first := write(3)
	rn := s.start(t)
	delivered(first, "first start")
	rn.close()

	second := write(4) // while the relay is down
	rn = s.start(t)
	delivered(second, "after the restart")
	// The state is written right after the rename that put the file in
	// place: look until it is in (or 10 s), then report what is wrong.
	var problems []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		chans, err := rn.r.Channels(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		problems = problems[:0]
		for _, c := range chans {
			if want := uint64(2); c.From == "ЦО" && c.To == "ОП" && c.DeliveredNo != 4 || !(c.From == "ЦО" && c.To == "ОП") && c.DeliveredNo != want {
				problems = append(problems, fmt.Sprintf("%s → %s delivered_no %d", c.From, c.To, c.DeliveredNo))
			}
			if c.Pending() != 0 {
				problems = append(problems, fmt.Sprintf("%s → %s pending %d", c.From, c.To, c.Pending()))
			}
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range problems {
		t.Errorf("after the restart: %s", p)
	}
}

// awaitWriters waits for the writer goroutines of a crash test and fails the
// test with every error they reported.
func awaitWriters(t *testing.T, done <-chan struct{}, errs chan error, d time.Duration) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("writers did not finish within %s of the last restart", d)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// noDeadLetters fails the test for every dead letter `relay dead list` shows.
func noDeadLetters(t *testing.T, bin string, s *site) {
	t.Helper()
	var dead []json.RawMessage
	if err := relayJSON(bin, s, &dead, "dead", "list"); err != nil {
		t.Error(err)
	}
	for _, d := range dead {
		t.Errorf("dead letter: %s", d)
	}
}

// report fails the test for every violation the stopped checker saw.
func (c *inboxChecker) report(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.violations {
		t.Error(v)
	}
	t.Logf("inbox checker: %d scans", c.scans)
}
