// Package bus opens the NATS that carries exchange messages — an embedded
// server on the relay's data directory, or an external cluster — and lays out
// the JetStream names fixed by DESIGN.md §3.
package bus

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/config"
)

// JetStream names (part of the contract, DESIGN.md §3).
const (
	// StreamExchange holds one small record per exchange message.
	StreamExchange = "EXCHANGE"
	// SubjectPrefix is followed by <plan>.<from>.<to>, each an encoded Token.
	SubjectPrefix = "exchange.msg."
	// BucketPayloads is the object store holding message bodies (claim check).
	BucketPayloads = "EXCHANGE_PAYLOADS"
	// BucketChannels is the KV bucket holding each channel's state.
	BucketChannels = "EXCHANGE_CHANNELS"
	// StreamDead holds dead letters with their reason.
	StreamDead = "EXCHANGE_DEAD"
	// DeadSubjectPrefix is followed by the encoded node the dead letter concerns.
	DeadSubjectPrefix = "exchange.dead."
	// BucketTaken remembers what `after: keep` pickups already took, and the
	// mail sets an IMAP pickup took whole.
	BucketTaken = "EXCHANGE_TAKEN"
	// BucketLeases holds the leases of a shared NATS: which replica runs a
	// pickup or fetch, which delivers a channel right now. Entries expire
	// after the lease TTL unless renewed.
	BucketLeases = "EXCHANGE_LEASES"
	// StreamEvents keeps every step of every message for `relay trace`,
	// for EventsMaxAge or EventsMaxBytes, whichever ends first.
	StreamEvents = "EXCHANGE_EVENTS"
	// EventSubjectPrefix is followed by a hash of the message id.
	EventSubjectPrefix = "exchange.event."
)

// Retention of EXCHANGE_EVENTS.
const (
	EventsMaxAge   = 7 * 24 * time.Hour
	EventsMaxBytes = 256 << 20
)

// DuplicateWindow is how long a Nats-Msg-Id is remembered, so a file picked up
// again after a crash (before its source was committed) is dropped.
const DuplicateWindow = 24 * time.Hour

// Token encodes a node code or plan name as one NATS subject token that is
// also a valid consumer name and KV key: [A-Za-z0-9_-] stay, every other byte
// becomes =XX (hex). The encoding is injective, so tokens never collide. It
// is config.Token, with which routing.yaml's check measures the NATS names a
// node code makes.
func Token(s string) string { return config.Token(s) }

