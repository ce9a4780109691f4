package bus

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/realserver"
)

// trust is an operator with a system account and one application account
// (JetStream enabled), as `nsc` would make them, signed in memory.
type trust struct {
	t        *testing.T
	operator *jwt.OperatorClaims
	sysPub   string
	accounts *server.MemAccResolver
	appKey   nkeys.KeyPair
}

func newTrust(t *testing.T) *trust {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, err := okp.PublicKey()
	must(err)
	account := func(name string, js bool) (nkeys.KeyPair, string, string) {
		kp, err := nkeys.CreateAccount()
		must(err)
		pub, err := kp.PublicKey()
		must(err)
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		tok, err := ac.Encode(okp)
		must(err)
		return kp, pub, tok
	}
	_, sysPub, sysJWT := account("SYS", false)
	appKey, appPub, appJWT := account("APP", true)
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "test"
	oc.SystemAccount = sysPub
	otok, err := oc.Encode(okp)
	must(err)
	operator, err := jwt.DecodeOperatorClaims(otok)
	must(err)
	accounts := &server.MemAccResolver{}
	must(accounts.Store(sysPub, sysJWT))
	must(accounts.Store(appPub, appJWT))
	return &trust{t: t, operator: operator, sysPub: sysPub, accounts: accounts, appKey: appKey}
}

