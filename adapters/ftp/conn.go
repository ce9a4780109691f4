package ftp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jlaffaye/ftp"
	"golang.org/x/text/encoding/charmap"
)

// client is one endpoint's control connection, kept open between uses and
// re-dialed after a failure with capped exponential backoff. A
// jlaffaye/ftp.ServerConn is not safe for concurrent use: every use holds mu.
type client struct {
	node string
	cfg  Config
	t    target
	log  *slog.Logger

	tlsConf *tls.Config // nil without TLS; shared so sessions resume across data connections
	cp1251  bool
	noMLSD  bool // tests: force LIST on a server that has MLSD
	// listBounds bound a folder listing (defaultListBounds; tests lower them).
	listBounds listBounds

	mu      sync.Mutex
	conn    *ftp.ServerConn
	sockets *dialer // the current connection's sockets, closed to interrupt it
	// pasv: the connection asks for data connections with PASV, not EPSV
	// (switched when a data connection fails: see switchPassive);
	// pasvWorks: one was opened that way.
	pasv, pasvWorks bool
	made            map[string]bool // folders created on this connection
	lastUse         time.Time
	idle            *time.Timer
	fails           int
	retryAt         time.Time
	lastDial        error
}

// newClient validates cfg for role (pickup or deliver) and prepares the
// endpoint's connection; it does not connect.
func newClient(node, role string, cfg Config, log *slog.Logger) (*client, error) {
	cfg.role = role
	cfg.setDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("ftp %s: %w", node, errors.Join(errs...))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t, err := cfg.target()
	if err != nil {
		return nil, fmt.Errorf("ftp %s: url: %w", node, err)
	}
	c := &client{node: node, cfg: cfg, t: t, log: log.With("url", t.display), listBounds: defaultListBounds}
	switch strings.ToLower(cfg.Encoding) {
	case "cp1251", "windows-1251":
		c.cp1251 = true
	}
	if cfg.TLS != TLSNone {
		c.tlsConf = &tls.Config{
			ServerName: t.host,
			// vsftpd's default require_ssl_reuse=YES refuses data connections
			// that do not resume the control connection's TLS session.
			ClientSessionCache: tls.NewLRUClientSessionCache(8),
			InsecureSkipVerify: cfg.InsecureSkipVerify,
			MinVersion:         tls.VersionTLS12,
		}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ftp %s: ca_file: %w", node, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ftp %s: ca_file %s: no PEM certificates", node, cfg.CAFile)
			}
			c.tlsConf.RootCAs = pool
		}
	}
	return c, nil
}

// remote converts a name to what the server expects on the wire. A name
// Windows-1251 cannot write (a Kazakh Қ, an emoji) is an error: it was sent
// as its UTF-8 bytes, and a delivery landed under a name in another
// encoding than every other file of the folder, which the node's 1C,
// reading the folder in Windows-1251, never found, and counted as done
// (found by review).
func (c *client) remote(name string) (string, error) {
	if !c.cp1251 {
		return name, nil
	}
	s, err := charmap.Windows1251.NewEncoder().String(name)
	if err != nil {
		return "", notCP1251(name)
	}
	return s, nil
}

// notCP1251 says which character of name Windows-1251 cannot write.
func notCP1251(name string) error {
	for _, r := range name {
		if _, ok := charmap.Windows1251.EncodeRune(r); !ok {
			return fmt.Errorf("the name %s cannot be written in Windows-1251 (encoding: cp1251): it holds %q", name, r)
		}
	}
	return fmt.Errorf("the name %s cannot be written in Windows-1251 (encoding: cp1251)", name)
}

// local converts a name the server listed into UTF-8.
func (c *client) local(name string) string {
	if !c.cp1251 {
		return name
	}
	s, err := charmap.Windows1251.NewDecoder().String(name)
	if err != nil {
		return name
	}
	return s
}