// Untoken reverses Token.
func Untoken(t string) (string, error) {
	if t == "=" {
		return "", nil
	}
	var b strings.Builder
	for i := 0; i < len(t); i++ {
		if t[i] != '=' {
			b.WriteByte(t[i])
			continue
		}
		if i+2 >= len(t) {
			return "", fmt.Errorf("token %q: short escape", t)
		}
		v, err := strconv.ParseUint(t[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("token %q: bad escape: %w", t, err)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// Subject is the EXCHANGE subject of a channel.
func Subject(plan, from, to string) string {
	return SubjectPrefix + Token(plan) + "." + Token(from) + "." + Token(to)
}

// DeliverSubjects is the filter of the node's delivery consumer: every
// channel whose To is the node.
func DeliverSubjects(node string) string {
	return SubjectPrefix + "*.*." + Token(node)
}

// ConsumerName is the durable delivery consumer of a node in the JetStream
// domain of relay id. Named for the domain too: an ack's subject
// ($JS.ACK.<stream>.<consumer>...) names no domain and crosses leaf links,
// so that an office's ack of its deliver_<node> record N also acked record
// N of the head office's consumer of that name, pending there, which was
// then never offered again (found by review).
func ConsumerName(relay, node string) string { return ConsumerFor("deliver", node, relay) }

// ConsumerFor is the name of the durable consumer of kind (deliver, fetch)
// reading node's records in the JetStream domain of relay id.
func ConsumerFor(kind, node, relay string) string {
	return kind + "_" + Token(node) + "@" + Token(relay)
}

// LegacyConsumerFor is the name a consumer had before it named its domain
// (ConsumerName): EnsureConsumer takes it over.
func LegacyConsumerFor(kind, node string) string { return kind + "_" + Token(node) }

// EnsureConsumer creates or updates the durable consumer cfg on stream,
// taking over from the consumer of the name legacy (none: "") when there
// is one: the new one starts after the records legacy acked up to its ack
// floor (the records acked above it are offered once more, and judged as
// resolved by the channel states), and legacy is removed, or it would hold
// back the removal of done records. A consumer made before keeps where it
// starts (JetStream cannot change it).
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, legacy string) (jetstream.Consumer, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	var c jetstream.Consumer
	for try := 0; ; try++ {
		c, err = ensureConsumer(ctx, s, cfg, legacy)
		if err == nil || try == 2 || ctx.Err() != nil {
			break
		}
		// Another worker or replica took legacy over meanwhile: bind
		// to what it made.
	}
	if err != nil {
		return nil, err
	}
	if legacy != "" {
		if err := s.DeleteConsumer(ctx, legacy); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("remove consumer %s (now %s): %w", legacy, cfg.Durable, err)
		}
	}
	return c, nil
}

func ensureConsumer(ctx context.Context, s jetstream.Stream, cfg jetstream.ConsumerConfig, legacy string) (jetstream.Consumer, error) {
	have, err := s.Consumer(ctx, cfg.Durable)
	switch {
	case err == nil:
		hc := have.CachedInfo().Config
		cfg.DeliverPolicy, cfg.OptStartSeq = hc.DeliverPolicy, hc.OptStartSeq
		if v, ok := hc.Metadata[metaOfferedUpTo]; ok {
			setOfferedUpTo(&cfg, v)
		}
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, err
	case legacy != "":
		old, err := s.Consumer(ctx, legacy)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		info := old.CachedInfo()
		if floor := info.AckFloor.Stream; floor > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
		}
		if upto := info.Delivered.Stream; upto > info.AckFloor.Stream {
			setOfferedUpTo(&cfg, strconv.FormatUint(upto, 10))
		}
	}
	return s.CreateOrUpdateConsumer(ctx, cfg)
}

// setOfferedUpTo puts v in cfg's metadata as metaOfferedUpTo, on a copy of
// the caller's map.
func setOfferedUpTo(cfg *jetstream.ConsumerConfig, v string) {
	cfg.Metadata = maps.Clone(cfg.Metadata)
	if cfg.Metadata == nil {
		cfg.Metadata = map[string]string{}
	}
	cfg.Metadata[metaOfferedUpTo] = v
}

// metaOfferedUpTo is the consumer metadata naming the last record the
// consumer it took over had offered (OfferedUpTo).
const metaOfferedUpTo = "relay_offered_upto"

// OfferedUpTo is, for a consumer that took an older one over
// (EnsureConsumer), the stream sequence of the last record the old one
// offered, 0 for none: a record up to it offered for the first time by
// the new one was offered before, and most likely resolved. (Consumer
// metadata needs nats-server 2.10; an older one keeps none: 0.)
func OfferedUpTo(info *jetstream.ConsumerInfo) uint64 {
	if info == nil {
		return 0
	}
	n, _ := strconv.ParseUint(info.Config.Metadata[metaOfferedUpTo], 10, 64)
	return n
}

// ChannelKey is the EXCHANGE_CHANNELS key of a channel.
func ChannelKey(plan, from, to string) string {
	return Token(plan) + "." + Token(from) + "." + Token(to)
}

// Bus is an open NATS connection with the exchange layout provisioned.
type Bus struct {
	// Conn is the NATS connection (in-process for the embedded server).
	Conn *nats.Conn
	// JS is the JetStream API on Conn.
	JS jetstream.JetStream
	// Exchange, Dead, Events are the streams.
	Exchange, Dead, Events jetstream.Stream
	// Payloads stores message bodies.
	Payloads jetstream.ObjectStore
	// payloadStream is the object store's stream, read chunk by chunk by OpenPayload.
	payloadStream jetstream.Stream
	// Channels stores channel state.
	Channels jetstream.KeyValue
	// Taken remembers kept pickups.
	Taken jetstream.KeyValue
	// Leases holds the leases of replicas sharing an external NATS.
	Leases jetstream.KeyValue

	server   *server.Server
	log      *slog.Logger
	replicas int
	leaseTTL time.Duration
	leaf     bool
	// markEvery is how often a long put rewrites its partial-put marker,
	// so that SweepPartial's age means "idle for" (0: markRefresh).
	markEvery time.Duration
	// lost is closed, lostErr set first, when nats.go closes the main
	// connection for good; closing says Close asked for it.
	lost     chan struct{}
	lostOnce sync.Once
	lostErr  error
	closing  atomic.Bool
}

// Settings say which NATS to open and how to lay it out.
type Settings struct {
	// NATS is routing.yaml's nats section.
	NATS config.NATS
	// DataDir holds the embedded server's store.
	DataDir string
	// ID is the relay id: the embedded server's name and, as a leaf node,
	// its JetStream domain.
	ID string
	// LeaseTTL is how long an unrenewed lease lasts (EXCHANGE_LEASES' TTL).
	LeaseTTL time.Duration
	// ConnectWait bounds the wait for the first connection to an external
	// NATS (0: 30 s).
	ConnectWait time.Duration
	// provisionTry bounds each try of Open's provisioning (0:
	// provisionTry); tests shorten it.
	provisionTry time.Duration
}

// Open starts the embedded server (NATS.URL empty) or connects to NATS.URL,
// then creates or updates every stream and bucket. It is idempotent.
func Open(ctx context.Context, set Settings, log *slog.Logger) (*Bus, error) {
	cfg, id := set.NATS, set.ID
	b := &Bus{log: log, replicas: max(cfg.Replicas, 1), leaseTTL: set.LeaseTTL, leaf: cfg.Leaf != nil, lost: make(chan struct{})}
	if b.leaseTTL <= 0 {
		b.leaseTTL = config.DefaultLeaseTTL
	}
	var err error
	if cfg.URL == "" {
		b.server, err = startEmbedded(ctx, cfg, set.DataDir, id, log)
		if err != nil {
			return nil, err
		}
		b.Conn, err = nats.Connect("", nats.InProcessServer(b.server), nats.Name("relay-"+id), nats.MaxReconnects(-1))
	} else {
		b.Conn, err = connectExternal(ctx, cfg, id, cmp.Or(set.ConnectWait, connectWait), log, nats.ClosedHandler(b.closed))
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("nats: connect: %w", err)
	}
	if b.server != nil {
		go b.watchJetStream(jetStreamWatch)
	} else {
		// A reconnect, of this connection or of a lane (they copy its
		// options), may land on another server: one too old stops relay
		// as a refusal at start would (see Lost), and the connection to
		// it closes at once, so that nothing more is written there.
		// (Set before the check, so that no reconnect slips between.)
		reconnected := b.Conn.Opts.ReconnectedCB
		b.Conn.SetReconnectHandler(func(nc *nats.Conn) {
			if reconnected != nil {
				reconnected(nc)
			}
			if b.closing.Load() {
				return
			}
			if err := b.serverReady(nc); err != nil {
				b.lose(err)
				nc.Close()
			}
		})
		if err := b.serverReady(b.Conn); err != nil {
			b.Close()
			return nil, err
		}
	}
	// Provisioning is idempotent, so after a request that got no answer it
	// starts again. Two relays creating the streams of a new cluster side by
	// side (nats-server 2.9.10, three servers) get no answer to any stream
	// create that overlaps the other's, although the stream is made: each
	// try gets one stream further, about 30 s for all of them.
	//
	// A connection whose reply inbox the server lost (its interest gone
	// from a server under route churn, nats-server#5738) gets no answer to
	// any request, however often it asks: from the second try in a row
	// with no answer on, an external server's connection is made again
	// before the next try, which re-sends its subscriptions, the reply
	// inbox among them. (The embedded server is in process: nothing to
	// lose there.) The new connection passes serverReady as any
	// reconnect does; the requests of the next try wait in nats.go's
	// reconnect buffer meanwhile. Each try has its own time
	// (provisionTry): under a caller's deadline the first unanswered
	// request would wait until it, leaving no time for another try.
	unansweredBefore := false
	try := cmp.Or(set.provisionTry, provisionTry)
	_, err = backoff.Retry(ctx, func() (struct{}, error) {
		tctx, cancel := context.WithTimeout(ctx, try)
		defer cancel()
		err := b.provision(tctx)
		if err != nil && !unanswered(ctx, err) {
			return struct{}{}, backoff.Permanent(err)
		}
		if err != nil && unansweredBefore && b.server == nil {
			log.Warn("nats: no answer twice; reconnecting to re-send subscriptions", "err", err)
			if rerr := b.Conn.ForceReconnect(); rerr != nil {
				log.Warn("nats: reconnect", "err", rerr)
			}
		}
		unansweredBefore = err != nil
		return struct{}{}, err
	},
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 500 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 5 * time.Second}),
		backoff.WithMaxElapsedTime(2*time.Minute),
		backoff.WithNotify(func(err error, wait time.Duration) {
			log.Warn("nats: creating streams and buckets got no answer; trying again", "err", err, "retry_in", wait.Round(time.Millisecond))
		}))
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// provisionTry bounds one try of Open's provisioning: far longer than a
// cluster takes to make a stream (seconds), short enough for three tries
// in the two minutes Open keeps trying.
const provisionTry = 20 * time.Second

