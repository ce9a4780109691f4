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
// the relay binary the tests share.
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
	if built.dir != "" {
		os.RemoveAll(built.dir)
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

// built is the relay binary the tests share, built by the first that asks.
var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// buildRelay builds ./cmd/relay once for the package's tests and returns
// the binary.
func buildRelay(t testing.TB) string {
	t.Helper()
	root := moduleRoot(t)
	built.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			built.err = fmt.Errorf("no go on PATH: %w", err)
			return
		}
		if built.dir, err = os.MkdirTemp("", "relay-e2e-bin-"); err != nil {
			built.err = err
			return
		}
		bin := filepath.Join(built.dir, "relay")
		if runtime.GOOS == "windows" {
			bin += ".exe"
		}
		cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/relay")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("%w\n%s", err, out)
			return
		}
		built.bin = bin
	})
	if built.err != nil {
		t.Fatalf("go build ./cmd/relay: %v", built.err)
	}
	return built.bin
}
