package k8s

// The HQ NATS cluster runs in operator (JWT) mode: nats.conf includes
// auth.conf from the Secret nats-auth, which an operator makes with nsc
// (deploy/k8s/README.md, "NATS credentials"). These tests make the same
// things in memory — an operator, a system account, the application account
// RELAY with JetStream, and users' .creds — and run the shipped nats.conf in
// an in-process nats-server on 127.0.0.1: the office's leaf node links with
// its credentials and reaches JetStream domain hq, a leaf node without them
// (or with a stranger's) is refused.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/relay1c/relay/bus"
)

// natsTrust is what nsc keeps for the deployment: the operator, and the
// account RELAY whose key signs the users.
type natsTrust struct {
	Account nkeys.KeyPair
	// AuthConf is nats.conf's auth.conf, as
	// `nsc generate config --mem-resolver --sys-account SYS` writes it.
	AuthConf string
}

// testTrust is made once per test binary: the stand-in auth.conf of every
// parsed nats.conf, and the signer of the live tests' users.
var testTrust = sync.OnceValues(func() (*natsTrust, error) {
	okp, err := nkeys.CreateOperator()
	if err != nil {
		return nil, err
	}
	opub, _ := okp.PublicKey()
	account := func(name string, js bool) (nkeys.KeyPair, string, string, error) {
		kp, err := nkeys.CreateAccount()
		if err != nil {
			return nil, "", "", err
		}
		pub, _ := kp.PublicKey()
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if js {
			// nsc edit account RELAY --js-mem-storage -1 --js-disk-storage -1 ...
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		tok, err := ac.Encode(okp)
		return kp, pub, tok, err
	}
	_, sysPub, sysJWT, err := account("SYS", false)
	if err != nil {
		return nil, err
	}
	appKP, appPub, appJWT, err := account("RELAY", true)
	if err != nil {
		return nil, err
	}
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "relay"
	oc.SystemAccount = sysPub
	otok, err := oc.Encode(okp)
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`// Operator "relay"
operator: %s

system_account: %s

resolver: MEMORY

resolver_preload: {
  // Account "SYS"
  %s: %s

  // Account "RELAY"
  %s: %s
}
`, otok, sysPub, sysPub, sysJWT, appPub, appJWT)
	return &natsTrust{Account: appKP, AuthConf: conf}, nil
})