// minClusterVersion is the oldest nats-server relay runs on with replicas
// > 1. Before it, a clustered stream checked a write's expected revision
// ahead of the write's consensus, so two compare-and-set writes made on the
// same revision both succeeded (nats-server#4320, fixed in 2.9.21; relay
// now works around it, see serialKV), and a server restarting after a crash
// replayed a purge by subject as a purge of the whole stream up to that
// point (#4196, fixed in 2.9.18, more cases in 2.9.21 by #4357): relay
// purges by subject after every delivery, so a crashed server lost every
// message and payload stored before, for good. Debian 12 ships 2.9.10.
var minClusterVersion = [3]int{2, 9, 21}

// serverReady refuses the server nc is connected to when it is too old
// for this relay's replicas (clusterReady), naming it: in a cluster being
// upgraded, the one still to do.
func (b *Bus) serverReady(nc *nats.Conn) error {
	if err := clusterReady(nc.ConnectedServerVersion(), b.replicas); err != nil {
		return fmt.Errorf("nats: server %s (%s) %w", nc.ConnectedServerName(), nc.ConnectedUrlRedacted(), err)
	}
	return nil
}

// clusterReady refuses a server older than minClusterVersion for
// replicated streams. version is what the server says it runs; one that
// does not parse passes.
func clusterReady(version string, replicas int) error {
	if replicas <= 1 {
		return nil
	}
	var v [3]int
	core, _, _ := strings.Cut(strings.TrimPrefix(version, "v"), "+") // build metadata
	core, _, _ = strings.Cut(core, "-")                              // pre-release
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return nil
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil
		}
		v[i] = n
	}
	if slices.Compare(v[:], minClusterVersion[:]) >= 0 {
		return nil
	}
	return fmt.Errorf("runs nats-server %s; with replicas %d relay needs %d.%d.%d or later: "+
		"an older server that crashes loses the messages stored before relay's last purge (nats-server#4196), "+
		"and two writes of a channel's state can both succeed (#4320); upgrade every server of the cluster",
		version, replicas, minClusterVersion[0], minClusterVersion[1], minClusterVersion[2])
}

