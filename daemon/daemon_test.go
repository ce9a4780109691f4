package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/relay1c/relay/config"
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
	yaml := "relay: { id: office1, data_dir: ./data }\n" +
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