// listedInUTF8 says raw, a name as the server sent it on the wire, is in
// UTF-8 though encoding: cp1251 says the server writes Windows-1251: valid
// UTF-8 with bytes beyond ASCII. Read as Windows-1251 such a name is
// mojibake (Message_A_ОП.xml reads Message_A_РћРџ.xml) that may still
// name a node at one end and was taken, dead-lettered and deleted (found
// by review). Safe enough to tell the two apart: a Cyrillic letter in
// Windows-1251 is one byte of 0xC0-0xFF, and valid UTF-8 needs each such
// byte followed by one to three bytes of 0x80-0xBF, which Windows-1251
// gives to punctuation, Ё and the letters of other Cyrillic alphabets (Ђ,
// Љ, Ў, Ї, ...): a capital letter followed by one of those, or a small
// one by two or three, all through the name. A real Windows-1251 name that
// happens to be so is not lost either: it is left alone and shown.
func (c *client) listedInUTF8(raw string) bool {
	return c.cp1251 && utf8.ValidString(raw) && strings.ContainsFunc(raw, func(r rune) bool { return r >= utf8.RuneSelf })
}

// path joins the endpoint folder and a name, in the server's encoding.
func (c *client) path(name string) (string, error) {
	if c.t.dir == "" {
		return c.remote(name)
	}
	return c.remote(c.t.dir + "/" + name)
}

// fail wraps err as with() does, for a failure before the connection is used.
func (c *client) fail(err error) error {
	return fmt.Errorf("ftp %s: %s: %w", c.node, c.t.display, err)
}

// step names the operation that failed, for errors and `relay check` hints.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func step(name string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{step: name, err: err}
}

// with runs fn on the open connection, dialing first if needed. A broken
// connection is dropped so the next use re-dials; a server reply (4xx/5xx)
// keeps it. ctx cancellation closes the connection under fn.
func (c *client) with(ctx context.Context, fn func(*ftp.ServerConn) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && time.Since(c.lastUse) > aliveCheckAfter && !c.alive(ctx) {
		// The server ended the idle session (vsftpd's idle_session_timeout
		// says 421 and closes; a restart does the same): a fresh one,
		// rather than a failed delivery first (found by review).
		c.sockets.closeAll()
		c.conn = nil
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("ftp %s: %s: %w", c.node, c.t.display, err)
		}
	}
	if c.conn == nil {
		if wait := time.Until(c.retryAt); wait > 0 && c.lastDial != nil {
			return fmt.Errorf("ftp %s: %s: %w (next attempt in %s)", c.node, c.t.display, c.lastDial, wait.Round(time.Second))
		}
		conn, d, err := c.dial(ctx)
		if err != nil {
			c.lastDial = err
			c.retryAt = time.Now().Add(min(time.Second<<min(c.fails, 6), time.Minute))
			c.fails++
			return fmt.Errorf("ftp %s: %s: %w", c.node, c.t.display, err)
		}
		c.conn, c.sockets, c.fails, c.lastDial = conn, d, 0, nil
		c.made = map[string]bool{}
	}
	c.lastUse = time.Now()
	if c.idle == nil {
		c.idle = time.AfterFunc(c.idleAfter(), c.closeIdle)
	} else {
		c.idle.Reset(c.idleAfter())
	}
	conn := c.conn
	stop := context.AfterFunc(ctx, c.sockets.closeAll)
	err := fn(conn)
	// After anything but a server reply the connection may be out of step
	// (a broken transfer, a timeout): keep it only if it still answers NOOP.
	// A data connection that failed switches EPSV and PASV for the next.
	cut, switched := !stop(), c.switchPassive(err)
	if cut || switched || (err != nil && (!isReply(err) || replyCode(err) == 421) && conn.NoOp() != nil) {
		c.sockets.closeAll()
		c.conn = nil
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fmt.Errorf("ftp %s: %s: %w", c.node, c.t.display, err)
	}
	return nil
}