// unanswered says a JetStream API request timed out while ctx still runs.
func unanswered(ctx context.Context, err error) bool {
	return ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout))
}

func startEmbedded(ctx context.Context, cfg config.NATS, dataDir, id string, log *slog.Logger) (*server.Server, error) {
	store := filepath.Join(dataDir, "jetstream")
	if err := os.MkdirAll(store, 0o750); err != nil {
		return nil, fmt.Errorf("nats: data dir: %w", err)
	}
	opts := &server.Options{
		ServerName:         "relay-" + id,
		JetStream:          true,
		StoreDir:           store,
		NoSigs:             true,
		NoLog:              true,
		DontListen:         true,
		MaxPayload:         1 << 20,
		JetStreamMaxMemory: 64 << 20,
	}
	if cfg.Leaf != nil {
		if err := leafOptions(opts, cfg.Leaf, id); err != nil {
			return nil, err
		}
	}
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("nats.listen: %w", err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats.listen: port %q: %w", port, err)
		}
		opts.DontListen = false
		opts.Host, opts.Port = host, p
	}
	if always, every, ok := cfg.SyncInterval(); ok {
		opts.SyncAlways, opts.SyncInterval = always, every
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats: embedded server: %w", err)
	}
	srvLog := newServerLog(log)
	ns.SetLoggerV2(srvLog, false, false, false)
	go ns.Start()
	deadline := time.Now().Add(embeddedStartWait)
	for !ns.ReadyForConnections(100 * time.Millisecond) {
		fail := func(err error) (*server.Server, error) {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, err
		}
		select {
		case msg := <-srvLog.fatal:
			return fail(fmt.Errorf("nats: embedded server: %s (store %s)", msg, store))
		case <-ctx.Done():
			return fail(fmt.Errorf("nats: embedded server not started before stopping: %w", context.Cause(ctx)))
		default:
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("nats: embedded server on %s did not start within %s", store, embeddedStartWait))
		}
	}
	return ns, nil
}

// embeddedStartWait bounds the embedded server's start (recovering a big
// store takes a while); what stops it for good ends the wait at once.
const embeddedStartWait = 30 * time.Second

// LeafDeny are the subjects that never cross the leaf connection, either
// way. The remote cluster has streams and buckets of the same names and
// subjects (in its own JetStream domain); letting a publish cross would store
// it twice, once without its payload. Messages move between domains only by
// a relay fetching them through the JetStream API ($JS.<domain>.API), which
// stays open.
var LeafDeny = []string{"exchange.>", "$O.>", "$KV.>"}

// leafOptions makes the embedded server a leaf node of l.URL with its own
// JetStream domain named after the relay: it stores everything locally and
// keeps working while the link is down.
func leafOptions(opts *server.Options, l *config.Leaf, id string) error {
	var urls []*url.URL
	for _, one := range l.URLs() {
		u, err := url.Parse(one)
		if err != nil {
			return fmt.Errorf("nats.leaf.url: %w", err)
		}
		urls = append(urls, u)
	}
	if l.CredsFile != "" {
		// The server reads the file at each connection attempt and only
		// logs a failure: an office whose path is wrong would run without
		// ever linking. Say so at start.
		if err := checkCreds(l.CredsFile); err != nil {
			return fmt.Errorf("nats.leaf.creds_file: %w", err)
		}
	}
	remote := &server.RemoteLeafOpts{
		URLs:        urls,
		Credentials: l.CredsFile,
		DenyImports: LeafDeny,
		DenyExports: LeafDeny,
	}
	if l.TLS != nil || urls[0].Scheme == "tls" || urls[0].Scheme == "wss" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if l.TLS != nil {
			var err error
			if tc, err = clientTLS("nats.leaf.tls", l.TLS); err != nil {
				return err
			}
		}
		remote.TLS, remote.TLSConfig = true, tc
	}
	opts.JetStreamDomain = id
	opts.LeafNode.Remotes = []*server.RemoteLeafOpts{remote}
	opts.LeafNode.ReconnectInterval = 2 * time.Second
	return nil
}

// maxCredsSize bounds a credentials file (a user JWT and a seed: ~1 KB).
const maxCredsSize = 64 << 10

