package e2e

// FTP endpoint tests against a real vsftpd (vsftpd_test.go): FTP and FTPS
// pickup and delivery end to end, a slow 1C writer, the server going away
// and coming back, SIGKILL of the real binary mid-transfer, and bad input
// (wrong password, missing folder, junk file, `relay check`).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/pipeline"
)

// fxPasswordEnv holds the vsftpd user's password for the relays under test
// (set by TestMain).
const fxPasswordEnv = "RELAY_E2E_FTP_PASSWORD"

// relayCheck runs `relay check` on the site's config, expects exit status
// 1 (some node fails), and returns its line per node code and all output.
func relayCheck(t testing.TB, bin string, s *site) (lines map[string]string, output string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check", "-c", s.cfg)
	cmd.Dir = s.root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("relay check:\n%s%s", stdout.String(), stderr.String())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("relay check: %v, want exit status 1", err)
	}
	lines = map[string]string{}
	for _, line := range strings.Split(stdout.String(), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			lines[f[0]] = line
		}
	}
	return lines, stdout.String() + stderr.String()
}

// fxMkdir creates rel (and its parents) under the server's root, owned by
// the FTP user so that vsftpd can write and delete there.
func fxMkdir(t testing.TB, s *ftpServer, rel string) string {
	t.Helper()
	p := s.Root
	for _, part := range strings.Split(rel, "/") {
		p = filepath.Join(p, part)
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
		if err := os.Chown(p, s.UID, s.GID); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// fxConn is the part of an endpoint's `ftp:` mapping every role shares.
func fxConn(s *ftpServer, dir, passwordEnv string, extra ...string) string {
	opts := []string{
		fmt.Sprintf("url: %q", s.URL(dir)),
		"password_env: " + passwordEnv,
		"tls: " + s.TLS,
		"connect_timeout: 10s",
		"io_timeout: 5s",
	}
	if s.TLS != "none" {
		opts = append(opts, fmt.Sprintf("ca_file: %q", s.CAFile))
	}
	return "ftp: { " + strings.Join(append(opts, extra...), ", ") + " }"
}

// fxPickup is a pickup value for nodeSpec.pickupYAML with short timings.
func fxPickup(s *ftpServer, dir, after string) string {
	if after == "" {
		after = "delete"
	}
	return fmt.Sprintf("{ %s, after: %q }", fxConn(s, dir, fxPasswordEnv,
		"settle: 300ms", "poll_interval: 150ms", "incomplete_timeout: 10s"), after)
}

// fxDeliver is a deliver value for nodeSpec.deliverYAML.
func fxDeliver(s *ftpServer, dir string) string {
	return "{ " + fxConn(s, dir, fxPasswordEnv) + " }"
}

// fxXML is a synthetic exchange message of about size bytes.
func fxXML(t testing.TB, h exchange.Header, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := exchangetest.WriteXML(&b, h, size); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fxZip(t testing.TB, h exchange.Header, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := exchangetest.WriteZip(&b, h, size); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fxSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fxFileSum is the sha256 of a file, "" if it cannot be read.
func fxFileSum(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return fxSum(b)
}

// fxAwait polls ok until it holds or d passes; false on timeout.
func fxAwait(d time.Duration, ok func() bool) bool {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// fxNodes is /api/v1/nodes by code.
func fxNodes(t testing.TB, s *site) map[string]api.NodeView {
	t.Helper()
	ns, err := api.NewClient(s.listen, "").Nodes(context.Background())
	if err != nil {
		t.Fatalf("GET /api/v1/nodes: %v", err)
	}
	out := map[string]api.NodeView{}
	for _, n := range ns {
		out[n.Code] = n
	}
	return out
}

func fxDead(t testing.TB, s *site) []pipeline.DeadLetter {
	t.Helper()
	ls, err := api.NewClient(s.listen, "").DeadLetters(context.Background())
	if err != nil {
		t.Fatalf("GET /api/v1/dead: %v", err)
	}
	return ls
}

// fxLeftovers lists the names in a local folder (vsftpd's root seen from
// the disk, dot-files included) that are relay temp files.
func fxLeftovers(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.Name(), ".relay-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// fxMessageFiles lists Message_* names in a local folder.
func fxMessageFiles(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.Name(), "Message_") && e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestFTPToFTP: node ЦО leaves 20 messages in a folder on the FTP server
// the way 1C does (straight to the final name: half by FTP STOR, half
// written on the server's disk); relay takes each one and delivers it into
// ОП's folder on the same server, byte-identical; the source is deleted
// once taken, and no temp file is left behind. Plain FTP and explicit FTPS.
func TestFTPToFTP(t *testing.T) {
	for _, mode := range []string{"none", "explicit"} {
		t.Run(mode, func(t *testing.T) {
			const total = 20
			srv := startVsftpd(t, ftpOptions{TLS: mode})
			fxMkdir(t, srv, "ЦО/out")
			s := newSite(t,
				nodeSpec{code: "ЦО", pickupYAML: fxPickup(srv, "ЦО/out", "delete")},
				nodeSpec{code: "ОП", deliverYAML: fxDeliver(srv, "ОП/in")})
			s.start(t)
			conn := srv.Dial(t)

			name := exchange.FileName("ЦО", "ОП", exchange.FormatXML)
			src := filepath.Join(srv.Root, "ЦО", "out", name)
			inbox := filepath.Join(srv.Root, "ОП", "in")
			dst := filepath.Join(inbox, name)
			for n := uint64(1); n <= total; n++ {
				h := header("ЦО", "ОП", n, n/2)
				if h.ExchangePlan != "Магазины" {
					t.Fatalf("plan %q: this test wants a Cyrillic plan name", h.ExchangePlan)
				}
				size := int64(1000 + int(n)*4099)
				if n%5 == 0 {
					size = 6<<20 + int64(n) // large: TLS data connections must close cleanly
				}
				data := fxXML(t, h, size)
				// (Large ones go straight to the disk: jlaffaye/ftp's own
				// TLS data connections truncate big uploads under TLS 1.3,
				// the very bug the relay's adapter works around.)
				if n%2 == 1 && n%5 != 0 {
					if err := conn.Stor("ЦО/out/"+name, bytes.NewReader(data)); err != nil {
						t.Fatalf("No %d: STOR: %v", n, err)
					}
				} else {
					srv.WriteFile(t, "ЦО/out/"+name, data)
				}
				// Every transfer works the first time: no endpoint error
				// may show up on the way.
				var trouble []string
				if !fxAwait(20*time.Second, func() bool {
					for code, nv := range fxNodes(t, s) {
						if e := nv.PickupError + nv.DeliverError; e != "" && !slices.Contains(trouble, code+": "+e) {
							trouble = append(trouble, code+": "+e)
						}
					}
					return readNo(dst) == n
				}) {
					t.Fatalf("No %d not delivered to %s within 20s (it holds No %d); errors on the way: %q", n, dst, readNo(dst), trouble)
				}
				if len(trouble) > 0 {
					t.Errorf("No %d (%d bytes): endpoint errors on the way: %q", n, len(data), trouble)
				}
				if got, want := fxFileSum(dst), fxSum(data); got != want {
					t.Fatalf("No %d delivered with sha256 %s, sent %s", n, got, want)
				}
				if !fxAwait(5*time.Second, func() bool { return gone(src) }) {
					t.Fatalf("No %d: source %s not deleted after pickup", n, src)
				}
				// ОП's 1C reads the message and removes it.
				if err := os.Remove(dst); err != nil {
					t.Fatal(err)
				}
			}
			if lo := fxLeftovers(t, inbox); len(lo) > 0 {
				t.Errorf("temp files left in ОП/in: %v", lo)
			}
			if es, _ := os.ReadDir(filepath.Join(srv.Root, "ЦО", "out")); len(es) != 0 {
				t.Errorf("ЦО/out is not empty: %d entries", len(es))
			}
			c := channelWhen(t, s, "ЦО", "ОП", func(c api.ChannelView) bool { return c.DeliveredNo == total && c.Pending == 0 })
			if c.Plan != "Магазины" || c.PickedNo != total || c.DeliveredNo != total || c.Pending != 0 || c.Duplicates+c.Stale+c.Superseded+c.Dead != 0 || c.LastError != "" {
				t.Errorf("channel ЦО→ОП: %+v", c)
			}
			for code, n := range fxNodes(t, s) {
				if n.PickupError != "" || n.DeliverError != "" {
					t.Errorf("node %s shows endpoint errors: %+v", code, n)
				}
			}
			if ls := fxDead(t, s); len(ls) != 0 {
				t.Errorf("dead letters: %+v", ls)
			}
		})
	}
}

// TestFTPAndDir: in one site, SHOP1 sends from an FTP folder (after:
// move:archive) to ЦО's local folder, and ЦО sends from its local folder to
// SHOP1's FTP folder, both ways at once, .xml and .zip; every message
// arrives byte-identical. Plain, explicit and implicit FTPS.
func TestFTPAndDir(t *testing.T) {
	for _, mode := range []string{"none", "explicit", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			const total = 4
			srv := startVsftpd(t, ftpOptions{TLS: mode})
			fxMkdir(t, srv, "shop1/out")
			s := newSite(t,
				nodeSpec{code: "SHOP1", pickupYAML: fxPickup(srv, "shop1/out", "move:archive"), deliverYAML: fxDeliver(srv, "shop1/in")},
				nodeSpec{code: "ЦО"})
			s.start(t)

			type leg struct {
				from, to string
				outDir   string // local path of the sender's folder
				inDir    string // local path of the receiver's folder
				zipNo    uint64
			}
			legs := []leg{
				{"SHOP1", "ЦО", filepath.Join(srv.Root, "shop1", "out"), s.in("ЦО"), 2},
				{"ЦО", "SHOP1", s.out("ЦО"), filepath.Join(srv.Root, "shop1", "in"), 3},
			}
			var wg sync.WaitGroup
			errs := make(chan error, 2*total)
			for _, l := range legs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := uint64(1); n <= total; n++ {
						h := header(l.from, l.to, n, 0)
						format, data := exchange.FormatXML, fxXML(t, h, int64(3000+int(n)*20011))
						if n == l.zipNo {
							format, data = exchange.FormatZip, fxZip(t, h, int64(3000+int(n)*20011))
						}
						name := exchange.FileName(l.from, l.to, format)
						src, dst := filepath.Join(l.outDir, name), filepath.Join(l.inDir, name)
						if err := os.WriteFile(src, data, 0o644); err != nil {
							errs <- err
							return
						}
						_ = os.Chown(src, srv.UID, srv.GID) // as if the FTP user wrote it (the dir side does not care)
						if !fxAwait(20*time.Second, func() bool { return readNo(dst) == n }) {
							errs <- fmt.Errorf("%s→%s No %d (%s) not delivered to %s within 20s", l.from, l.to, n, format, dst)
							return
						}
						if got, want := fxFileSum(dst), fxSum(data); got != want {
							errs <- fmt.Errorf("%s→%s No %d delivered with sha256 %s, sent %s", l.from, l.to, n, got, want)
							return
						}
						if !fxAwait(5*time.Second, func() bool { return gone(src) }) {
							errs <- fmt.Errorf("%s→%s No %d: source %s not taken", l.from, l.to, n, src)
							return
						}
						if err := os.Remove(dst); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if t.Failed() {
				t.Logf("nodes: %+v", fxNodes(t, s))
				t.FailNow()
			}
			// after: move:archive kept every taken SHOP1 file on the server.
			// A name already in the archive gets a time prefix. A file
			// leaves its name (relay-commit-) before its move ends: the
			// last move may still be under way.
			var archived []string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				archived = nil
				es, _ := os.ReadDir(filepath.Join(srv.Root, "shop1", "out", "archive"))
				for _, e := range es {
					if e.Type().IsRegular() && strings.Contains(e.Name(), "Message_SHOP1_ЦО.") {
						archived = append(archived, e.Name())
					}
				}
				if len(archived) >= total || time.Now().After(deadline) {
					break
				}
			}
			if len(archived) != total {
				t.Errorf("shop1/out/archive holds %v, want %d moved files", archived, total)
			}
			if left := fxMessageFiles(filepath.Join(srv.Root, "shop1", "out")); len(left) != 0 {
				t.Errorf("shop1/out still holds %v", left)
			}
			if lo := fxLeftovers(t, filepath.Join(srv.Root, "shop1", "in")); len(lo) > 0 {
				t.Errorf("temp files left in shop1/in: %v", lo)
			}
			for _, l := range legs {
				c := channelWhen(t, s, l.from, l.to, func(c api.ChannelView) bool { return c.DeliveredNo == total && c.Pending == 0 })
				if c.DeliveredNo != total || c.Pending != 0 || c.Dead+c.Duplicates+c.Stale+c.Superseded != 0 {
					t.Errorf("channel %s→%s: %+v", l.from, l.to, c)
				}
			}
		})
	}
}

// fxPausingReader hands out its pieces one after another and sleeps before
// every piece but the first: an FTP STOR from it leaves a partial file on the
// server, stable for longer than the pickup's settle time, between pieces.
type fxPausingReader struct {
	pieces [][]byte
	pause  time.Duration
	i      int
	off    int
}

func (r *fxPausingReader) Read(b []byte) (int, error) {
	for r.i < len(r.pieces) && r.off == len(r.pieces[r.i]) {
		r.i++
		r.off = 0
		if r.i < len(r.pieces) {
			time.Sleep(r.pause)
		}
	}
	if r.i == len(r.pieces) {
		return 0, io.EOF
	}
	n := copy(b, r.pieces[r.i][r.off:])
	r.off += n
	return n, nil
}

// fxSplit cuts data into n pieces; the closing root tag is in the last one.
func fxSplit(data []byte, n int) [][]byte {
	step := (len(data)-64)/n + 1
	var out [][]byte
	for i := 0; i < len(data); {
		end := min(i+step, len(data))
		if len(data)-end < 64 {
			end = len(data)
		}
		out = append(out, data[i:end])
		i = end
	}
	return out
}

// TestFTPSlowWriterNotEarly: a node uploads its message slowly, straight to
// the final name, pausing longer than settle between pieces (one STOR from a
// stalling reader, or a STOR and then APPEs). Relay must neither deliver nor
// dead-letter the partial file; once it is complete it is delivered exactly
// once, byte-identical.
func TestFTPSlowWriterNotEarly(t *testing.T) {
	for _, tc := range []struct{ mode, method string }{{"none", "stor"}, {"implicit", "appe"}} {
		t.Run(tc.mode+"-"+tc.method, func(t *testing.T) {
			const (
				pieces = 4
				pause  = 1500 * time.Millisecond // settle is 300ms, poll 150ms
			)
			srv := startVsftpd(t, ftpOptions{TLS: tc.mode})
			fxMkdir(t, srv, "co/out")
			s := newSite(t, nodeSpec{code: "CO", pickupYAML: fxPickup(srv, "co/out", "delete")}, nodeSpec{code: "SHOP1"})
			s.start(t)
			conn := srv.Dial(t)

			name := exchange.FileName("CO", "SHOP1", exchange.FormatXML)
			data := fxXML(t, header("CO", "SHOP1", 7, 3), 300<<10)
			dst := filepath.Join(s.in("SHOP1"), name)
			src := filepath.Join(srv.Root, "co", "out", name)

			writeErr := make(chan error, 1)
			go func() {
				ps := fxSplit(data, pieces)
				if tc.method == "stor" {
					writeErr <- conn.Stor("co/out/"+name, &fxPausingReader{pieces: ps, pause: pause})
					return
				}
				if err := conn.Stor("co/out/"+name, bytes.NewReader(ps[0])); err != nil {
					writeErr <- err
					return
				}
				for _, p := range ps[1:] {
					time.Sleep(pause)
					if err := conn.Append("co/out/"+name, bytes.NewReader(p)); err != nil {
						writeErr <- err
						return
					}
				}
				writeErr <- nil
			}()

			// While the upload goes on: nothing delivered, nothing dead. Also
			// make sure the partial file did sit on the server (the test
			// would prove nothing otherwise).
			sawPartial := false
			var werr error
		writing:
			for {
				select {
				case werr = <-writeErr:
					break writing
				case <-time.After(50 * time.Millisecond):
				}
				if fi, err := os.Stat(src); err == nil && fi.Size() > 0 && fi.Size() < int64(len(data)) {
					sawPartial = true
				}
				if !gone(dst) {
					t.Fatalf("%s delivered while the writer was still uploading (%s)", name, tc.method)
				}
				if ls := fxDead(t, s); len(ls) != 0 {
					t.Fatalf("dead letter while the writer was still uploading: %+v", ls)
				}
			}
			if werr != nil {
				t.Fatalf("upload: %v", werr)
			}
			if !sawPartial {
				t.Fatal("never saw the partial file on the server: the writer was not slow")
			}
			if !fxAwait(15*time.Second, func() bool { return readNo(dst) == 7 }) {
				t.Fatalf("not delivered within 15s after the upload finished; nodes %+v", fxNodes(t, s))
			}
			if got, want := fxFileSum(dst), fxSum(data); got != want {
				t.Fatalf("delivered sha256 %s, sent %s", got, want)
			}
			if !fxAwait(5*time.Second, func() bool { return gone(src) }) {
				t.Fatalf("source %s not deleted", src)
			}
			// Exactly once: the node reads it, and it never comes again.
			if err := os.Remove(dst); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1500 * time.Millisecond)
			if !gone(dst) {
				t.Errorf("%s delivered a second time", name)
			}
			if ls := fxDead(t, s); len(ls) != 0 {
				t.Errorf("dead letters: %+v", ls)
			}
			c := channelWhen(t, s, "CO", "SHOP1", func(c api.ChannelView) bool { return c.DeliveredNo == 7 && c.Pending == 0 })
			if c.PickedNo != 7 || c.DeliveredNo != 7 || c.Pending != 0 || c.Duplicates+c.Stale+c.Superseded+c.Dead != 0 {
				t.Errorf("channel CO→SHOP1: %+v", c)
			}
		})
	}
}

// TestFTPServerDownAndBack: X picks up from FTP, W receives into FTP
// (sequential: every message must arrive), Y and Z use local folders. The
// FTP server is stopped for 30s: Y→Z keeps flowing the whole time, Y→W
// queues, X's new message waits on the server's disk, and /api/v1/nodes
// shows X's pickup and W's delivery failing. After the restart everything
// queued arrives, nothing is lost and the errors clear.
func TestFTPServerDownAndBack(t *testing.T) {
	sideBySide(t)
	const outage = 30 * time.Second
	srv := startVsftpd(t, ftpOptions{TLS: "explicit"})
	fxMkdir(t, srv, "x/out")
	s := newSite(t,
		nodeSpec{code: "X", pickupYAML: fxPickup(srv, "x/out", "delete")},
		nodeSpec{code: "Y"},
		nodeSpec{code: "Z"},
		nodeSpec{code: "W", mode: "sequential", deliverYAML: fxDeliver(srv, "w/in")})
	s.start(t)

	xName, yzName, ywName := "Message_X_Z.xml", "Message_Y_Z.xml", "Message_Y_W.xml"
	xSrc := filepath.Join(srv.Root, "x", "out", xName)
	wIn := filepath.Join(srv.Root, "w", "in")
	// W's 1C acknowledges each number it reads: the next one waits for
	// that (W is sequential).
	acknowledge(t, s.out("W"), "W", "Y", filepath.Join(wIn, ywName))
	// sendDir writes a message into a local outbox and waits until it is taken.
	sendDir := func(from, to string, n uint64) ([]byte, error) {
		data := fxXML(t, header(from, to, n, 0), int64(2000+int(n)*1000))
		src := filepath.Join(s.out(from), exchange.FileName(from, to, exchange.FormatXML))
		if err := os.WriteFile(src, data, 0o644); err != nil {
			return nil, err
		}
		if !fxAwait(10*time.Second, func() bool { return gone(src) }) {
			return nil, fmt.Errorf("%s→%s No %d not taken from %s within 10s", from, to, n, s.out(from))
		}
		return data, nil
	}
	delivered := func(path string, n uint64, data []byte) bool {
		return readNo(path) == n && fxFileSum(path) == fxSum(data)
	}

	// Up: one message on each channel.
	x1 := fxXML(t, header("X", "Z", 1, 0), 5000)
	srv.WriteFile(t, "x/out/"+xName, x1)
	yz1, err := sendDir("Y", "Z", 1)
	if err != nil {
		t.Fatal(err)
	}
	yw := map[uint64][]byte{}
	if yw[1], err = sendDir("Y", "W", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "first messages delivered", func() bool {
		return delivered(filepath.Join(s.in("Z"), xName), 1, x1) &&
			delivered(filepath.Join(s.in("Z"), yzName), 1, yz1) &&
			delivered(filepath.Join(wIn, ywName), 1, yw[1])
	})
	for code, n := range fxNodes(t, s) {
		if n.PickupError != "" || n.DeliverError != "" {
			t.Fatalf("node %s shows endpoint errors while the server is up: %+v", code, n)
		}
	}

	// Down.
	srv.Stop()
	downAt := time.Now()
	t.Logf("vsftpd stopped")
	x2 := fxXML(t, header("X", "Z", 2, 0), 7000)
	srv.WriteFile(t, "x/out/"+xName, x2) // X's 1C leaves it; nobody can fetch it now

	// Y→Z keeps flowing through the whole outage: each message within 5s.
	yzDone := make(chan error, 1)
	var yzLast uint64
	go func() {
		for n := uint64(2); time.Since(downAt) < outage-2*time.Second; n++ {
			data, err := sendDir("Y", "Z", n)
			if err != nil {
				yzDone <- err
				return
			}
			dst := filepath.Join(s.in("Z"), yzName)
			if !fxAwait(5*time.Second, func() bool { return delivered(dst, n, data) }) {
				yzDone <- fmt.Errorf("Y→Z No %d not delivered within 5s while the FTP server was down (Z holds No %d)", n, readNo(dst))
				return
			}
			yzLast = n
			time.Sleep(500 * time.Millisecond)
		}
		yzDone <- nil
	}()
	// Y→W queues: the pickup goes on, the delivery waits for the server.
	const ywLast = 5
	for n := uint64(2); n <= ywLast; n++ {
		if yw[n], err = sendDir("Y", "W", n); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	var downNodes map[string]api.NodeView
	if !fxAwait(15*time.Second, func() bool {
		downNodes = fxNodes(t, s)
		return downNodes["X"].PickupError != "" && downNodes["W"].DeliverError != ""
	}) {
		t.Fatalf("endpoint errors not shown while the FTP server is down: X %+v, W %+v", downNodes["X"], downNodes["W"])
	}
	t.Logf("while down: X pickup_error %q; W deliver_error %q", downNodes["X"].PickupError, downNodes["W"].DeliverError)
	for _, code := range []string{"Y", "Z"} {
		if n := downNodes[code]; n.PickupError != "" || n.DeliverError != "" {
			t.Errorf("node %s (local folders) shows errors: %+v", code, n)
		}
	}
	if c := channel(t, s, "Y", "W"); c.DeliveredNo != 1 || c.PickedNo != ywLast || c.Pending != ywLast-1 {
		t.Errorf("Y→W while the server is down: %+v, want picked %d, delivered 1, pending %d", c, ywLast, ywLast-1)
	}
	if gone(xSrc) {
		t.Errorf("X's message vanished from the server's disk while the server was down")
	}
	if err := <-yzDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("Y→Z delivered No 2..%d during the outage", yzLast)
	if d := outage - time.Since(downAt); d > 0 {
		time.Sleep(d)
	}

	// Back.
	srv.Start()
	upAt := time.Now()
	t.Logf("vsftpd started again after %s", upAt.Sub(downAt).Round(100*time.Millisecond))
	var upNodes map[string]api.NodeView
	recovered := fxAwait(75*time.Second, func() bool {
		if !delivered(filepath.Join(s.in("Z"), xName), 2, x2) || !gone(xSrc) || !delivered(filepath.Join(wIn, ywName), ywLast, yw[ywLast]) {
			return false
		}
		upNodes = fxNodes(t, s)
		return upNodes["X"].PickupError == "" && upNodes["W"].DeliverError == ""
	})
	if !recovered {
		z := filepath.Join(s.in("Z"), xName)
		t.Fatalf("not recovered %s after the restart: Z holds X's No %d, X source gone %v, W holds No %d; nodes X %+v, W %+v",
			time.Since(upAt).Round(time.Second), readNo(z), gone(xSrc), readNo(filepath.Join(wIn, ywName)), upNodes["X"], upNodes["W"])
	}
	t.Logf("recovered %s after the restart", time.Since(upAt).Round(100*time.Millisecond))
	c := channelWhen(t, s, "Y", "W", func(c api.ChannelView) bool { return c.DeliveredNo == ywLast && c.Pending == 0 })
	if c.DeliveredNo != ywLast || c.Pending != 0 || c.Superseded+c.Dead+c.Stale+c.Duplicates != 0 || c.LastError != "" {
		t.Errorf("Y→W after the restart: %+v (sequential: every message delivered)", c)
	}
	if c := channelWhen(t, s, "X", "Z", func(c api.ChannelView) bool { return c.DeliveredNo == 2 && c.Pending == 0 }); c.DeliveredNo != 2 || c.Pending != 0 || c.Dead != 0 {
		t.Errorf("X→Z after the restart: %+v", c)
	}
	if c := channelWhen(t, s, "Y", "Z", func(c api.ChannelView) bool { return c.DeliveredNo == yzLast && c.Pending == 0 }); c.DeliveredNo != yzLast || c.Pending != 0 || c.Dead+c.Superseded != 0 {
		t.Errorf("Y→Z: %+v, want delivered %d", c, yzLast)
	}
	if lo := fxLeftovers(t, wIn); len(lo) > 0 {
		t.Errorf("temp files left in w/in: %v", lo)
	}
	if ls := fxDead(t, s); len(ls) != 0 {
		t.Errorf("dead letters: %+v", ls)
	}
}

// fxGrowing watches files matching a glob and reports whether one of them
// grew since the last call: a transfer is in progress.
type fxGrowing struct {
	glob string
	last map[string]int64
}

func (g *fxGrowing) grew() (string, bool) {
	ms, _ := filepath.Glob(g.glob)
	now := map[string]int64{}
	hit := ""
	for _, m := range ms {
		fi, err := os.Stat(m)
		if err != nil {
			continue
		}
		now[m] = fi.Size()
		if prev, ok := g.last[m]; ok && fi.Size() > prev && fi.Size() > 0 {
			hit = m
		}
	}
	g.last = now
	return hit, hit != ""
}

// TestFTPCrash: the real binary is SIGKILLed again and again while it
// downloads large messages from ЦО's FTP folder and while it uploads them
// into ОП's FTP folder (ОП is sequential: a lost message would hold its
// channel for good). A checker reads ОП's FTP folder all the time: a
// Message_* file there is always a complete message, sha-identical to what
// its writer wrote, and its number never goes back. After a last run
// without kills every channel's last message is there, nothing is left in
// the outboxes, and no temp file stays behind.
func TestFTPCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("SIGKILL crash test skipped under -short")
	}
	sideBySide(t)
	const (
		perChannel = 6
		kills      = 8
	)
	began := time.Now()
	bin := buildRelay(t)
	t.Logf("built relay in %s", time.Since(began).Round(time.Millisecond))

	srv := startVsftpd(t, ftpOptions{TLS: "explicit"})
	fxMkdir(t, srv, "ЦО/out")
	s := newSite(t,
		nodeSpec{code: "ЦО", pickupYAML: fxPickup(srv, "ЦО/out", "delete")},
		nodeSpec{code: "ОП", mode: "sequential", deliverYAML: fxDeliver(srv, "ОП/in")},
		nodeSpec{code: "SHOP1"})
	inbox := fxMkdir(t, srv, "ОП/in")
	// ОП's 1C acknowledges each number it reads: the next one waits for
	// that (ОП is sequential).
	for _, from := range []string{"ЦО", "SHOP1"} {
		acknowledge(t, s.out("ОП"), "ОП", from, filepath.Join(inbox, exchange.FileName(from, "ОП", exchange.FormatXML)))
	}

	chans := []*crashChannel{
		{from: "ЦО", to: "ОП", sums: map[uint64]string{}},    // FTP → FTP
		{from: "SHOP1", to: "ОП", sums: map[uint64]string{}}, // dir → FTP
	}
	byName := map[string]*crashChannel{}
	for _, ch := range chans {
		byName[ch.name()] = ch
	}
	outDir := func(ch *crashChannel) string {
		if ch.from == "ЦО" {
			return filepath.Join(srv.Root, "ЦО", "out")
		}
		return s.out(ch.from)
	}

	rp := newRelayProc(t, bin, s)
	rp.start()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The checker sees ОП's FTP folder as a site whose only inbox it is; it
	// inspects a file again whenever its inode, size or mtime changed.
	checker := &inboxChecker{s: &site{root: srv.Root, nodes: []string{"ОП"}}, chans: byName, last: map[string]uint64{}}
	if checker.s.in("ОП") != inbox {
		t.Fatalf("checker looks at %s, the FTP inbox is %s", checker.s.in("ОП"), inbox)
	}
	checkerDone := make(chan struct{})
	go func() {
		defer close(checkerDone)
		type ident struct {
			ino   uint64
			size  int64
			mtime time.Time
		}
		seen := map[string]ident{}
		scan := func() {
			for _, name := range fxMessageFiles(inbox) {
				p := filepath.Join(inbox, name)
				fi, err := os.Stat(p)
				if err != nil {
					checker.violate("stat %s: %v", p, err)
					continue
				}
				id := ident{size: fi.Size(), mtime: fi.ModTime()}
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					id.ino = st.Ino
				}
				if seen[p] == id {
					continue
				}
				checker.check(p, "ОП")
				seen[p] = id
			}
			checker.mu.Lock()
			checker.scans++
			checker.mu.Unlock()
		}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			scan()
			select {
			case <-ctx.Done():
				scan()
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { cancel(); <-checkerDone }()

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var wg sync.WaitGroup
	writerErr := make(chan error, len(chans))
	for i, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			path := filepath.Join(outDir(ch), ch.name())
			for n := uint64(1); n <= perChannel; n++ {
				var buf bytes.Buffer
				if err := exchangetest.WriteXML(&buf, header(ch.from, ch.to, n, 0), int64(3<<20+rng.IntN(6<<20))); err != nil {
					writerErr <- err
					return
				}
				ch.mu.Lock()
				ch.sums[n] = fxSum(buf.Bytes())
				ch.mu.Unlock()
				if err := writeLike1C(path, buf.Bytes(), rng); err != nil {
					writerErr <- fmt.Errorf("%s No %d: %w", ch.name(), n, err)
					return
				}
				_ = os.Chown(path, srv.UID, srv.GID) // may be taken already
				deadline := time.Now().Add(60 * time.Second)
				for !gone(path) {
					if ctx.Err() != nil {
						return
					}
					if time.Now().After(deadline) {
						writerErr <- fmt.Errorf("%s No %d: not taken from %s within 60s", ch.name(), n, outDir(ch))
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()

	// The killer: alternately waits for a download (the FTP pickup's spool
	// file growing) and for an upload (a .relay-*.part growing in ОП's
	// folder), and SIGKILLs the relay right then; restart at once.
	spool := &fxGrowing{glob: filepath.Join(s.root, "data", "spool", bus.Token("ЦО"), "*")}
	upload := &fxGrowing{glob: filepath.Join(inbox, ".relay-*")}
	landed := map[string]int{}
	var lastStart time.Time
	for k := 1; k <= kills; k++ {
		if rp.exited() {
			t.Fatalf("relay exited on its own before kill #%d", k)
		}
		want, g := "download", spool
		if k%2 == 0 {
			want, g = "upload", upload
		}
		g.grew() // reset
		what := "timer (no " + want + " seen within 15s)"
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if f, ok := g.grew(); ok {
				what = want + " of " + filepath.Base(f)
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		if strings.HasPrefix(what, "timer") {
			select {
			case <-writersDone:
				t.Logf("kill #%d skipped: the writers are done and nothing moves", k)
				k = kills
				continue
			default:
			}
		} else {
			landed[want]++
		}
		rp.kill()
		t.Logf("kill #%d at %s: mid-%s", k, time.Since(began).Round(time.Millisecond), what)
		rp.start()
		lastStart = rp.started
	}
	t.Logf("%d kills done after %s: %v", kills, time.Since(began).Round(time.Millisecond), landed)
	if landed["download"] == 0 || landed["upload"] == 0 {
		t.Errorf("the kills did not land inside transfers (downloads %d, uploads %d): the test proved little", landed["download"], landed["upload"])
	}

	awaitWriters(t, writersDone, writerErr, 90*time.Second)
	t.Logf("writers done after %s", time.Since(began).Round(time.Millisecond))

	drained := func() bool {
		for _, ch := range chans {
			want, _ := ch.sum(perChannel)
			p := filepath.Join(inbox, ch.name())
			if readNo(p) != perChannel || fxFileSum(p) != want {
				return false
			}
		}
		return true
	}
	if !fxAwait(60*time.Second, drained) {
		for _, ch := range chans {
			t.Errorf("%s: ОП's FTP folder holds No %d, want %d", ch.name(), readNo(filepath.Join(inbox, ch.name())), perChannel)
		}
		t.FailNow()
	}
	t.Logf("drained after %s", time.Since(began).Round(time.Millisecond))

	cancel()
	<-checkerDone
	checker.report(t)

	// Outboxes empty; in ОП's folder only the two final messages, no temp
	// file (each name's last upload renamed its .part away).
	for _, ch := range chans {
		if left := fxMessageFiles(outDir(ch)); len(left) != 0 {
			t.Errorf("source left in %s: %v", outDir(ch), left)
		}
	}
	es, err := os.ReadDir(inbox)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if byName[e.Name()] == nil {
			t.Errorf("unexpected file in ОП's FTP folder: %s", e.Name())
		}
	}
	// Spool copies of downloads the kills interrupted: a leftover from
	// before the last start is never cleaned up.
	if ms, _ := filepath.Glob(spool.glob); len(ms) > 0 {
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil {
				t.Errorf("spool file left behind: %s (%d bytes, mtime %s, last start %s)", m, fi.Size(),
					fi.ModTime().Format(time.RFC3339Nano), lastStart.Format(time.RFC3339Nano))
			}
		}
	}

	var rows []statusRow
	waitFor(t, 15*time.Second, "relay status to answer", func() bool { return relayJSON(bin, s, &rows, "status") == nil })
	got := map[string]statusRow{}
	for _, r := range rows {
		got[r.From+"→"+r.To] = r
	}
	for _, ch := range chans {
		r, ok := got[ch.from+"→"+ch.to]
		switch {
		case !ok:
			t.Errorf("relay status has no channel %s → %s: %+v", ch.from, ch.to, rows)
		case r.DeliveredNo != perChannel || r.Dead != 0 || r.Superseded != 0:
			t.Errorf("relay status %s → %s: %+v, want delivered %d, nothing dead or superseded", ch.from, ch.to, r, perChannel)
		}
	}
	noDeadLetters(t, bin, s)
	t.Logf("total %s, %d relay starts", time.Since(began).Round(time.Millisecond), rp.starts)
}

// TestFTPBadInput: a node with a wrong FTP password, a node whose FTP pickup
// folder does not exist, and a junk file in a good node's FTP pickup. The
// failing endpoints show their trouble in /api/v1/nodes and nothing of
// theirs is deleted; other nodes keep flowing; the junk file becomes a dead
// letter with its payload before it is removed; `relay check` says OK and
// FAIL with a hint, and exits 1.
func TestFTPBadInput(t *testing.T) {
	const badEnv = "RELAY_E2E_FTP_WRONG_PASSWORD"
	bin := buildRelay(t)
	srv := startVsftpd(t, ftpOptions{TLS: "none"})
	t.Setenv(badEnv, srv.Password+"-wrong")
	fxMkdir(t, srv, "good/out")
	fxMkdir(t, srv, "bad/out")
	badPickup := fmt.Sprintf("{ %s, after: delete }", fxConn(srv, "bad/out", badEnv, "settle: 300ms", "poll_interval: 150ms", "incomplete_timeout: 10s"))
	badDeliver := "{ " + fxConn(srv, "bad/in", badEnv) + " }"
	s := newSite(t,
		nodeSpec{code: "GOOD", pickupYAML: fxPickup(srv, "good/out", "delete")},
		nodeSpec{code: "BADPW", pickupYAML: badPickup, deliverYAML: badDeliver},
		nodeSpec{code: "NOFOLDER", pickupYAML: fxPickup(srv, "missing/out", "delete")},
		nodeSpec{code: "D"})
	rn := s.start(t)

	// BADPW's outbox holds a message relay must not touch.
	badMsg := fxXML(t, header("BADPW", "D", 1, 0), 2000)
	srv.WriteFile(t, "bad/out/Message_BADPW_D.xml", badMsg)
	// D sends to BADPW: the delivery cannot log in.
	if _, err := exchangetest.WriteFile(s.out("D"), header("D", "BADPW", 1, 0), 1500, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}

	var nodes map[string]api.NodeView
	if !fxAwait(20*time.Second, func() bool {
		nodes = fxNodes(t, s)
		return nodes["BADPW"].PickupError != "" && nodes["BADPW"].DeliverError != "" && nodes["NOFOLDER"].PickupError != ""
	}) {
		t.Fatalf("endpoint errors not shown: BADPW %+v, NOFOLDER %+v", nodes["BADPW"], nodes["NOFOLDER"])
	}
	for _, e := range []struct{ what, got string }{{"BADPW pickup_error", nodes["BADPW"].PickupError}, {"BADPW deliver_error", nodes["BADPW"].DeliverError}} {
		if !strings.Contains(e.got, "login") || !strings.Contains(e.got, "530") {
			t.Errorf("%s = %q, want it to name the login step and the 530 reply", e.what, e.got)
		}
		if strings.Contains(e.got, srv.Password) {
			t.Errorf("%s shows the password: %q", e.what, e.got)
		}
	}
	if e := nodes["NOFOLDER"].PickupError; !strings.Contains(e, "missing/out") {
		t.Errorf("NOFOLDER pickup_error = %q, want it to name the folder missing/out", e)
	}
	t.Logf("BADPW: pickup_error %q; deliver_error %q", nodes["BADPW"].PickupError, nodes["BADPW"].DeliverError)
	t.Logf("NOFOLDER: pickup_error %q", nodes["NOFOLDER"].PickupError)
	if n := nodes["GOOD"]; n.PickupError != "" || n.DeliverError != "" {
		t.Errorf("GOOD shows errors: %+v", n)
	}

	// GOOD keeps flowing.
	good := fxXML(t, header("GOOD", "D", 1, 0), 4000)
	srv.WriteFile(t, "good/out/Message_GOOD_D.xml", good)
	waitFor(t, 15*time.Second, "GOOD→D delivered", func() bool {
		return fxFileSum(filepath.Join(s.in("D"), "Message_GOOD_D.xml")) == fxSum(good)
	})
	waitFor(t, 5*time.Second, "GOOD's source deleted", func() bool { return gone(filepath.Join(srv.Root, "good", "out", "Message_GOOD_D.xml")) })

	// Junk under a message name in GOOD's FTP pickup: a dead letter that
	// keeps the payload, and the file goes only after the letter exists.
	junk := []byte("This is not an exchange message: just a note someone left in the FTP folder.\n")
	junkName := "Message_GOOD_D.xml"
	junkSrc := filepath.Join(srv.Root, "good", "out", junkName)
	srv.WriteFile(t, "good/out/"+junkName, junk)
	deadline := time.Now().Add(15 * time.Second)
	var letters []pipeline.DeadLetter
	for {
		present := !gone(junkSrc)
		letters = fxDead(t, s)
		if !present && len(letters) == 0 {
			t.Fatalf("the junk file was deleted from the FTP folder before it was dead-lettered")
		}
		if !present && len(letters) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("junk file: present %v, dead letters %+v after 15s", present, letters)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(letters) != 1 {
		t.Fatalf("dead letters: %+v, want exactly the junk file", letters)
	}
	l := letters[0]
	if l.Stage != pipeline.StagePickup || l.Node != "GOOD" || l.FileName != junkName || l.Reason == "" || strings.Contains(l.Reason, "\n") || !strings.Contains(l.Source, "good/out") {
		t.Errorf("dead letter %+v: want stage pickup, node GOOD, file %s, source in good/out and a one-line reason", l, junkName)
	}
	t.Logf("junk dead letter reason: %s (source %s)", l.Reason, l.Source)
	if l.Object == "" || l.Size != int64(len(junk)) || (l.SHA256 != "" && l.SHA256 != fxSum(junk)) {
		t.Errorf("dead letter does not keep the payload: object %q, size %d (want %d), sha256 %q", l.Object, l.Size, len(junk), l.SHA256)
	} else if kept, err := rn.r.Bus().Payloads.GetBytes(context.Background(), l.Object); err != nil || !bytes.Equal(kept, junk) {
		t.Errorf("dead letter payload %s: %q, %v; want the junk file's bytes", l.Object, kept, err)
	}

	// Nothing of BADPW was deleted; the message for it waits.
	if got := fxFileSum(filepath.Join(srv.Root, "bad", "out", "Message_BADPW_D.xml")); got != fxSum(badMsg) {
		t.Errorf("BADPW's outbox message was touched (sha256 %q)", got)
	}
	if c := channel(t, s, "D", "BADPW"); c.DeliveredNo != 0 || c.Pending != 1 || c.Dead != 0 || c.LastError == "" {
		t.Errorf("D→BADPW: %+v, want pending 1 with an error", c)
	}
	if !gone(filepath.Join(srv.Root, "missing")) {
		t.Errorf("the missing pickup folder was created")
	}

	// relay check: one line per node, exit status 1.
	lines, output := relayCheck(t, bin, s)
	for _, code := range []string{"GOOD", "D"} {
		if f := strings.Fields(lines[code]); len(f) != 2 || f[1] != "OK" {
			t.Errorf("relay check line for %s: %q, want OK", code, lines[code])
		}
	}
	if l := lines["BADPW"]; !strings.Contains(l, "FAIL") || !strings.Contains(l, "530") || !strings.Contains(l, "hint: wrong user or password") {
		t.Errorf("relay check line for BADPW: %q, want FAIL with the 530 and the hint", l)
	}
	if l := lines["NOFOLDER"]; !strings.Contains(l, "FAIL") || !strings.Contains(l, "missing/out") || !strings.Contains(l, "hint: folder missing") {
		t.Errorf("relay check line for NOFOLDER: %q, want FAIL naming missing/out with a hint", l)
	}
	if strings.Contains(output, srv.Password) {
		t.Errorf("relay check output shows the password")
	}
}