// switchPassive makes the next connection ask for data connections the
// other way (EPSV, PASV) when one could not be opened on this one (err is
// the use's outcome). A firewall or NAT that knows only PASV lets the
// server's EPSV answer through and the port it names not (found by review:
// jlaffaye/ftp falls back to PASV only when the EPSV command fails, and the
// node stalled for good). Only over IPv4 (by the control connection's
// address), where PASV can name the address; a PASV the server refuses
// before one worked goes back to EPSV. It says the connection is to be
// dropped.
func (c *client) switchPassive(err error) bool {
	failed, opened := c.sockets.takeData()
	if c.pasv && opened > 0 {
		c.pasvWorks = true
	}
	switch {
	case err == nil:
		return false
	case failed:
		if ip := c.sockets.controlIP(); ip == nil || ip.To4() == nil {
			return false
		}
	case c.pasv && !c.pasvWorks && opened == 0 && isReply(err):
		// PASV itself refused (a server that has only EPSV): back to
		// EPSV (found by review: stalled for good).
	default:
		return false
	}
	c.pasv = !c.pasv
	from, to := "EPSV", "PASV"
	if !c.pasv {
		from, to = to, from
	}
	c.log.Warn("a data connection could not be opened; the next connection asks for them with "+to+" instead of "+from, "server", c.t.display)
	return true
}

// aliveCheckAfter is how long a connection may sit unused before a NOOP
// proves it alive: one round trip, only after a pause.
const aliveCheckAfter = time.Second

// alive sends NOOP on the open connection; ctx ending cuts it short (a
// silent connection would hold a stopping relay io_timeout long).
func (c *client) alive(ctx context.Context) bool {
	stop := context.AfterFunc(ctx, c.sockets.closeAll)
	defer stop()
	return c.conn.NoOp() == nil && ctx.Err() == nil
}

// isReply reports whether err is the server's answer (the control connection
// is still in step) rather than a broken connection.
func isReply(err error) bool {
	var te *textproto.Error
	return errors.As(err, &te)
}

// replyCode is the FTP reply code in err, or 0.
func replyCode(err error) int {
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// dial connects and logs in, bounded by connect_timeout.
func (c *client) dial(ctx context.Context) (*ftp.ServerConn, *dialer, error) {
	pass, err := c.cfg.password()
	if err != nil {
		return nil, nil, step("login", err)
	}
	if c.cfg.InsecureSkipVerify {
		c.log.Warn("TLS certificate verification is OFF for this endpoint (insecure_skip_verify): anyone on the path can read and change the exchange")
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout.Std())
	defer cancel()
	d := &dialer{c: c, ctx: dctx}
	opts := []ftp.DialOption{
		ftp.DialWithDialFunc(d.dial),
		ftp.DialWithDisabledUTF8(c.cp1251),
		ftp.DialWithDisabledMLSD(c.noMLSD),
		ftp.DialWithDisabledEPSV(c.pasv),
		ftp.DialWithShutTimeout(c.cfg.IOTimeout.Std()),
		ftp.DialWithDebugOutput(&d.replies),
	}
	switch c.cfg.TLS {
	case TLSExplicit:
		opts = append(opts, ftp.DialWithExplicitTLS(c.tlsConf))
	case TLSImplicit:
		// The dialer already wraps every socket in TLS; the option is what
		// makes jlaffaye/ftp send PBSZ 0 / PROT P after login. Without it
		// the server expects clear-text data connections and a server that
		// requires protected data (vsftpd force_local_data_ssl) answers
		// every LIST/RETR/STOR with 522.
		opts = append(opts, ftp.DialWithTLS(c.tlsConf))
	}
	// The greeting and login must also finish within connect_timeout.
	var conn *ftp.ServerConn
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err = ftp.Dial(c.t.addr, opts...)
		if err != nil {
			err = classifyDial(err, c.cfg.TLS)
			return
		}
		if lerr := conn.Login(c.t.user, pass); lerr != nil {
			conn.Quit()
			conn, err = nil, step("login", lerr)
			if tlsErr(lerr) {
				// With explicit TLS, jlaffaye/ftp shakes hands on the
				// first command after AUTH TLS: the login.
				err = step("tls handshake", lerr)
			}
		}
	}()
	select {
	case <-done:
	case <-dctx.Done():
		d.closeAll()
		<-done
		if err == nil {
			conn.Quit()
		}
		return nil, nil, step("connect", fmt.Errorf("no answer within %s", c.cfg.ConnectTimeout.Std()))
	}
	return conn, d, err
}