// checkCreds proves path a readable NATS credentials file: a user JWT and
// an nkey seed.
func checkCreds(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCredsSize+1))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxCredsSize {
		return fmt.Errorf("%s: more than %d bytes, not a credentials file", path, maxCredsSize)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err == nil {
		_, err = jwt.DecodeUserClaims(tok)
	}
	if err != nil {
		return fmt.Errorf("%s: no user JWT: %w", path, err)
	}
	if _, err := jwt.ParseDecoratedNKey(b); err != nil {
		return fmt.Errorf("%s: no nkey seed: %w", path, err)
	}
	return nil
}

func connectExternal(ctx context.Context, cfg config.NATS, id string, wait time.Duration, log *slog.Logger, more ...nats.Option) (*nats.Conn, error) {
	// Why the latest try to connect failed: a dial's error reaches only
	// this handler, a TLS handshake's only LastError.
	var tryErr atomic.Pointer[error]
	opts := []nats.Option{
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				tryErr.Store(&err)
			}
		}),
		nats.Name("relay-" + id),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			// nil: closed, by relay at a stop, or by nats.go for good
			// after a server error (the main connection's Lost tells
			// that; a lane's requests fail with "connection closed").
			// LastError is no help: it keeps an old error (a slow
			// consumer, a refused permission) through a clean close.
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
	}
	opts = append(opts, more...)
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.User != "" {
		pw := os.Getenv(cfg.PasswordEnv)
		if pw == "" {
			return nil, fmt.Errorf("nats.password_env: %s is not set", cfg.PasswordEnv)
		}
		opts = append(opts, nats.UserInfo(cfg.User, pw))
	}
	if cfg.TokenEnv != "" {
		tok := os.Getenv(cfg.TokenEnv)
		if tok == "" {
			return nil, fmt.Errorf("nats.token_env: %s is not set", cfg.TokenEnv)
		}
		opts = append(opts, nats.Token(tok))
	}
	if cfg.TLS != nil {
		tc, err := clientTLS("nats.tls", cfg.TLS)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, err
	}
	// RetryOnFailedConnect returns at once; wait a bounded time for the
	// first connection, and no longer than ctx (a SIGTERM while the
	// server is unreachable stops the relay at once).
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("no server reached at %s before stopping: %w", cfg.URL, context.Cause(ctx))
		case <-deadline.C:
			why := nc.LastError()
			if p := tryErr.Load(); why == nil && p != nil {
				why = *p
			}
			nc.Close()
			if why != nil {
				// A server that answers but fails the TLS handshake is
				// not a firewall problem (found by review).
				return nil, fmt.Errorf("no server reached at %s within %s: %w", cfg.URL, wait, why)
			}
			return nil, fmt.Errorf("no server reachable at %s within %s", cfg.URL, wait)
		case <-tick.C:
			if nc.IsClosed() {
				// The client gave up (the same authorization error
				// twice): say why now, not "unreachable" after 30 s.
				return nil, fmt.Errorf("%s: %w", cfg.URL, cmp.Or(nc.LastError(), nats.ErrConnectionClosed))
			}
		}
	}
	return nc, nil
}

// connectWait bounds the wait for the first connection to an external
// server: long enough for a cluster that starts beside the relay.
const connectWait = 30 * time.Second

// clientTLS is the TLS config t of routing.yaml's section at path
// (nats.tls, nats.leaf.tls), which its errors name.
func clientTLS(path string, t *config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", path, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file %s: no certificates", path, t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s cert_file/key_file: %w", path, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// newJetStream is the JetStream API on nc. Object store puts publish 128 KiB
// chunks asynchronously; the default of 4,000 in flight lets a 1 GiB payload
// pile up ~250 MiB in memory before the server persists it. 32 keeps ~4 MiB
// in flight and is no slower.
func newJetStream(nc *nats.Conn) (jetstream.JetStream, error) {
	return jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(32))
}

