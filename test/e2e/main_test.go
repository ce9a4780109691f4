package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/relay1c/relay/test/realserver"
)

// TestMain puts the test servers' fixed secrets where the relays under
// test read them (their routing.yaml names these variables): in-process
// relays read the process's environment, child processes inherit it. Set
// once here rather than with t.Setenv in each test, because t.Setenv is
// refused in tests that run side by side (see sideBySide). It also removes
// the binaries the tests share.
func TestMain(m *testing.M) {
	for name, value := range map[string]string{
		fxPasswordEnv: realserver.FTPPassword,
		mxPasswordEnv: realserver.MailPassword,
		hxPasswordEnv: realserver.NginxPassword,
		mobTokenEnv:   mobToken,
	} {
		if err := os.Setenv(name, value); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: set %s: %v\n", name, err)
			os.Exit(2)
		}
	}
	code := m.Run()
	if binDir.path != "" {
		os.RemoveAll(binDir.path)
	}
	os.Exit(code)
}

// sideBySide lets a test that mostly waits (a killed relay's 30 s ack
// wait, a server's outage) run beside the others that do. Only on the
// embedded NATS: there every relay has a server of its own, while on one
// shared nats-server their streams and keys would have the same names.
func sideBySide(t *testing.T) {
	if natsURL() == "" {
		t.Parallel()
	}
}

// binDir holds the binaries the tests build, removed by TestMain.
var binDir struct {
	once sync.Once
	path string
	err  error
}

// binary is one built binary, built by the first test that asks for it.
type binary struct {
	once sync.Once
	bin  string
	err  error
}

var (
	relayBinary binary // ./cmd/relay
	natsBinary  binary // the nats-server the cluster tests run (see clusterServer)
)

// build builds pkg (a path in this module, or a package of a module it
// requires, at the version go.mod names) once for the package's tests and
// returns the binary.
func (b *binary) build(t testing.TB, pkg, name string) string {
	t.Helper()
	root := moduleRoot(t)
	b.once.Do(func() {
		binDir.once.Do(func() { binDir.path, binDir.err = os.MkdirTemp("", "relay-e2e-bin-") })
		if b.err = binDir.err; b.err != nil {
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("no go on PATH: %w", err)
			return
		}
		bin := filepath.Join(binDir.path, name)
		if runtime.GOOS == "windows" {
			bin += ".exe"
		}
		cmd := exec.Command(goBin, "build", "-o", bin, pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("%w\n%s", err, out)
			return
		}
		b.bin = bin
	})
	if b.err != nil {
		t.Fatalf("go build %s: %v", pkg, b.err)
	}
	return b.bin
}

// buildRelay builds ./cmd/relay once for the package's tests and returns
// the binary.
func buildRelay(t testing.TB) string {
	t.Helper()
	return relayBinary.build(t, "./cmd/relay", "relay")
}