// userCreds writes the .creds of a new user of account, as
// `nsc add user` + `nsc generate creds` make them, and returns its path.
func userCreds(t *testing.T, account nkeys.KeyPair, name string) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	tok, err := uc.Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(p, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// trustedCreds are a user of the deployment's account RELAY.
func trustedCreds(t *testing.T, name string) string {
	t.Helper()
	tr, err := testTrust()
	if err != nil {
		t.Fatal(err)
	}
	return userCreds(t, tr.Account, name)
}

// strangerCreds are well-formed credentials of an account nobody trusts.
func strangerCreds(t *testing.T) string {
	t.Helper()
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	return userCreds(t, akp, "stranger")
}

// hqServer starts one server with the shipped nats.conf (overlays/hq, its
// auth.conf the stand-in of testTrust) on 127.0.0.1 ports, without its
// cluster block (no routes to nats-N.nats): the JetStream domain, the leaf
// node port and the authentication are the file's.
func hqServer(t *testing.T) (*natsserver.Server, int) {
	t.Helper()
	n, err := built(t, dirHQ).nats()
	if err != nil || n == nil {
		t.Fatalf("nats: %v", err)
	}
	o := n.Opts
	o.ServerName = "nats-0"
	o.Host, o.Port = "127.0.0.1", -1
	o.HTTPPort = 0
	o.Cluster = natsserver.ClusterOpts{}
	o.Routes = nil
	o.LeafNode.Host, o.LeafNode.Port = "127.0.0.1", -1
	o.StoreDir = t.TempDir()
	o.PidFile = ""
	o.NoLog, o.NoSigs = true, true
	s, err := natsserver.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatal("hq server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s, o.LeafNode.Port
}

// leafLinked waits up to d for a leaf node connection on s.
func leafLinked(s *natsserver.Server, d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if s.NumLeafNodes() > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// TestOfficeLeafWithCredsReachesHQ: the office overlay's routing.yaml, run by
// the relay's own bus.Open with a user's .creds as nats.leaf.creds_file,
// links to a server running the shipped nats.conf and reaches JetStream
// domain hq (what the fetches between relays use), where the HQ relay —
// connected with its own .creds, as base/routing.yaml's nats.creds_file —
// made its stream.
func TestOfficeLeafWithCredsReachesHQ(t *testing.T) {
	hq, leafPort := hqServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The HQ relay's side: its nats settings, with the test server's address.
	hr, err := built(t, dirHQ).relay()
	if err != nil || hr == nil {
		t.Fatalf("relay: %v", err)
	}
	if hr.Cfg.NATS.CredsFile == "" {
		t.Fatal("the HQ relay has no nats.creds_file: it cannot connect to an operator-mode cluster")
	}
	if _, err := nats.Connect(hq.ClientURL()); err == nil {
		t.Fatal("a client without credentials connected to the shipped nats.conf")
	}
	nc, err := nats.Connect(hq.ClientURL(), nats.UserCredentials(trustedCreds(t, "hq")))
	if err != nil {
		t.Fatalf("the HQ relay's user: %v", err)
	}
	defer nc.Close()
	hjs, _ := jetstream.New(nc)
	if _, err := hjs.CreateStream(ctx, jetstream.StreamConfig{Name: bus.StreamExchange, Subjects: []string{"exchange.msg.>"}}); err != nil {
		t.Fatal(err)
	}

	// The office.
	r, err := built(t, dirOffice).relay()
	if err != nil || r == nil {
		t.Fatalf("relay: %v", err)
	}
	set := r.Cfg.NATSSettings()
	l := *set.Leaf
	// Whatever the overlay names (a user may have put the head office's
	// real address there): only 127.0.0.1 is dialled (found by review).
	u, err := url.Parse(l.URL)
	if err != nil || strings.Contains(l.URL, ",") {
		t.Fatalf("the office's leaf url %q: want one URL (%v)", l.URL, err)
	}
	u.Host = "127.0.0.1:" + strconv.Itoa(leafPort)
	l.URL = u.String()
	l.CredsFile = trustedCreds(t, "office1")
	set.Leaf = &l
	b, err := bus.Open(ctx, bus.Settings{NATS: set, DataDir: t.TempDir(), ID: r.Cfg.Relay.ID}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !leafLinked(hq, 15*time.Second) {
		t.Fatal("the office's leaf node, with trusted credentials, never linked to the shipped nats.conf")
	}
	js, err := jetstream.NewWithDomain(b.Conn, "hq")
	if err != nil {
		t.Fatal(err)
	}
	var ai *jetstream.AccountInfo
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if ai, err = js.AccountInfo(ctx); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("$JS.hq.API from the office: %v", err)
	}
	if ai.Domain != "hq" || ai.Streams != 1 {
		t.Fatalf("domain %q with %d streams, want hq with the HQ relay's 1", ai.Domain, ai.Streams)
	}
}

// TestLeafPortRefusesStrangers: nats-leaf is a LoadBalancer and the
// NetworkPolicy lets anyone reach 7422. A leaf node without credentials, or
// with well-formed credentials of an account the operator never signed, must
// not link — else it would get domain hq's whole JetStream API (list, read,
// purge or delete EXCHANGE and its payloads).
func TestLeafPortRefusesStrangers(t *testing.T) {
	cases := []struct {
		name  string
		creds func(t *testing.T) string
	}{
		{"no credentials", func(*testing.T) string { return "" }},
		{"credentials of an untrusted account", strangerCreds},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hq, leafPort := hqServer(t)
			u, _ := url.Parse("nats-leaf://127.0.0.1:" + strconv.Itoa(leafPort))
			rogue, err := natsserver.NewServer(&natsserver.Options{
				ServerName: "stranger", DontListen: true, NoLog: true, NoSigs: true,
				JetStream: true, JetStreamDomain: "stranger", StoreDir: t.TempDir(),
				LeafNode: natsserver.LeafNodeOpts{
					ReconnectInterval: 100 * time.Millisecond,
					Remotes:           []*natsserver.RemoteLeafOpts{{URLs: []*url.URL{u}, Credentials: c.creds(t)}},
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			go rogue.Start()
			if !rogue.ReadyForConnections(20 * time.Second) {
				t.Fatal("the stranger's server did not start")
			}
			defer func() { rogue.Shutdown(); rogue.WaitForShutdown() }()
			// Several reconnect attempts: each is refused.
			if leafLinked(hq, 2*time.Second) {
				t.Fatalf("a leaf node with %s linked to the shipped nats.conf: it reaches $JS.hq.API", c.name)
			}
			if rogue.NumLeafNodes() != 0 {
				t.Fatal("the stranger's server reports a leaf connection")
			}
		})
	}
}