func classifyDial(err error, mode string) error {
	switch {
	case tlsErr(err):
		return step("tls handshake", err)
	case mode == TLSExplicit && isReply(err) && replyCode(err) != 421:
		// 421 is the greeting of a server at its connection limit, or
		// going down: no word on TLS (found by review).
		return step("tls handshake", fmt.Errorf("AUTH TLS refused: %w", err))
	}
	return step("connect", err)
}

// tlsErr says err comes from a TLS handshake (a certificate not trusted,
// a peer that does not speak TLS).
func tlsErr(err error) bool {
	var terr *tls.CertificateVerificationError
	var rerr tls.RecordHeaderError
	return errors.As(err, &terr) || errors.As(err, &rerr) || strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:")
}

// dialer makes the control connection and every data connection of one
// ServerConn, so that both carry the io_timeout deadlines and, with TLS,
// the data connections resume the control connection's session.
type dialer struct {
	c   *client
	ctx context.Context

	mu    sync.Mutex
	conns []net.Conn
	n     int
	// listing: the data connections opened now carry a listing (listingConn).
	listing bool
	// dataFailed: a data connection could not be opened; dataOpened:
	// how many were.
	dataFailed bool
	dataOpened int
	control    net.Conn
	// replies notes the control connection's last 226 reply.
	replies replyNotes
}

// takeData says whether a data connection could not be opened since the
// last call, and how many were.
func (d *dialer) takeData() (failed bool, opened int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	failed, opened = d.dataFailed, d.dataOpened
	d.dataFailed, d.dataOpened = false, 0
	return failed, opened
}

// controlIP is the address the control connection went to (nil before).
func (d *dialer) controlIP() net.IP {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.control == nil {
		return nil
	}
	if a, ok := d.control.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP
	}
	return nil
}

// listNext says whether the data connections opened from now on carry a
// listing (all of one List: a client may try MLSD, then LIST).
func (d *dialer) listNext(on bool) {
	d.mu.Lock()
	d.listing = on
	d.mu.Unlock()
	if on {
		d.replies.take226()
	}
}

// replyWithin is how long the server's reply to one command may keep the
// control connection reading: a listing's time bound while one is under
// way, else controlReplyWithin (io_timeout if longer).
func (d *dialer) replyWithin() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.listing {
		return d.c.listBounds.within
	}
	return max(d.c.cfg.IOTimeout.Std(), controlReplyWithin)
}

// listBounds bound one folder listing. io_timeout only measures silence: a
// server (hostile, or broken and looping over a folder) that streams a
// listing for ever without pausing held the pickup for good, and
// jlaffaye/ftp keeps every entry in memory (found by review).
type listBounds struct {
	bytes  int64
	within time.Duration
}

// defaultListBounds: 16 MiB is some 150,000 files; a real listing of a
// few thousand takes seconds even on a slow line.
var defaultListBounds = listBounds{bytes: 16 << 20, within: 5 * time.Minute}

// listingConn is the data connection of a listing, ended at its bounds
// however steadily the server sends.
type listingConn struct {
	net.Conn
	b     listBounds
	left  int64
	until time.Time
}

// fixReadDeadline is the deadlineConn's under it (tlsDataConn's drain).
func (c *listingConn) fixReadDeadline(t time.Time) {
	if dc, ok := c.Conn.(*deadlineConn); ok {
		dc.fixReadDeadline(t)
	}
}

func (c *listingConn) Read(b []byte) (int, error) {
	if c.left < 0 || time.Now().After(c.until) {
		return 0, fmt.Errorf("the folder listing goes on past %d MiB or %s: a folder of hundreds of thousands of files, or a server that repeats itself",
			c.b.bytes>>20, c.b.within)
	}
	n, err := c.Conn.Read(b)
	c.left -= int64(n)
	return n, err
}

