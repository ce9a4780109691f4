package main

// The relay binary as a child process (big, ftp, ftpbig), and reading a
// relay's channel state (every scenario).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/pipeline"
)

// relayBinary returns bin, or builds ./cmd/relay into dir.
func relayBinary(ctx context.Context, bin, dir string, logf func(string, ...any)) (string, error) {
	if bin != "" {
		return bin, nil
	}
	bin = filepath.Join(dir, "relay")
	logf("go build -o %s ./cmd/relay", bin)
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/relay1c/relay/cmd/relay")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build relay: %w", err)
	}
	return bin, nil
}

// relayYAML is the relay section of a bench routing.yaml, up to the nodes.
func relayYAML(id, listen string) string {
	return fmt.Sprintf("relay:\n  id: %s\n  data_dir: ./data\n  listen: %s\nnodes:\n", id, listen)
}

// relayChild is the relay binary running on its own folder.
type relayChild struct {
	*child
	listen  string // its API address
	logPath string
}

// startRelay writes dir/routing.yaml (config of a free API address), starts
// bin on it, logging into dir/relay.log, and waits up to ready for
// /readyz. The caller stops it with finish; when startRelay fails it has
// stopped it already.
func startRelay(ctx context.Context, bin, dir string, config func(listen string) string, ready time.Duration) (*relayChild, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "routing.yaml")
	if err := os.WriteFile(cfgPath, []byte(config(listen)), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "relay.log")
	c, err := startChild(bin, logPath, "run", "-c", cfgPath)
	if err != nil {
		return nil, err
	}
	r := &relayChild{child: c, listen: listen, logPath: logPath}
	if err := c.waitReady(ctx, listen, ready); err != nil {
		r.finish(&err)
		return nil, err
	}
	return r, nil
}

// finish stops the relay by its PID. A failure to stop becomes *err if
// there was none; any *err gets the tail of the relay's log.
func (r *relayChild) finish(err *error) {
	if serr := r.stop(); serr != nil && *err == nil {
		*err = serr
	}
	if *err != nil {
		*err = fmt.Errorf("%w\nrelay log tail:\n%s", *err, tail(r.logPath, 20))
	}
}

func (r *relayChild) pid() int { return r.cmd.Process.Pid }

// state reads the relay's channel state through its API.
func (r *relayChild) state() relayState { return apiState{api.NewClient(r.listen, "")} }

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

// exitErr yields an error if the process exits before ctx ends.
func (c *child) exitErr(ctx context.Context) <-chan error {
	exited := make(chan error, 1)
	go func() {
		select {
		case <-c.done:
			exited <- fmt.Errorf("relay exited: %v", c.err)
		case <-ctx.Done():
		}
	}()
	return exited
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

// procCPU is the user+system CPU a process has used, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unreadable", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// relayState reads a relay's channel state and dead letters: the
// in-process daemon.Relay, or a relay binary's API (apiState).
type relayState interface {
	Channels(ctx context.Context) ([]pipeline.Channel, error)
	DeadLetters(ctx context.Context) ([]pipeline.DeadLetter, error)
}

// apiState is relayState over a relay's HTTP API.
type apiState struct{ c *api.Client }

func (a apiState) Channels(ctx context.Context) ([]pipeline.Channel, error) {
	views, err := a.c.Channels(ctx)
	chans := make([]pipeline.Channel, len(views))
	for i, v := range views {
		chans[i] = v.Channel
	}
	return chans, err
}

func (a apiState) DeadLetters(ctx context.Context) ([]pipeline.DeadLetter, error) {
	return a.c.DeadLetters(ctx)
}

// benchStates are the states of the bench's channels among chans, by
// channel key.
func benchStates(chans []pipeline.Channel) map[string]pipeline.Channel {
	states := map[string]pipeline.Channel{}
	for _, st := range chans {
		if st.Plan == benchPlan {
			states[st.From+"\x00"+st.To] = st
		}
	}
	return states
}

// awaitStates polls the relay's channel state (untimed, every 100ms) until
// pending names nothing left to wait for, then checks that there are no
// dead letters. An error from pending ends the wait at once; past deadline
// what is still pending is the error.
func awaitStates(ctx context.Context, r relayState, deadline time.Time, pending func([]pipeline.Channel) ([]string, error)) error {
	for {
		chans, err := r.Channels(ctx)
		if err != nil {
			return err
		}
		left, err := pending(chans)
		if err != nil {
			return err
		}
		if len(left) == 0 {
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
			return fmt.Errorf("channel state: %s", firstFew(left))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