func (b *Bus) provision(ctx context.Context) error {
	js, err := newJetStream(b.Conn)
	if err != nil {
		return fmt.Errorf("nats: jetstream: %w", err)
	}
	b.JS = js
	b.Exchange, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamExchange,
		Description: "1C exchange messages: header fields and a claim check to " + BucketPayloads,
		Subjects:    []string{SubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    b.replicas,
		Retention:   jetstream.LimitsPolicy,
		// No age limit: a record waits as long as its node does (an age
		// limit would drop it unacked, silently). PurgeDone removes the
		// records that are done.
		MaxAge:     0,
		Duplicates: DuplicateWindow,
		// Direct gets only on one server: on a cluster any replica answers
		// them, one behind from before the latest record, and a delivery
		// that looks for a lower number queued before its own (sequential)
		// or a newer one (latest) must see every acknowledged record.
		AllowDirect: b.replicas == 1,
	})
	if err != nil {
		return fmt.Errorf("nats: stream %s: %w", StreamExchange, err)
	}
	b.Dead, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamDead,
		Description: "dead letters: messages relay could not route or deliver, with the reason",
		Subjects:    []string{DeadSubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    b.replicas,
		Retention:   jetstream.LimitsPolicy,
		// A letter's Nats-Msg-Id is its record's: the record offered
		// again after its ack was lost (a relay down, an office link
		// down for an hour) makes no second letter (found by review:
		// the server's default of 2 minutes did).
		Duplicates:  DuplicateWindow,
		AllowDirect: b.replicas == 1, // as EXCHANGE: a retry reads the letter it was given
	})
	if err != nil {
		return fmt.Errorf("nats: stream %s: %w", StreamDead, err)
	}
	b.Events, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamEvents,
		Description: "every step of every message (picked up, delivered, failed, dropped, dead), for relay trace",
		Subjects:    []string{EventSubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    b.replicas,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      EventsMaxAge,
		MaxBytes:    EventsMaxBytes,
		Discard:     jetstream.DiscardOld,
		AllowDirect: true,
	})
	if err != nil {
		return fmt.Errorf("nats: stream %s: %w", StreamEvents, err)
	}
	if err := b.provisionPayloads(ctx); err != nil {
		return fmt.Errorf("nats: object store %s: %w", BucketPayloads, err)
	}
	b.Channels, err = b.provisionKV(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketChannels,
		Description: "state of each exchange channel (plan, from, to)",
		Storage:     jetstream.FileStorage,
		Replicas:    b.replicas,
		History:     1,
	})
	if err != nil {
		return fmt.Errorf("nats: kv %s: %w", BucketChannels, err)
	}
	b.Taken, err = b.provisionKV(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketTaken,
		Description: "files taken by pickups with after: keep",
		Storage:     jetstream.FileStorage,
		Replicas:    b.replicas,
		History:     1,
	})
	if err != nil {
		return fmt.Errorf("nats: kv %s: %w", BucketTaken, err)
	}
	b.Leases, err = b.provisionKV(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketLeases,
		Description: "leases of relay replicas sharing this NATS (pickups, fetches, channel deliveries)",
		Storage:     jetstream.FileStorage,
		Replicas:    b.replicas,
		History:     1,
		TTL:         b.leaseTTL,
	})
	if err != nil {
		return fmt.Errorf("nats: kv %s: %w", BucketLeases, err)
	}
	return nil
}

// provisionPayloads creates EXCHANGE_PAYLOADS when it is missing, brings
// it to this relay's replicas and read mode (see leaderReads), and binds
// it. (CreateOrUpdateObjectStore would turn direct gets back on at every
// start.)
func (b *Bus) provisionPayloads(ctx context.Context) error {
	store, err := bucket(
		func() (jetstream.ObjectStore, error) { return b.JS.ObjectStore(ctx, BucketPayloads) },
		func() (jetstream.ObjectStore, error) {
			return b.JS.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
				Bucket:      BucketPayloads,
				Description: "exchange message bodies",
				Storage:     jetstream.FileStorage,
				Replicas:    b.replicas,
			})
		})
	if err != nil {
		return err
	}
	stream, changed, err := b.leaderReads(ctx, "OBJ_"+BucketPayloads, func(c *jetstream.StreamConfig) {
		// A payload lives as long as its record waits (an office may be
		// away for weeks): an age limit, or a size limit that discards
		// old payloads, would take the bytes of messages not yet
		// delivered. A size limit that refuses new ones stays.
		if c.MaxAge != 0 || c.MaxBytes > 0 && c.Discard == jetstream.DiscardOld || c.MaxMsgs > 0 && c.Discard == jetstream.DiscardOld {
			b.log.Warn("payload bucket limits removed: they would drop bodies of messages not yet delivered",
				"stream", "OBJ_"+BucketPayloads, "max_age", c.MaxAge, "max_bytes", c.MaxBytes, "max_msgs", c.MaxMsgs, "discard", c.Discard.String())
			c.MaxAge, c.Discard = 0, jetstream.DiscardNew
		}
	})
	if err != nil {
		return err
	}
	if changed {
		// Bound afresh: a handle decides direct or not from the stream
		// config it was made with.
		if store, err = b.JS.ObjectStore(ctx, BucketPayloads); err != nil {
			return err
		}
	}
	b.Payloads, b.payloadStream = store, stream
	return nil
}