func (d *dialer) dial(network, addr string) (net.Conn, error) {
	d.mu.Lock()
	first := d.n == 0
	d.n++
	listing := d.listing && !first
	d.mu.Unlock()
	nd := net.Dialer{Timeout: d.c.cfg.ConnectTimeout.Std()}
	ctx := d.ctx
	if !first {
		// Data connections outlive the dial context.
		ctx = context.Background()
	}
	raw, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		if !first {
			d.mu.Lock()
			d.dataFailed = true
			d.mu.Unlock()
			return nil, step("data connection (passive mode)", err)
		}
		return nil, err
	}
	var conn net.Conn = &deadlineConn{Conn: raw, timeout: d.c.cfg.IOTimeout.Std()}
	if first {
		conn = newControlConn(raw, d)
	}
	if listing {
		b := d.c.listBounds
		conn = &listingConn{Conn: conn, b: b, left: b.bytes, until: time.Now().Add(b.within)}
	}
	d.mu.Lock()
	d.conns = append(d.conns[:0:0], append(openOnly(d.conns), raw)...)
	if first {
		d.control = raw
	} else {
		d.dataOpened++
	}
	d.mu.Unlock()
	switch {
	case d.c.cfg.TLS != TLSNone && !first:
		conn = &tlsDataConn{Conn: tls.Client(conn, d.c.tlsConf)}
	case d.c.cfg.TLS == TLSImplicit:
		conn = tls.Client(conn, d.c.tlsConf)
	}
	return conn, nil
}

// tlsDataConn closes a TLS data connection cleanly. With TLS 1.3 the server
// sends session tickets after the handshake; an upload never reads them, and
// closing a socket with unread input makes the kernel send RST instead of
// FIN, which discards the upload's tail still queued at the server: vsftpd
// answers "426 Failure reading network stream" and keeps a truncated file
// (most multi-megabyte STORs failed that way). So Close first sends
// close_notify, then reads (and drops) what the server still sends until its
// own close_notify or EOF, bounded, and only then closes the socket.
type tlsDataConn struct {
	*tls.Conn
}

// dataDrainLimit and dataDrainTimeout bound what Close reads: an upload's
// leftovers are a few hundred bytes and the server's close_notify follows
// ours at once; a download closed early (a header read) is cut off here.
const (
	dataDrainLimit   = 256 << 10
	dataDrainTimeout = 2 * time.Second
)

func (c *tlsDataConn) Close() error {
	if c.Conn.ConnectionState().HandshakeComplete && c.Conn.CloseWrite() == nil {
		if dc, ok := c.Conn.NetConn().(interface{ fixReadDeadline(time.Time) }); ok {
			dc.fixReadDeadline(time.Now().Add(dataDrainTimeout))
		}
		_, _ = io.CopyN(io.Discard, c.Conn, dataDrainLimit)
	}
	return c.Conn.Close()
}

// openOnly keeps the sockets worth remembering: the control connection
// (first) and the latest data connection; older data sockets are closed by
// the transfer that used them.
func openOnly(conns []net.Conn) []net.Conn {
	if len(conns) > 2 {
		return []net.Conn{conns[0], conns[len(conns)-1]}
	}
	return conns
}

func (d *dialer) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.Close()
	}
}

// Bounds of the server's reply to one command on the control connection.
// io_timeout only measures silence, and jlaffaye/ftp reads a reply's lines
// until its last one: a server that sent "150-..." lines for ever, never
// silent, held the command, and with it the endpoint's connection lock, for
// good (the node stalled, nothing shown) while the lines piled up in
// memory (found by review). Real replies are a few lines; the time is
// spent waiting for the server, not on a transfer (whose data connection
// the control connection is not read during).
const (
	controlReplyBytes  = 1 << 20
	controlReplyWithin = 5 * time.Minute
)

// controlConn is the control connection's socket: each read waits
// io_timeout at most, and the reads after one command (a write) together
// get controlReplyBytes and replyWithin of waiting. Past either, the socket
// is closed: the connection is out of step, and the NOOP that would prove
// it alive must not read on in the endless reply.
type controlConn struct {
	deadlineConn // its writes; its reads' deadline is set here
	d            *dialer
	within       time.Duration // waiting allowed for the current reply
	left         int64         // bytes left for the current reply
	waited       time.Duration // waited for the current reply so far
}

