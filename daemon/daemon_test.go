package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/relay1c/relay/adapters"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/logtest"
)

// writeCreds writes a NATS credentials file (a user JWT and its seed) to path.
func writeCreds(t *testing.T, path string) {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	seed, _ := ukp.Seed()
	tok, err := jwt.NewUserClaims(upub).Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestNATSPathsRelativeToConfig: "Relative paths are taken from the folder
// of routing.yaml" (README) holds for nats.leaf.creds_file (and the other
// NATS files) too, not only for data_dir and the endpoints: `relay run -c
// /etc/relay/routing.yaml` from another folder finds leaf.creds beside it.
func TestNATSPathsRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	writeCreds(t, filepath.Join(dir, "leaf.creds"))
	// A free port, not the default 8088: a relay running on this machine
	// (a quick start) failed the test (local CI).
	yaml := "relay: { id: office1, data_dir: ./data, listen: '" + freeAddr(t) + "' }\n" +
		"nats: { leaf: { url: 'nats-leaf://127.0.0.1:1', creds_file: leaf.creds } }\n" +
		"nodes:\n  A:\n    deliver: { dir: ./in }\n"
	cfgPath := filepath.Join(dir, "routing.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := Start(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	if err != nil {
		t.Fatalf("Start with nats.leaf.creds_file beside routing.yaml (working directory %s): %v", mustWd(t), err)
	}
	r.Bus().Close()
}