// provisionKV creates the bucket cfg describes when it is missing, brings
// it to cfg and to this relay's replicas and read mode (see leaderReads),
// and binds it. (CreateOrUpdateKeyValue would turn direct gets back on at
// every start.)
func (b *Bus) provisionKV(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := bucket(
		func() (jetstream.KeyValue, error) { return b.JS.KeyValue(ctx, cfg.Bucket) },
		func() (jetstream.KeyValue, error) { return b.JS.CreateKeyValue(ctx, cfg) })
	if err != nil {
		return nil, err
	}
	_, changed, err := b.leaderReads(ctx, "KV_"+cfg.Bucket, func(c *jetstream.StreamConfig) {
		// What CreateOrUpdateKeyValue would update from cfg.
		ttl := cfg.TTL
		if ttl > 0 && c.MaxAge > ttl {
			// Never shortened: the replicas running time their renewals
			// from their own lease_ttl, and a key lapsing before they
			// renew it hands their lease to another (found by review: a
			// replica started with a shorter lease_ttl made two hold
			// one pickup).
			b.log.Warn("bucket "+cfg.Bucket+" keeps its longer TTL, set by a replica before this one; a shorter lease_ttl takes effect once every replica runs with it and the bucket is removed while all are stopped",
				"bucket_ttl", c.MaxAge, "lease_ttl", ttl)
			ttl = c.MaxAge
		}
		c.Description, c.MaxMsgsPerSubject, c.MaxAge = cfg.Description, int64(max(cfg.History, 1)), ttl
		c.Duplicates = 2 * time.Minute
		if ttl > 0 && ttl < c.Duplicates {
			c.Duplicates = ttl
		}
	})
	if err != nil {
		return nil, err
	}
	if changed {
		if kv, err = b.JS.KeyValue(ctx, cfg.Bucket); err != nil {
			return nil, err
		}
	}
	return b.serial(kv), nil
}

// serial is kv with its compare-and-set writes serialized (serialKV) where
// the bucket is kept by more than one server: only a replicated stream
// checks revisions ahead of its consensus, and the message ids cost the
// embedded server ~15% more CPU per exchange message.
func (b *Bus) serial(kv jetstream.KeyValue) jetstream.KeyValue {
	if b.replicas > 1 {
		return newSerialKV(b.JS, kv)
	}
	return kv
}

// bucket binds the bucket lookup finds, making it with create first when it
// is missing; a create that lost to another replica starting beside this
// one binds the bucket that replica made.
func bucket[T any](lookup, create func() (T, error)) (T, error) {
	v, err := lookup()
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		v, err = create()
		if errors.Is(err, jetstream.ErrBucketExists) {
			v, err = lookup()
		}
	}
	return v, err
}

// leaderReads brings the stream name to this relay's replicas and, with
// more than one, turns its direct gets off; edit, if any, sets the rest of
// the config the caller keeps in step. Direct gets are answered by any
// replica, and nats-server (2.9 here; read-after-write came in 2.12) lets
// one answer before it has applied the latest writes: a payload whose
// record is already out is "not found", which a delivery or a fetch takes
// for a payload that is gone; a channel state is a revision or more behind
// (one read in ten right after a write, TestPayloadReadAfterWrite), which
// makes a delivery hold a message for a gap that is not there or deliver
// one again. A message get is answered by the stream's leader, which has
// every acknowledged write. It reports whether the config changed: handles
// bound before then must be bound again.
func (b *Bus) leaderReads(ctx context.Context, name string, edit func(*jetstream.StreamConfig)) (jetstream.Stream, bool, error) {
	stream, err := b.JS.Stream(ctx, name)
	if err != nil {
		return nil, false, err
	}
	have := stream.CachedInfo().Config
	want := have
	want.Replicas, want.AllowDirect = b.replicas, b.replicas == 1
	if edit != nil {
		edit(&want)
	}
	if reflect.DeepEqual(want, have) {
		return stream, false, nil
	}
	if stream, err = b.JS.UpdateStream(ctx, want); err != nil {
		return nil, false, err
	}
	return stream, true, nil
}

// Connected reports whether the NATS connection is up (for /readyz).
func (b *Bus) Connected() bool { return b.Conn != nil && b.Conn.IsConnected() }

// closed is the main connection's ClosedHandler.
func (b *Bus) closed(nc *nats.Conn) {
	if b.closing.Load() {
		return
	}
	err := nc.LastError()
	if err == nil {
		err = nats.ErrConnectionClosed
	}
	b.lose(fmt.Errorf("nats: the connection was closed for good (%w); a restart reads the credentials again", err))
}

// jetStreamWatch is how often watchJetStream looks.
const jetStreamWatch = time.Second

// watchJetStream closes Lost when the embedded server shuts its JetStream
// down for good, as it does when its disk is full or its store refuses a
// write: nothing moves from then on, and only a restart (once the disk has
// room) brings it back (found by review: /readyz stayed 200 and relay ran
// on, moving nothing).
func (b *Bus) watchJetStream(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.lost:
			return
		case <-t.C:
		}
		if b.closing.Load() {
			return
		}
		if !b.server.JetStreamEnabled() {
			if b.closing.Load() {
				return
			}
			b.lose(errors.New("nats: the embedded server shut JetStream down (its disk is full, or its store refused a write: see the log above); restart relay once that is mended"))
			return
		}
	}
}

// lose closes Lost with err, once.
func (b *Bus) lose(err error) {
	b.lostOnce.Do(func() {
		b.lostErr = err
		close(b.lost)
	})
}

// Lost is closed when nats.go closes the connection to an external NATS for
// good — it gives up after the same authorization error twice: a rotated
// token or password, an expired user JWT. Nothing moves from then on, and
// only a restart reads the credentials again. Also when a connection
// reconnects to a server too old for the relay's replicas (serverReady),
// and when the embedded server shuts its JetStream down (watchJetStream).
// Never closed by Close.
func (b *Bus) Lost() <-chan struct{} { return b.lost }