// creds writes a credentials file for a new user of account (signed by its
// key) and returns its path.
func (tr *trust) creds(account nkeys.KeyPair, name string) string {
	t := tr.t
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	seed, _ := ukp.Seed()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	tok, err := uc.Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// hub is a head office server in operator mode: JetStream domain hq, a leaf
// port that only users of the trusted accounts may connect to.
func (tr *trust) hub() (ns *server.Server, leafURL string) {
	t := tr.t
	t.Helper()
	ns, leafURL, err := realserver.StartHub(t.TempDir(), func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{tr.operator}
		o.SystemAccount = tr.sysPub
		o.AccountResolver = tr.accounts
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns, leafURL
}

// nats.creds_file and nats.leaf.creds_file against a head office that
// requires JWT credentials: the head office relay connects with its user's
// creds, the office's leaf node with another user's, and the office reaches
// the head office's JetStream domain through the leaf. A leaf whose creds
// the head office does not trust is refused.
func TestLeafWithCreds(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr := newTrust(t)
	hub, leafURL := tr.hub()

	hq, err := Open(ctx, Settings{NATS: config.NATS{URL: hub.ClientURL(), CredsFile: tr.creds(tr.appKey, "hq")}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hq.Close)

	office, err := Open(ctx, Settings{
		NATS: config.NATS{Leaf: &config.Leaf{URL: leafURL, CredsFile: tr.creds(tr.appKey, "office1")}}, DataDir: t.TempDir(), ID: "office1",
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(office.Close)
	var remote *Bus
	for deadline := time.Now().Add(20 * time.Second); ; {
		if remote, err = Remote(ctx, office.Conn, "hq"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("head office domain not reachable through the leaf with creds (leaf nodes at the hub: %d): %v", hub.NumLeafNodes(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if info, err := remote.Exchange.Info(ctx); err != nil || info.Config.Name != StreamExchange {
		t.Fatalf("head office EXCHANGE through the leaf: %+v, %v", info, err)
	}

	// Creds of an account the hub does not know: refused.
	strangerKey, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(ctx, Settings{
		NATS: config.NATS{Leaf: &config.Leaf{URL: leafURL, CredsFile: tr.creds(strangerKey, "stranger")}}, DataDir: t.TempDir(), ID: "office2",
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	time.Sleep(3 * time.Second)
	if n := hub.NumLeafNodes(); n != 1 {
		t.Fatalf("%d leaf nodes at the hub, want 1: a leaf with untrusted creds got in", n)
	}
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	defer rcancel()
	if _, err := Remote(rctx, other.Conn, "hq"); err == nil {
		t.Fatal("the head office domain is reachable from a leaf with untrusted creds")
	}
}

// A leaf creds file that is missing, not a credentials file or too large
// stops the start with its reason, rather than an office that never links.
func TestLeafCredsChecked(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tr := newTrust(t)
	good := tr.creds(tr.appKey, "office1")
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	jwtOnly := bytes.SplitAfter(raw, []byte("------END NATS USER JWT------"))[0]
	for _, c := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope.creds"), "no such file"},
		{"garbage", write("garbage.creds", []byte("password=secret\n")), "no user JWT"},
		{"jwt without seed", write("jwt.creds", jwtOnly), "no nkey seed"},
		{"too large", write("big.creds", bytes.Repeat([]byte("x"), maxCredsSize+1)), "not a credentials file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Open(context.Background(), Settings{
				NATS: config.NATS{Leaf: &config.Leaf{URL: "nats-leaf://127.0.0.1:1", CredsFile: c.path}}, DataDir: t.TempDir(), ID: "office1",
			}, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), "nats.leaf.creds_file: ") || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Open = %v; want one line naming nats.leaf.creds_file and %q", err, c.want)
			}
		})
	}
	if err := checkCreds(good); err != nil {
		t.Fatalf("a real creds file refused: %v", err)
	}
}

// nats.user with nats.password_env, and nats.token_env, log in to an
// external server with user/password or token accounts, the secret read
// from the environment (credentials in nats.url are refused by validate);
// a variable that is not set stops the start with its name.
func TestExternalUserAndToken(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Setenv("RELAY_TEST_NATS_PW", "s3cret")
	t.Setenv("RELAY_TEST_NATS_TOKEN", "t0ken")
	for _, c := range []struct {
		name string
		opts func(*server.Options)
		nats config.NATS
	}{
		{"user", func(o *server.Options) { o.Users = []*server.User{{Username: "relay", Password: "s3cret"}} },
			config.NATS{User: "relay", PasswordEnv: "RELAY_TEST_NATS_PW"}},
		{"token", func(o *server.Options) { o.Authorization = "t0ken" }, config.NATS{TokenEnv: "RELAY_TEST_NATS_TOKEN"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns, _, err := realserver.StartHub(t.TempDir(), c.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
			c.nats.URL = ns.ClientURL()
			b, err := Open(ctx, Settings{NATS: c.nats, ID: "hq"}, log)
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
		})
	}
	// A wrong token: the client gives up after the second refusal, and
	// the start says why at once, not "no server reachable" after 30 s
	// (found by review).
	ns, _, err := realserver.StartHub(t.TempDir(), func(o *server.Options) { o.Authorization = "other" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	began := time.Now()
	_, err = Open(ctx, Settings{NATS: config.NATS{URL: ns.ClientURL(), TokenEnv: "RELAY_TEST_NATS_TOKEN"}, ID: "hq"}, log)
	if err == nil || !strings.Contains(err.Error(), "Authorization Violation") || time.Since(began) > 15*time.Second {
		t.Fatalf("a wrong token: %v after %s, want the refusal at once", err, time.Since(began).Round(time.Millisecond))
	}
	_, err = Open(ctx, Settings{NATS: config.NATS{URL: "nats://127.0.0.1:1", User: "relay", PasswordEnv: "RELAY_TEST_NATS_UNSET"}, ID: "hq"}, log)
	if err == nil || !strings.Contains(err.Error(), "RELAY_TEST_NATS_UNSET is not set") {
		t.Fatalf("unset password variable: %v", err)
	}
}

// TestExternalConnectStopsWithCtx proves that the wait for a first
// connection to an unreachable external server ends with ctx (the relay's
// SIGTERM): it held the start-up for its full 30 s.
func TestExternalConnectStopsWithCtx(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		_, err := Open(ctx, Settings{NATS: config.NATS{URL: "nats://127.0.0.1:1"}, ID: "hq"}, log)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "before stopping") || !errors.Is(err, context.Canceled) {
			t.Fatalf("Open after ctx ended: %v, want the cancellation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open still waiting for a server 10 s after its ctx ended")
	}
}

// TestLeafTLSErrorNamesLeafKey: a missing nats.leaf.tls.ca_file is named
// as such (found by review: the error named nats.tls.ca_file, a section
// an office relay does not have).
func TestLeafTLSErrorNamesLeafKey(t *testing.T) {
	opts := &server.Options{}
	missing := filepath.Join(t.TempDir(), "ca.pem")
	err := leafOptions(opts, &config.Leaf{URL: "tls://hub.example:7422", TLS: &config.TLS{CAFile: missing}}, "office1")
	if err == nil {
		t.Fatal("leafOptions accepted a missing ca_file")
	}
	if !strings.Contains(err.Error(), "nats.leaf.tls.ca_file") {
		t.Errorf("error %q does not name nats.leaf.tls.ca_file", err)
	}
}