func mustWd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// freeAddr is a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// loadConfig writes yaml as dir/routing.yaml and loads it.
func loadConfig(t *testing.T, dir, yaml string) *config.Config {
	t.Helper()
	p := filepath.Join(dir, "routing.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// dirRelay is a relay's config in dir with its data in dataDir.
func dirRelay(t *testing.T, dir, dataDir string) *config.Config {
	t.Helper()
	return loadConfig(t, dir, "relay: { id: hq, data_dir: '"+dataDir+"', listen: '"+freeAddr(t)+"' }\n"+
		"nodes:\n  A:\n    pickup: { dir: ./a/out }\n    deliver: { dir: ./a/in }\n")
}

// TestSecondRelayOnDataDirRefused proves that data_dir is one relay's: a
// second relay there (two embedded NATS servers on one JetStream store) is
// refused at Start with the holder's pid, and data_dir is free again once
// the first relay's Run has ended.
func TestSecondRelayOnDataDirRefused(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	one, two := filepath.Join(base, "one"), filepath.Join(base, "two")
	for _, d := range []string{one, two} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r1, err := Start(ctx, dirRelay(t, one, data), log, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Start(ctx, dirRelay(t, two, data), log, Options{})
	if err == nil {
		r2.Bus().Close()
		r1.Bus().Close()
		t.Fatalf("a second relay started on the data_dir %s a running relay uses", data)
	}
	if want := fmt.Sprintf("data_dir %s is in use by another relay (pid %d)", data, os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("refused with %q, want it to say %q", err, want)
	}
	stopped, stop := context.WithCancel(ctx)
	stop()
	if err := r1.Run(stopped); err != nil {
		t.Fatalf("Run: %v", err)
	}
	r3, err := Start(ctx, dirRelay(t, two, data), log, Options{})
	if err != nil {
		t.Fatalf("data_dir still taken after the relay holding it stopped: %v", err)
	}
	if err := r3.Run(stopped); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestNodeCodeValidatedIsRun proves that relay validate and JetStream agree
// on how long a node code may be: its delivery consumer's name,
// deliver_<token>@<relay id>, is at most 255 bytes. A code validate accepts
// (40 Cyrillic letters, relay hq: 251 bytes) runs; one JetStream refuses
// (41: 257 bytes) is a problem of routing.yaml instead of a relay that
// stops at start.
func TestNodeCodeValidatedIsRun(t *testing.T) {
	for _, letters := range []int{40, 41} {
		code := strings.Repeat("Ц", letters)
		t.Run(strconv.Itoa(letters), func(t *testing.T) {
			base := t.TempDir()
			cfg := loadConfig(t, base, "relay: { id: hq, listen: '"+freeAddr(t)+"' }\nnodes:\n  "+code+":\n    deliver: { dir: ./in }\n  B:\n    pickup: { dir: ./out }\n")
			if problems := cfg.Problems(adapters.New(cfg)); len(problems) > 0 {
				if want := "nodes." + code + ": node code is too long"; len(problems) != 1 || !strings.HasPrefix(problems[0], want) {
					t.Fatalf("problems %q, want one starting %q", problems, want)
				}
				if letters == 40 {
					t.Fatalf("a code JetStream takes is refused: %s", problems[0])
				}
				return
			}
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r, err := Start(ctx, cfg, log, Options{})
			if err != nil {
				t.Fatalf("validated config does not start: %v", err)
			}
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			deadline := time.Now().Add(15 * time.Second)
			for {
				if ok, why := r.Ready(); ok {
					break
				} else if time.Now().After(deadline) {
					cancel()
					<-done
					t.Fatalf("a node code validate accepts (%d bytes) keeps the relay from becoming ready: %s", len(code), why)
				}
				select {
				case err := <-done:
					t.Fatalf("a node code validate accepts (%d bytes) stops the relay: %v", len(code), err)
				case <-time.After(100 * time.Millisecond):
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
		})
	}
}

// TestRunStopsCleanly proves that cancelling Run (SIGTERM) stops the relay
// within a bounded time with no error: an error would make `relay run`
// exit 1 on a clean stop.
func TestRunStopsCleanly(t *testing.T) {
	base := t.TempDir()
	var logs logtest.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := Start(ctx, dirRelay(t, base, "./data"), log, Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for !r.Live() || func() bool { ok, _ := r.Ready(); return !ok }() {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel")
	}
	// A clean stop says so, last.
	out := strings.TrimSpace(logs.String())
	if !strings.Contains(out, "msg=\"stopping: ") || !strings.HasSuffix(out, "msg=stopped") {
		t.Fatalf("a clean stop should log stopping, then stopped last; logs end:\n%s", out[max(0, len(out)-600):])
	}
}

// deliveryInFlight runs a relay on listen addr whose node ЦО's file goes
// to an HTTP service that takes the body and never answers, and returns
// once that delivery is in flight: the relay's Run ends on done after
// cancel. The service is released when the test ends.
func deliveryInFlight(t *testing.T, addr string) (cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	base := t.TempDir()
	got := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case got <- struct{}{}:
		default:
		}
		<-release
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	cfg := loadConfig(t, base, "relay: { id: hq, listen: '"+addr+"' }\nnodes:\n  ЦО:\n    pickup: { dir: { path: ./out, settle: 100ms, poll_interval: 200ms } }\n"+
		"  ОП:\n    deliver: { http: { url: '"+srv.URL+"/in', timeout: 10m, response_timeout: 10m } }\n")
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	stop := func(msg string, args ...any) {
		cancel()
		<-ran
		t.Fatalf(msg, args...)
	}
	src, err := os.ReadFile("../testdata/fixtures/good/Message_ЦО_ОП.xml")
	if err != nil {
		stop("%v", err)
	}
	if err := os.MkdirAll(filepath.Join(base, "out"), 0o755); err != nil {
		stop("%v", err)
	}
	if err := os.WriteFile(filepath.Join(base, "out", "Message_ЦО_ОП.xml"), src, 0o644); err != nil {
		stop("%v", err)
	}
	select {
	case <-got:
	case err := <-ran:
		t.Fatalf("relay stopped: %v", err)
	case <-time.After(30 * time.Second):
		stop("no delivery reached the service")
	}
	return cancel, ran
}

// TestStopWithDeliveryInFlight proves that SIGTERM while a delivery is in
// flight to an HTTP service that takes the body and never answers stops the
// relay within a bounded time (systemd waits 90 s), with no error.
func TestStopWithDeliveryInFlight(t *testing.T) {
	cancel, done := deliveryInFlight(t, freeAddr(t))
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel with a delivery in flight: %v", err)
		}
		if d := time.Since(start); d > 35*time.Second {
			t.Errorf("stop took %s", d)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("Run did not return within 90s of SIGTERM while a delivery hung")
	}
}

// TestRunEndsWhenNATSClosedForGood: nats.go closes the connection for good
// when a server refuses it twice with the same authorization error (a
// rotated token or password, an expired JWT). The relay ran on as live,
// doing nothing, and no liveness probe or service manager restarted it —
// the restart that reads the credentials again (found by review). Run now
// ends with an error naming why.
func TestRunEndsWhenNATSClosedForGood(t *testing.T) {
	base := t.TempDir()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Authorization: "tok-one", NoLog: true, NoSigs: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Setenv("RELAY_T_NATS_TOKEN", "tok-one")
	cfg := loadConfig(t, base, "relay: { id: hq, listen: '"+freeAddr(t)+"' }\n"+
		"nats: { url: 'nats://"+ns.Addr().String()+"', token_env: RELAY_T_NATS_TOKEN }\n"+
		"nodes:\n  A:\n    pickup: { dir: ./a/out }\n    deliver: { dir: ./a/in }\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := Start(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ok, _ := r.Ready(); ok && r.Live() {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("not ready")
		}
	}
	// The token is rotated on the server: the connection is dropped and
	// every reconnect refused. The server is restarted on its port with the
	// new token rather than reloaded: ReloadOptions races with the server's
	// own direct-get handler (nats-server 2.15.2 reads its options unlocked
	// there), which the race detector reported in CI.
	rotated := opts.Clone()
	rotated.Authorization = "tok-two"
	rotated.Port = ns.Addr().(*net.TCPAddr).Port
	ns.Shutdown()
	ns.WaitForShutdown()
	ns, err = server.NewServer(rotated)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("restarted nats-server not ready")
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "closed for good") || !strings.Contains(err.Error(), "Authorization Violation") {
			t.Fatalf("Run ended with %v: want the connection closed for good, naming why", err)
		}
		if r.Live() {
			t.Fatal("still live after Run ended")
		}
	case <-time.After(20 * time.Second):
		cancel()
		<-done
		t.Fatalf("Run still runs 20 s after the token was rotated (connection closed: %v, last error %v)", r.Bus().Conn.IsClosed(), r.Bus().Conn.LastError())
	}
}

// TestAPITokenVariableUnsetIsSaid: relay.api_token_env naming a variable
// nobody set turned the operator's token off without a word (found by
// review). The shipped routing.yaml does that on a first run, so it is a
// warning, not a refusal.
func TestAPITokenVariableUnsetIsSaid(t *testing.T) {
	base := t.TempDir()
	t.Setenv("RELAY_T_API_TOKEN_UNSET", "")
	cfg := loadConfig(t, base, "relay: { id: hq, listen: '"+freeAddr(t)+"', api_token_env: RELAY_T_API_TOKEN_UNSET }\n"+
		"nodes:\n  A:\n    pickup: { dir: ./a/out }\n    deliver: { dir: ./a/in }\n")
	var logs logtest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "variable=RELAY_T_API_TOKEN_UNSET") {
		t.Fatalf("no warning naming the unset variable:\n%s", logs.String())
	}
}

// TestStartPortTaken: relay.listen taken by another program stops the
// start before NATS or anything else runs (found by a walk through the
// quick start: "relay started" was logged, then the port was found
// taken), and gives data_dir back.
func TestStartPortTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	base := t.TempDir()
	cfg := loadConfig(t, base, "relay: { listen: '"+taken.Addr().String()+"' }\nnodes:\n  A:\n    deliver: { dir: ./in }\n")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := Start(context.Background(), cfg, log, Options{}); err == nil || !strings.Contains(err.Error(), "api: listen") {
		t.Fatalf("Start on a taken port: %v, want the api's listen error", err)
	}
	cfg = loadConfig(t, base, "relay: { listen: '"+freeAddr(t)+"' }\nnodes:\n  A:\n    deliver: { dir: ./in }\n")
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, cfg, log, Options{})
	if err != nil {
		cancel()
		t.Fatalf("data_dir not given back after the refused start: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestHealthzAnswers503WhileStopping: README: GET /healthz is "200 while
// the process serves; 503 once it is stopping". While the relay is stopping
// (here: finishing a delivery in flight), a probe must get that 503; the
// API stopped with everything else and probes were refused (found by
// review).
func TestHealthzAnswers503WhileStopping(t *testing.T) {
	addr := freeAddr(t)
	cancel, done := deliveryInFlight(t, addr)
	c := &http.Client{Timeout: 2 * time.Second}
	if resp, err := c.Get("http://" + addr + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz before stop: %v %v", resp, err)
	}
	cancel() // SIGTERM
	var answers []string
	for {
		select {
		case <-done:
			if len(answers) == 0 {
				t.Fatal("the stop ended before any probe: the delivery in flight did not hold it")
			}
			t.Fatalf("probes while stopping got %q; README says 503", answers)
		default:
		}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err != nil {
			answers = append(answers, "error: "+err.Error())
		} else {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				<-done
				return
			}
			answers = append(answers, resp.Status)
		}
		if len(answers) > 3 {
			<-done
			t.Fatalf("probes while the relay was still stopping got %q, not README's 503", answers)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