// LostErr is why Lost was closed: the connection's last error, or the
// server too old.
func (b *Bus) LostErr() error {
	select {
	case <-b.lost:
		return b.lostErr
	default:
		return nil
	}
}

// Close drains the connection and stops the embedded server, if any.
func (b *Bus) Close() {
	b.closing.Store(true)
	if b.Conn != nil {
		_ = b.Conn.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !b.Conn.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		b.Conn.Close()
	}
	if b.server != nil {
		b.server.Shutdown()
		b.server.WaitForShutdown()
	}
}

// NewConn opens one more connection to the same NATS, for a component whose
// requests should not queue behind the others' (a node's delivery workers).
func (b *Bus) NewConn(name string) (*nats.Conn, error) {
	if b.server != nil {
		return nats.Connect("", nats.InProcessServer(b.server), nats.Name(name), nats.MaxReconnects(-1))
	}
	opts := b.Conn.Opts
	opts.Name = name
	opts.ClosedCB = nil // the main connection's tells; a lane closes at shutdown
	nc, err := opts.Connect()
	if err != nil {
		return nil, fmt.Errorf("nats: connect %s: %w", name, err)
	}
	return nc, nil
}

// Lane is the exchange layout bound to a connection of its own. Requests on
// one NATS connection are served one after another, so a node's ingest and
// delivery each get a lane instead of queueing behind every other node's
// state reads and payload chunks on the main connection.
func (b *Bus) Lane(ctx context.Context, name string) (*Bus, error) {
	nc, err := b.NewConn(name)
	if err != nil {
		return nil, err
	}
	l := &Bus{Conn: nc, log: b.log, replicas: b.replicas}
	fail := func(what string, err error) (*Bus, error) {
		nc.Close()
		return nil, fmt.Errorf("nats: lane %s: %s: %w", name, what, err)
	}
	if l.JS, err = newJetStream(nc); err != nil {
		return fail("jetstream", err)
	}
	if what, err := l.bindExchange(ctx); err != nil {
		return fail(what, err)
	}
	if l.Dead, err = l.JS.Stream(ctx, StreamDead); err != nil {
		return fail(StreamDead, err)
	}
	if l.Channels, err = l.bindKV(ctx, BucketChannels); err != nil {
		return fail(BucketChannels, err)
	}
	if l.Taken, err = l.bindKV(ctx, BucketTaken); err != nil {
		return fail(BucketTaken, err)
	}
	if l.Leases, err = l.bindKV(ctx, BucketLeases); err != nil {
		return fail(BucketLeases, err)
	}
	return l, nil
}

// bindKV binds bucket on b's connection (see serial).
func (b *Bus) bindKV(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := b.JS.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return b.serial(kv), nil
}

// Shared reports whether other relay processes may use the same JetStream
// (an external NATS): replicas then coordinate through EXCHANGE_LEASES. An
// embedded server's store, leaf node or not, belongs to this process alone.
func (b *Bus) Shared() bool { return b.server == nil }

// Linked reports whether other relays' JetStream domains can be reached:
// through a shared cluster, or through the embedded server's leaf
// connection. A standalone embedded server reaches no one.
func (b *Bus) Linked() bool { return b.server == nil || b.leaf }

// Remote is the exchange layout of another relay's JetStream domain, reached
// through the JetStream API over nc ($JS.<domain>.API): EXCHANGE to fetch
// records from and EXCHANGE_PAYLOADS to read bodies from. Nothing is
// published there. It fails while the domain cannot be reached.
func Remote(ctx context.Context, nc *nats.Conn, domain string) (*Bus, error) {
	r := &Bus{Conn: nc}
	var err error
	if r.JS, err = jetstream.NewWithDomain(nc, domain); err != nil {
		return nil, fmt.Errorf("nats: domain %s: %w", domain, err)
	}
	if what, err := r.bindExchange(ctx); err != nil {
		return nil, fmt.Errorf("nats: domain %s: %s: %w", domain, what, err)
	}
	return r, nil
}

// bindExchange looks up, through b.JS, the EXCHANGE stream and the payload
// object store with its stream; on failure it names what was not found.
func (b *Bus) bindExchange(ctx context.Context) (what string, err error) {
	if b.Exchange, err = b.JS.Stream(ctx, StreamExchange); err != nil {
		return StreamExchange, err
	}
	if b.Payloads, err = b.JS.ObjectStore(ctx, BucketPayloads); err != nil {
		return BucketPayloads, err
	}
	if b.payloadStream, err = b.JS.Stream(ctx, "OBJ_"+BucketPayloads); err != nil {
		return BucketPayloads, err
	}
	return "", nil
}

// CloseLane closes a lane's connection (not the server).
func (b *Bus) CloseLane() {
	if b.Conn != nil {
		b.Conn.Close()
	}
}