func newControlConn(raw net.Conn, d *dialer) *controlConn {
	return &controlConn{deadlineConn: deadlineConn{Conn: raw, timeout: d.c.cfg.IOTimeout.Std()}, d: d, within: d.replyWithin(), left: controlReplyBytes}
}

func (c *controlConn) overrun() error {
	return fmt.Errorf("the server's reply to one command goes on past %d MiB or %s: a server that does not end it", controlReplyBytes>>20, c.within)
}

func (c *controlConn) Read(b []byte) (int, error) {
	if c.left < 0 || c.waited >= c.within {
		c.Conn.Close()
		return 0, c.overrun()
	}
	start := time.Now()
	wait := min(c.timeout, c.within-c.waited)
	c.Conn.SetReadDeadline(start.Add(wait))
	n, err := c.Conn.Read(b)
	c.waited += time.Since(start)
	c.left -= int64(n)
	if err != nil && wait < c.timeout && errors.Is(err, os.ErrDeadlineExceeded) {
		c.Conn.Close()
		return n, c.overrun()
	}
	return n, err
}

// Write sends a command (or TLS records of one): the reply to come gets
// its own bounds.
func (c *controlConn) Write(b []byte) (int, error) {
	c.within, c.left, c.waited = c.d.replyWithin(), controlReplyBytes, 0
	return c.deadlineConn.Write(b)
}

// replyNotes takes what jlaffaye/ftp writes to its debug output: the
// control connection's commands and replies, and listings, in clear text
// (the socket under explicit TLS sees them encrypted). It keeps only the
// last "226 " reply line: vsftpd says there alone that it could not open a
// folder it answered with an empty listing (see listDir). Nothing else is
// kept (the PASS command passes by too).
type replyNotes struct {
	mu      sync.Mutex
	line    []byte
	long    bool // the current line is past maxNotedLine: not a 226
	last226 string
}

// maxNotedLine bounds the line replyNotes holds while it comes.
const maxNotedLine = 512

func (r *replyNotes) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		part, rest, ended := bytes.Cut(p, []byte("\n"))
		if len(r.line)+len(part) <= maxNotedLine {
			r.line = append(r.line, part...)
		} else {
			r.long = true
		}
		if !ended {
			break
		}
		if !r.long && bytes.HasPrefix(r.line, []byte("226 ")) {
			r.last226 = string(bytes.TrimRight(r.line, "\r"))
		}
		r.line, r.long, p = r.line[:0], false, rest
	}
	return n, nil
}

// take226 returns the last 226 reply line noted ("" if none) and forgets it.
func (r *replyNotes) take226() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.last226
	r.last226 = ""
	return s
}

// deadlineConn gives up on a connection that stays silent for timeout.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	fixed   bool // a final read deadline is set: Read keeps it
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	if !c.fixed {
		c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	}
	return c.Conn.Read(b)
}

// fixReadDeadline sets a read deadline that later reads do not extend; it
// is called from the goroutine that reads.
func (c *deadlineConn) fixReadDeadline(t time.Time) {
	c.fixed = true
	c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

// idleClose is how long an unused control connection stays open at most.
// Servers limit connections per client address (vsftpd: 50), and one relay
// may serve dozens of nodes on one server: a delivery endpoint is idle most
// of the time, and a pickup that polls every few seconds or more lets its
// connection go between polls (idleAfter), so only busy endpoints hold one.
const idleClose = 30 * time.Second

// idleAfter is this endpoint's idle time: half the poll interval for a
// pickup that polls slower than every 2 s, else idleClose.
func (c *client) idleAfter() time.Duration {
	if poll := c.cfg.PollInterval.Std(); c.cfg.role == "pickup" && poll >= 2*time.Second {
		return min(idleClose, poll/2)
	}
	return idleClose
}

func (c *client) closeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && time.Since(c.lastUse) >= c.idleAfter() {
		c.conn.Quit()
		c.sockets.closeAll()
		c.conn = nil
	}
}

// close drops the connection; the next use re-dials.
func (c *client) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.conn != nil {
		c.conn.Quit()
		c.sockets.closeAll()
		c.conn = nil
	}
}
