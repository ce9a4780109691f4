package mail

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/test/loopback"
)

// --- certificates -----------------------------------------------------

type testCert struct {
	cert tls.Certificate
	pem  []byte
}

// newTestCert makes a self-signed certificate for 127.0.0.1.
func newTestCert() (testCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return testCert{}, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return testCert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "relay test " + serial.String()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return testCert{}, err
	}
	return testCert{
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

var (
	serverCert = sync.OnceValues(newTestCert)
	otherCert  = sync.OnceValues(newTestCert)
)

// caFile writes the PEM of c (serverCert when nil) to a temporary file.
func caFile(t *testing.T, c func() (testCert, error)) string {
	t.Helper()
	if c == nil {
		c = serverCert
	}
	tc, err := c()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, tc.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// --- an in-process SMTP server ----------------------------------------

const (
	smtpUser   = "relay"
	smtpPass   = "s3cret"
	smtpPassEV = "RELAY_TEST_SMTP_PASSWORD"
)

// smtpTLS is how the test server secures connections.
type smtpTLS int

const (
	plainSMTP    smtpTLS = iota // no TLS at all, AUTH allowed in clear text
	startTLSSMTP                // STARTTLS offered, AUTH only after it
	implicitSMTP                // TLS from the first byte (smtps)
)

// gotMail is one DATA the server received.
type gotMail struct {
	from string
	to   []string
	raw  []byte
	tls  bool
	user string
}

// smtpServer records what clients do; hooks decide the replies.
type smtpServer struct {
	addr string

	mu       sync.Mutex
	mails    []gotMail // accepted (250 after DATA)
	attempts []gotMail // every DATA body, accepted or not
	mailCmds int
	auths    []string // user:password of every AUTH, good or bad
	noAuth   bool     // offer no AUTH mechanism

	// rcpt, when set, answers RCPT TO.
	rcpt func(to string) error
	// data, when set, answers the end of DATA; attempt counts from 1.
	data func(attempt int, raw []byte) error
}

func (s *smtpServer) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &smtpSession{srv: s, conn: c}, nil
}

func (s *smtpServer) accepted() []gotMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]gotMail(nil), s.mails...)
}

func (s *smtpServer) tried() []gotMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]gotMail(nil), s.attempts...)
}

func (s *smtpServer) counts() (mailCmds, auths int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mailCmds, len(s.auths)
}

type smtpSession struct {
	srv  *smtpServer
	conn *smtp.Conn
	user string
	from string
	to   []string
}

func (s *smtpSession) Reset()        { s.from, s.to = "", nil }
func (s *smtpSession) Logout() error { return nil }

func (s *smtpSession) AuthMechanisms() []string {
	if s.srv.noAuth {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		s.srv.mu.Lock()
		s.srv.auths = append(s.srv.auths, user+":"+pass)
		s.srv.mu.Unlock()
		if user != smtpUser || pass != smtpPass {
			return smtp.ErrAuthFailed
		}
		s.user = user
		return nil
	}), nil
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	s.srv.mu.Lock()
	s.srv.mailCmds++
	s.srv.mu.Unlock()
	s.from = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.srv.rcpt != nil {
		if err := s.srv.rcpt(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err // 552 when MaxMessageBytes is exceeded
	}
	_, isTLS := s.conn.TLSConnectionState()
	m := gotMail{from: s.from, to: append([]string(nil), s.to...), raw: raw, tls: isTLS, user: s.user}
	s.srv.mu.Lock()
	s.srv.attempts = append(s.srv.attempts, m)
	n := len(s.srv.attempts)
	s.srv.mu.Unlock()
	if s.srv.data != nil {
		if err := s.srv.data(n, raw); err != nil {
			return err
		}
	}
	s.srv.mu.Lock()
	s.srv.mails = append(s.srv.mails, m)
	s.srv.mu.Unlock()
	return nil
}

type quietSMTPLog struct{}

func (quietSMTPLog) Printf(string, ...any) {}
func (quietSMTPLog) Println(...any)        {}

// startSMTP runs a go-smtp server on 127.0.0.1; maxBytes > 0 announces SIZE.
func startSMTP(t *testing.T, mode smtpTLS, maxBytes int64) *smtpServer {
	t.Helper()
	tc, err := serverCert()
	if err != nil {
		t.Fatal(err)
	}
	rec := &smtpServer{}
	srv := smtp.NewServer(rec)
	srv.Domain = "127.0.0.1"
	srv.MaxMessageBytes = maxBytes
	srv.ErrorLog = quietSMTPLog{}
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{tc.cert}, MinVersion: tls.VersionTLS12}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec.addr = ln.Addr().String()
	switch mode {
	case plainSMTP:
		srv.AllowInsecureAuth = true
	case startTLSSMTP:
		srv.TLSConfig = tlsCfg
	case implicitSMTP:
		srv.TLSConfig = tlsCfg
		ln = tls.NewListener(ln, tlsCfg)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rec
}

// --- the delivery side ------------------------------------------------

// smtpConf is a delivery config for url; ca is the ca_file ("" for none),
// extra more YAML lines.
func smtpConf(t *testing.T, url, ca, extra string) SMTPConfig {
	t.Helper()
	t.Setenv(smtpPassEV, smtpPass)
	lines := []string{
		"url: " + url,
		"from: relay@example.com",
		"to: [wh@example.com, archive@example.com]",
		"connect_timeout: 5s",
		"io_timeout: 5s",
		"helo: relay.test",
	}
	if strings.Contains(url, "@") {
		lines = append(lines, "password_env: "+smtpPassEV)
	}
	if ca != "" {
		lines = append(lines, "ca_file: "+ca)
	}
	src := extra
	for _, l := range lines {
		// extra overrides a default line with the same key
		if key, _, _ := strings.Cut(l, ":"); !strings.Contains("\n"+extra, "\n"+key+":") {
			src += l + "\n"
		}
	}
	cfg, err := DecodeSMTP(yamlValue(t, src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newTestPublisher(t *testing.T, cfg SMTPConfig) *Publisher {
	t.Helper()
	p, err := NewPublisher("ОП", cfg, filepath.Join(t.TempDir(), "spool"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func smtpURL(s *smtpServer, scheme string) string {
	return scheme + "://" + smtpUser + "@" + s.addr
}

// readFixture reads a file of testdata/fixtures/good.
func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "fixtures", "good", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bigXML makes a message ЦО→ОП of about size bytes.
func bigXML(t *testing.T, no uint64, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	h := exchange.Header{ExchangePlan: "Магазины", From: "ЦО", To: "ОП", MessageNo: no, ReceivedNo: 7}
	if err := exchangetest.WriteXML(&b, h, size); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// outMsg is a delivery message for an .xml body, the way the pipeline
// hands it over: header and file metadata, and a body opener.
func outMsg(t *testing.T, ctx context.Context, body []byte) *message.Message {
	t.Helper()
	h, err := exchange.ReadHeader(bytes.NewReader(body), exchange.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	return outMsgAs(ctx, h, exchange.FileName(h.From, h.To, exchange.FormatXML), body)
}

func outMsgAs(ctx context.Context, h exchange.Header, name string, body []byte) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), nil)
	if ctx != nil {
		m.SetContext(ctx)
	}
	exchange.SetHeader(m, h)
	m.Metadata.Set(exchange.MetaFileName, name)
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	m.Metadata.Set(exchange.MetaSHA256, sha256Hex(body))
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil })
	return m
}

// parsedMail is a received mail taken apart.
type parsedMail struct {
	h          gomail.Header
	rawHeader  string
	text       string
	attachName string
	attachType string
	attachHdr  string // the attachment's raw header
	attach     []byte
}

func parseMail(t *testing.T, raw []byte) parsedMail {
	t.Helper()
	var pm parsedMail
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i > 0 {
		pm.rawHeader = string(raw[:i+2])
	} else {
		t.Fatalf("mail without a header end:\n%s", raw)
	}
	mr, err := gomail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	pm.h = mr.Header
	attachments := 0
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		switch h := p.Header.(type) {
		case *gomail.InlineHeader:
			pm.text += string(b)
		case *gomail.AttachmentHeader:
			attachments++
			pm.attachName, err = h.Filename()
			if err != nil {
				t.Fatal(err)
			}
			pm.attachType, _, _ = h.ContentType()
			pm.attach = b
			var sb strings.Builder
			for f := h.Fields(); f.Next(); {
				fmt.Fprintf(&sb, "%s: %s\r\n", f.Key(), f.Value())
			}
			pm.attachHdr = sb.String()
		}
	}
	if attachments != 1 {
		t.Fatalf("%d attachments, want 1", attachments)
	}
	return pm
}

func (pm parsedMail) text1(t *testing.T, key string) string {
	t.Helper()
	v, err := pm.h.Text(key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return v
}

func addresses(t *testing.T, h gomail.Header, key string) []string {
	t.Helper()
	l, err := h.AddressList(key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	var out []string
	for _, a := range l {
		out = append(out, a.Address)
	}
	return out
}

func publish(p *Publisher, m *message.Message) error { return p.Publish("deliver", m) }

// --- tests ------------------------------------------------------------

// TestSMTPDeliverStartTLS: one message over STARTTLS with AUTH PLAIN
// arrives as one 7-bit mail: right envelope, subject, routing headers and
// an attachment with the exact bytes under its Cyrillic name (RFC 2231).
func TestSMTPDeliverStartTLS(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	body := readFixture(t, "Message_ЦО_ОП.xml")
	if err := publish(p, outMsg(t, nil, body)); err != nil {
		t.Fatal(err)
	}
	got := srv.accepted()
	if len(got) != 1 {
		t.Fatalf("%d mails, want 1", len(got))
	}
	m := got[0]
	if !m.tls || m.user != smtpUser {
		t.Errorf("mail sent with tls=%v as %q, want TLS and AUTH as %q", m.tls, m.user, smtpUser)
	}
	if m.from != "relay@example.com" || strings.Join(m.to, ",") != "wh@example.com,archive@example.com" {
		t.Errorf("envelope MAIL FROM %q RCPT TO %q", m.from, m.to)
	}
	for i, c := range m.raw {
		if c >= 0x80 || c == 0 {
			t.Fatalf("byte %d of the mail is %#x: the mail must be 7-bit (no 8BITMIME is declared)", i, c)
		}
	}
	pm := parseMail(t, m.raw)
	if s, err := pm.h.Subject(); err != nil || s != "EXCHANGE_MESSAGE:Message_ЦО_ОП.xml" {
		t.Errorf("subject %q, %v", s, err)
	}
	if f := addresses(t, pm.h, "From"); len(f) != 1 || f[0] != "relay@example.com" {
		t.Errorf("From %v", f)
	}
	if to := addresses(t, pm.h, "To"); strings.Join(to, ",") != "wh@example.com,archive@example.com" {
		t.Errorf("To %v", to)
	}
	if id, err := pm.h.MessageID(); err != nil || !strings.HasSuffix(id, "@relay.test") {
		t.Errorf("Message-Id %q, %v", id, err)
	}
	if d, err := pm.h.Date(); err != nil || time.Since(d) > time.Hour {
		t.Errorf("Date %v, %v", d, err)
	}
	for k, want := range map[string]string{
		HeaderPlan:       "Магазины",
		HeaderFrom:       "ЦО",
		HeaderTo:         "ОП",
		HeaderMessageNo:  "20",
		HeaderReceivedNo: "15",
		HeaderFile:       "Message_ЦО_ОП.xml",
		HeaderSize:       strconv.Itoa(len(body)),
		HeaderSHA256:     sha256Hex(body),
		HeaderTransfer:   "",
		HeaderPart:       "",
	} {
		if got := pm.text1(t, k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(pm.text, "1C exchange message Message_ЦО_ОП.xml") || !strings.Contains(pm.text, sha256Hex(body)) {
		t.Errorf("text part %q", pm.text)
	}
	if pm.attachName != "Message_ЦО_ОП.xml" {
		t.Errorf("attachment name %q", pm.attachName)
	}
	const encoded = "utf-8''Message_%D0%A6%D0%9E_%D0%9E%D0%9F.xml"
	if !strings.Contains(pm.attachHdr, "filename*="+encoded) || !strings.Contains(pm.attachHdr, "name*="+encoded) {
		t.Errorf("attachment header does not name the file the RFC 2231 way:\n%s", pm.attachHdr)
	}
	if pm.attachType != "application/xml" {
		t.Errorf("attachment type %q", pm.attachType)
	}
	if !bytes.Equal(pm.attach, body) {
		t.Errorf("attachment differs from the file (%d bytes, want %d)", len(pm.attach), len(body))
	}
	if e, at := p.LastError(); e != "" || !at.IsZero() {
		t.Errorf("LastError %q %v after a success", e, at)
	}
}

// TestSMTPDeliverByName: a message routed by its file name (a sealed zip)
// has no plan or numbers; the mail says From and To and leaves the rest out.
func TestSMTPDeliverByName(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	name, err := exchange.ParseName("Message_ЦО_ОП.zip")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("PK\x03\x04 sealed")
	if err := publish(p, outMsgAs(context.Background(), name.Sealed(), name.String(), body)); err != nil {
		t.Fatal(err)
	}
	got := srv.accepted()
	if len(got) != 1 {
		t.Fatalf("%d mails, want 1", len(got))
	}
	pm := parseMail(t, got[0].raw)
	for _, k := range []string{HeaderPlan, HeaderMessageNo, HeaderReceivedNo} {
		if pm.h.Has(k) {
			t.Errorf("%s: %q, want no such header for a message routed by name", k, pm.h.Get(k))
		}
	}
	if pm.text1(t, HeaderFrom) != "ЦО" || pm.text1(t, HeaderTo) != "ОП" || !bytes.Equal(pm.attach, body) {
		t.Errorf("From %q, To %q, attachment of %d bytes", pm.text1(t, HeaderFrom), pm.text1(t, HeaderTo), len(pm.attach))
	}
}

// TestSMTPDeliverImplicitTLS: smtps:// talks TLS from the first byte.
func TestSMTPDeliverImplicitTLS(t *testing.T) {
	srv := startSMTP(t, implicitSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtps"), caFile(t, nil), "subject_prefix: \"СООБЩЕНИЕ_ОБМЕНА:\"\n"))
	body := readFixture(t, "Message_ЦО_ОП.xml")
	if err := publish(p, outMsg(t, nil, body)); err != nil {
		t.Fatal(err)
	}
	got := srv.accepted()
	if len(got) != 1 || !got[0].tls || got[0].user != smtpUser {
		t.Fatalf("mails %d, want 1 over TLS after AUTH", len(got))
	}
	pm := parseMail(t, got[0].raw)
	if s, _ := pm.h.Subject(); s != "СООБЩЕНИЕ_ОБМЕНА:Message_ЦО_ОП.xml" || subjectFile(s, nil) != "Message_ЦО_ОП.xml" {
		t.Errorf("subject %q", s)
	}
	if !bytes.Equal(pm.attach, body) {
		t.Error("attachment differs from the file")
	}
}

// TestSMTPPlainNoAuth: starttls: off to a local server, no user: no TLS,
// no AUTH, the mail still goes.
func TestSMTPPlainNoAuth(t *testing.T) {
	srv := startSMTP(t, plainSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, "smtp://"+srv.addr, "", "starttls: \"off\"\n"))
	if err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml"))); err != nil {
		t.Fatal(err)
	}
	got := srv.accepted()
	if len(got) != 1 {
		t.Fatalf("%d mails, want 1", len(got))
	}
	if got[0].tls || got[0].user != "" {
		t.Errorf("mail sent with tls=%v as %q, want clear text without AUTH", got[0].tls, got[0].user)
	}
	if _, auths := srv.counts(); auths != 0 {
		t.Fatal("AUTH attempted without a user")
	}
}

// TestSMTPStartTLSRequired: a server without STARTTLS gets nothing, not
// even the password, even though it offers AUTH in clear text.
func TestSMTPStartTLSRequired(t *testing.T) {
	srv := startSMTP(t, plainSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), "", ""))
	err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
	if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("got %v, want an error about STARTTLS", err)
	}
	if exchange.IsPermanent(err) {
		t.Error("a server without STARTTLS is endpoint trouble, not the message's: must be retried")
	}
	if mails, auths := srv.counts(); mails != 0 || auths != 0 {
		t.Fatalf("server saw %d MAIL and %d AUTH", mails, auths)
	}
	if e, at := p.LastError(); e != err.Error() || at.IsZero() {
		t.Errorf("LastError %q at %v, want %q", e, at, err)
	}
}

// TestSMTPWrongCA: a certificate the ca_file does not vouch for stops the
// session before AUTH, with STARTTLS and with implicit TLS.
func TestSMTPWrongCA(t *testing.T) {
	for _, c := range []struct {
		mode   smtpTLS
		scheme string
	}{{startTLSSMTP, "smtp"}, {implicitSMTP, "smtps"}} {
		t.Run(c.scheme, func(t *testing.T) {
			srv := startSMTP(t, c.mode, 0)
			p := newTestPublisher(t, smtpConf(t, smtpURL(srv, c.scheme), caFile(t, otherCert), ""))
			err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("got %v, want a certificate error", err)
			}
			if exchange.IsPermanent(err) {
				t.Error("a TLS failure must be retried")
			}
			if mails, auths := srv.counts(); mails != 0 || auths != 0 {
				t.Fatalf("server saw %d MAIL and %d AUTH", mails, auths)
			}
		})
	}
}

// checkParts checks a split delivery: n mails ≤ limit, parts 1..n in order
// with a common transfer id and the whole file's sha256, joining to body.
func checkParts(t *testing.T, mails []gotMail, body []byte, name string, limit int64) {
	t.Helper()
	per := rawPerMail(limit)
	n := (int64(len(body)) + per - 1) / per
	if n < 2 || int64(len(mails)) != n {
		t.Fatalf("%d mails for %d bytes at %d a mail, want %d (> 1)", len(mails), len(body), per, n)
	}
	var joined []byte
	var tid string
	for i, m := range mails {
		if int64(len(m.raw)) > limit {
			t.Errorf("mail %d is %d bytes, over the limit %d", i+1, len(m.raw), limit)
		}
		pm := parseMail(t, m.raw)
		pt := part{i + 1, int(n)}
		if v := pm.text1(t, HeaderPart); v != pt.String() {
			t.Errorf("mail %d: %s %q, want %q", i+1, HeaderPart, v, pt)
		} else if back, ok := parsePart(v); !ok || back != pt {
			t.Errorf("mail %d: parsePart(%q) = %v, %v", i+1, v, back, ok)
		}
		id := pm.text1(t, HeaderTransfer)
		if i == 0 {
			tid = id
			if !validTransfer.MatchString(id) {
				t.Errorf("transfer id %q refused by the pickup's check", id)
			}
		} else if id != tid {
			t.Errorf("mail %d: transfer %q, want %q", i+1, id, tid)
		}
		if v := pm.text1(t, HeaderSHA256); v != sha256Hex(body) {
			t.Errorf("mail %d: %s %q is not the whole file's", i+1, HeaderSHA256, v)
		}
		if v := pm.text1(t, HeaderSize); v != strconv.Itoa(len(body)) {
			t.Errorf("mail %d: %s %q, want the whole file's %d", i+1, HeaderSize, v, len(body))
		}
		if v := pm.text1(t, HeaderFile); v != name {
			t.Errorf("mail %d: %s %q", i+1, HeaderFile, v)
		}
		s, _ := pm.h.Subject()
		if want := DefaultSubjectPrefix + name + " (part " + pt.String() + ")"; s != want {
			t.Errorf("mail %d: subject %q, want %q", i+1, s, want)
		}
		if subjectFile(s, nil) != name {
			t.Errorf("mail %d: the pickup reads %q from subject %q", i+1, subjectFile(s, nil), s)
		}
		if want := fmt.Sprintf("%s.%03d", name, i+1); pm.attachName != want {
			t.Errorf("mail %d: attachment %q, want %q", i+1, pm.attachName, want)
		}
		if pm.attachType != "application/octet-stream" {
			t.Errorf("mail %d: attachment type %q", i+1, pm.attachType)
		}
		if int64(i+1) < n && int64(len(pm.attach)) != per {
			t.Errorf("mail %d carries %d bytes, want %d", i+1, len(pm.attach), per)
		}
		joined = append(joined, pm.attach...)
	}
	if !bytes.Equal(joined, body) {
		t.Fatalf("joined parts (%d bytes) differ from the file (%d bytes)", len(joined), len(body))
	}
}

// TestSMTPServerSizeWins: a server SIZE below max_message_size splits the file.
func TestSMTPServerSizeWins(t *testing.T) {
	const serverSize = 100 << 10
	srv := startSMTP(t, startTLSSMTP, serverSize)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	body := bigXML(t, 30, 200_000)
	if err := publish(p, outMsg(t, nil, body)); err != nil {
		t.Fatal(err)
	}
	checkParts(t, srv.accepted(), body, "Message_ЦО_ОП.xml", serverSize)
}

// TestSMTPMaxMessageSize: max_message_size: 64KiB and a ~300 KB file.
func TestSMTPMaxMessageSize(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
	body := bigXML(t, 31, 300_000)
	if err := publish(p, outMsg(t, nil, body)); err != nil {
		t.Fatal(err)
	}
	checkParts(t, srv.accepted(), body, "Message_ЦО_ОП.xml", 64<<10)
	p.mu.Lock()
	left := len(p.sent)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("%d transfers still remembered after a complete delivery", left)
	}
}

// TestSMTPTemporaryFailure: 451 at the end of DATA is retried (not
// permanent), names the step, and shows in LastError until a success.
func TestSMTPTemporaryFailure(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	var fail sync.Mutex
	failing := true
	srv.data = func(int, []byte) error {
		fail.Lock()
		defer fail.Unlock()
		if failing {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Queue full, try later"}
		}
		return nil
	}
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	m := outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml"))
	err := publish(p, m)
	if err == nil {
		t.Fatal("delivered although the server answered 451")
	}
	if exchange.IsPermanent(err) {
		t.Errorf("451 made permanent: %v", err)
	}
	if exchange.HasProgressed(err) {
		t.Errorf("a single mail refused with 451 marked Progressed: %v", err)
	}
	if !strings.Contains(err.Error(), "end of DATA") || !strings.Contains(err.Error(), "451") || !strings.Contains(err.Error(), "Queue full, try later") {
		t.Errorf("error %q does not name the step, the code and the server's words", err)
	}
	e, at := p.LastError()
	if e != err.Error() || at.IsZero() {
		t.Errorf("LastError %q at %v after a failure", e, at)
	}
	// the same failure again keeps the time it started
	if err2 := publish(p, m); err2 == nil {
		t.Fatal("delivered although the server answered 451")
	}
	if _, at2 := p.LastError(); !at2.Equal(at) {
		t.Errorf("LastError time moved from %v to %v for the same error", at, at2)
	}

	fail.Lock()
	failing = false
	fail.Unlock()
	if err := publish(p, m); err != nil {
		t.Fatal(err)
	}
	if e, at := p.LastError(); e != "" || !at.IsZero() {
		t.Errorf("LastError %q %v after a success", e, at)
	}
	if n := len(srv.accepted()); n != 1 {
		t.Errorf("%d mails accepted, want 1", n)
	}
}

// TestSMTPRcptRefused: 550 to a recipient dead-letters the message with
// the server's words.
func TestSMTPRcptRefused(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.rcpt = func(to string) error {
		if to == "archive@example.com" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
		}
		return nil
	}
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
	if err == nil {
		t.Fatal("delivered although RCPT was refused")
	}
	if !exchange.IsPermanent(err) {
		t.Errorf("550 to RCPT is not permanent: %v", err)
	}
	for _, w := range []string{"RCPT TO archive@example.com", "550", "No such user here"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if len(srv.tried()) != 0 {
		t.Error("DATA sent after a refused recipient")
	}
}

// TestSMTPDataRefused: a 5xx at the end of DATA is permanent.
func TestSMTPDataRefused(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.data = func(int, []byte) error {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Attachment type refused"}
	}
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
	if !exchange.IsPermanent(err) || !strings.Contains(err.Error(), "end of DATA: 554 Attachment type refused") {
		t.Fatalf("got %v, want a permanent error with the server's words", err)
	}
}

// TestSMTPAuthFailed: a wrong password is the endpoint's trouble: retried.
func TestSMTPAuthFailed(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	cfg := smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "")
	t.Setenv(smtpPassEV, "wrong")
	p := newTestPublisher(t, cfg)
	err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
	if err == nil {
		t.Fatal("delivered with a wrong password")
	}
	if exchange.IsPermanent(err) {
		t.Errorf("a failed AUTH is permanent: %v", err)
	}
	if !strings.Contains(err.Error(), "AUTH") || !strings.Contains(err.Error(), "535") {
		t.Errorf("error %q does not name AUTH and the reply", err)
	}
	mails, auths := srv.counts()
	if mails != 0 || auths != 1 {
		t.Errorf("server saw %d MAIL and %d AUTH, want 0 and 1", mails, auths)
	}
	srv.mu.Lock()
	if len(srv.auths) == 1 && srv.auths[0] != smtpUser+":wrong" {
		t.Errorf("AUTH sent %q", srv.auths[0])
	}
	srv.mu.Unlock()
}

// TestSMTPNoAuthOffered: a user is configured but the server offers no
// AUTH: the delivery fails instead of sending unauthenticated.
func TestSMTPNoAuthOffered(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.noAuth = true
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
	if err == nil || !strings.Contains(err.Error(), "offers no authentication") || exchange.IsPermanent(err) {
		t.Fatalf("got %v", err)
	}
	if mails, _ := srv.counts(); mails != 0 {
		t.Fatal("MAIL sent without AUTH")
	}
}

// failThird is a server's DATA verdict that refuses the third mail of a
// session's life with 451 (temporary) and takes every other.
func failThird(attempt int, _ []byte) error {
	if attempt == 3 {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 5}, Message: "Temporary trouble"}
	}
	return nil
}

// TestSMTPPartRetry: part 3 of 5 fails with 451; a retry soon after sends
// only parts 3..5, under the same transfer id. One more than refreshAfter
// after part 1 sends a copy of part 1 first (restarting the receiver's
// part_timeout), then 3..5. One more than resendAfter after part 1 sends
// them all: the receiver may have given up the set by then, and parts 3..5
// alone would never complete.
func TestSMTPPartRetry(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration
		tried string
	}{
		{"soon", time.Minute, "1/5 2/5 3/5 3/5 4/5 5/5"},
		{"refresh", refreshAfter + time.Minute, "1/5 2/5 3/5 1/5 3/5 4/5 5/5"},
		{"late", resendAfter + time.Minute, "1/5 2/5 3/5 1/5 2/5 3/5 4/5 5/5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const limit = 64 << 10
			per := rawPerMail(limit)
			srv := startSMTP(t, startTLSSMTP, 0)
			srv.data = failThird
			p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
			clock := time.Now()
			p.now = func() time.Time { return clock }
			body := bigXML(t, 32, 4*per+per/2)
			if n := (int64(len(body)) + per - 1) / per; n != 5 {
				t.Fatalf("test body makes %d parts, want 5", n)
			}
			m := outMsg(t, nil, body)
			err := publish(p, m)
			if err == nil {
				t.Fatal("delivered although part 3 failed")
			}
			if exchange.IsPermanent(err) || !strings.Contains(err.Error(), "part 3/5") || !strings.Contains(err.Error(), "451") {
				t.Fatalf("error %v: want a temporary one naming part 3/5", err)
			}
			if !exchange.HasProgressed(err) {
				t.Fatalf("error %v after parts 1 and 2 went through: not marked Progressed, so the next try waits as long as one that got nothing through", err)
			}
			if n := len(srv.accepted()); n != 2 {
				t.Fatalf("%d parts accepted before the failure, want 2", n)
			}
			clock = clock.Add(tc.after)
			if err := publish(p, m); err != nil {
				t.Fatal(err)
			}
			var tried []string
			for _, a := range srv.tried() {
				tried = append(tried, parseMail(t, a.raw).text1(t, HeaderPart))
			}
			if got := strings.Join(tried, " "); got != tc.tried {
				t.Errorf("server saw parts %s, want %s", got, tc.tried)
			}
			checkParts(t, latestCopies(t, srv.accepted()), body, "Message_ЦО_ОП.xml", limit)
		})
	}
}

// TestSMTPPartRetryRateLimited: a server that takes two mails and then
// refuses one (a submission rate limit), tries 40 minutes apart: every try after the
// first sends a fresh copy of part 1, which restarts the receiver's
// part_timeout, and one new part. The set of 8 completes after 4 hours
// without ever beginning again; counted from the set's first part 1, every
// try after the second came more than resendAfter later (found by review:
// the set began again from part 1 every hour and never completed).
func TestSMTPPartRetryRateLimited(t *testing.T) {
	const limit = 64 << 10
	per := rawPerMail(limit)
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.data = func(attempt int, _ []byte) error {
		if attempt%3 == 0 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Rate limit exceeded, try again later"}
		}
		return nil
	}
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
	clock := time.Now()
	p.now = func() time.Time { return clock }
	body := bigXML(t, 32, 7*per+per/2)
	m := outMsg(t, nil, body)
	var err error
	tries := 0
	for ; tries < 20; tries++ {
		if err = publish(p, m); err == nil {
			break
		}
		if !exchange.HasProgressed(err) {
			t.Fatalf("try %d: %v: not marked Progressed although a part went through", tries+1, err)
		}
		clock = clock.Add(40 * time.Minute)
	}
	if err != nil {
		t.Fatalf("not delivered after %d tries: %v", tries, err)
	}
	var tried []string
	for _, a := range srv.accepted() {
		tried = append(tried, parseMail(t, a.raw).text1(t, HeaderPart))
	}
	if got, want := strings.Join(tried, " "), "1/8 2/8 1/8 3/8 1/8 4/8 1/8 5/8 1/8 6/8 1/8 7/8 1/8 8/8"; got != want {
		t.Errorf("server took parts %s, want %s", got, want)
	}
	checkParts(t, latestCopies(t, srv.accepted()), body, "Message_ЦО_ОП.xml", limit)
}

// latestCopies is the latest copy of each part among mails, in part order:
// the set as the receiver joins it.
func latestCopies(t *testing.T, mails []gotMail) []gotMail {
	t.Helper()
	byPart := map[int]gotMail{}
	for _, m := range mails {
		v := parseMail(t, m.raw).text1(t, HeaderPart)
		pt, ok := parsePart(v)
		if !ok {
			t.Fatalf("mail with %s %q", HeaderPart, v)
		}
		byPart[pt.i] = m
	}
	var set []gotMail
	for i := 1; i <= len(byPart); i++ {
		set = append(set, byPart[i])
	}
	return set
}

// TestSMTPCompressZip: compress: zip sends an .xml as Message_A_B.zip with
// one entry, and the sha256 and size headers describe the zip.
func TestSMTPCompressZip(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	cfg := smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "compress: zip\n")
	spool := filepath.Join(t.TempDir(), "spool")
	p, err := NewPublisher("ОП", cfg, spool, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := readFixture(t, "Message_ЦО_ОП.xml")
	if err := publish(p, outMsg(t, nil, body)); err != nil {
		t.Fatal(err)
	}
	got := srv.accepted()
	if len(got) != 1 {
		t.Fatalf("%d mails", len(got))
	}
	pm := parseMail(t, got[0].raw)
	if pm.attachName != "Message_ЦО_ОП.zip" || pm.attachType != "application/zip" {
		t.Errorf("attachment %q %q", pm.attachName, pm.attachType)
	}
	if s, _ := pm.h.Subject(); s != "EXCHANGE_MESSAGE:Message_ЦО_ОП.zip" {
		t.Errorf("subject %q", s)
	}
	if v := pm.text1(t, HeaderFile); v != "Message_ЦО_ОП.zip" {
		t.Errorf("%s %q", HeaderFile, v)
	}
	if v := pm.text1(t, HeaderSHA256); v != sha256Hex(pm.attach) {
		t.Errorf("%s %q is not the zip's sha256", HeaderSHA256, v)
	}
	if v := pm.text1(t, HeaderSize); v != strconv.Itoa(len(pm.attach)) {
		t.Errorf("%s %q is not the zip's size %d", HeaderSize, v, len(pm.attach))
	}
	zr, err := zip.NewReader(bytes.NewReader(pm.attach), int64(len(pm.attach)))
	if err != nil {
		t.Fatal(err)
	}
	if len(zr.File) != 1 || zr.File[0].Name != "Message_ЦО_ОП.xml" {
		t.Fatalf("zip entries %v", zr.File)
	}
	rc, err := zr.File[0].Open()
	if err != nil {
		t.Fatal(err)
	}
	inner, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inner, body) {
		t.Error("zip entry differs from the original xml")
	}
	if left, _ := os.ReadDir(spool); len(left) != 0 {
		t.Errorf("spool keeps %d files after the delivery", len(left))
	}

	// a .zip message goes as it is
	zbody := readFixture(t, "Message_CO_SHOP1.zip")
	h := exchange.Header{ExchangePlan: "Полный", From: "CO", To: "SHOP1", MessageNo: 3}
	if err := publish(p, outMsgAs(context.Background(), h, "Message_CO_SHOP1.zip", zbody)); err != nil {
		t.Fatal(err)
	}
	got = srv.accepted()
	pm = parseMail(t, got[len(got)-1].raw)
	if pm.attachName != "Message_CO_SHOP1.zip" || !bytes.Equal(pm.attach, zbody) || pm.text1(t, HeaderSHA256) != sha256Hex(zbody) {
		t.Errorf("zip message changed on the way: %q, %d bytes", pm.attachName, len(pm.attach))
	}
}

// TestSMTPCancelWhileStalled: a message whose context ends while the
// server sits on the end of DATA returns promptly with an error.
func TestSMTPCancelWhileStalled(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	entered := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var once sync.Once
	srv.data = func(int, []byte) error {
		once.Do(func() { close(entered) })
		<-release
		return nil
	}
	// io_timeout is long: only the cancellation can end the wait
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "io_timeout: 2m\n"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := outMsg(t, ctx, readFixture(t, "Message_ЦО_ОП.xml"))
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- publish(p, m) }()
	select {
	case <-entered:
	case err := <-done:
		t.Fatalf("Publish returned before the server stalled: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the mail never reached the server")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Publish succeeded although cancelled")
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Publish took %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Publish did not return after the context was cancelled")
	}
}

// TestSMTPBadMetadata: a message the delivery cannot even describe is
// dead-lettered, without a connection.
func TestSMTPBadMetadata(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	body := readFixture(t, "Message_ЦО_ОП.xml")
	for name, spoil := range map[string]func(m *message.Message){
		"file name":  func(m *message.Message) { m.Metadata.Set(exchange.MetaFileName, "../Message_ЦО_ОП.xml") },
		"message no": func(m *message.Message) { m.Metadata.Set(exchange.MetaMessageNo, "x") },
		"size":       func(m *message.Message) { m.Metadata.Set(exchange.MetaSize, "") },
	} {
		m := outMsg(t, nil, body)
		spoil(m)
		if err := publish(p, m); !exchange.IsPermanent(err) {
			t.Errorf("%s: got %v, want a permanent error", name, err)
		}
	}
	if mails, _ := srv.counts(); mails != 0 {
		t.Errorf("server saw %d MAIL for messages without valid metadata", mails)
	}
	// a body shorter than its size never counts as delivered (that no
	// truncated mail reaches the server is TestSMTPBrokenBodySendsNothing)
	m := outMsg(t, nil, body)
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)+10))
	if err := publish(p, m); err == nil || exchange.IsPermanent(err) {
		t.Errorf("short body: got %v, want a temporary error", err)
	}
}

// --- defects found while writing these tests, fixed -------------------

// failingReader yields n bytes of r, then an error.
type failingReader struct {
	r io.Reader
	n int
}

func (f *failingReader) Read(b []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("object store went away")
	}
	if len(b) > f.n {
		b = b[:f.n]
	}
	n, err := f.r.Read(b)
	f.n -= n
	return n, err
}

// TestSMTPBrokenBodySendsNothing: a body that fails or ends early while the
// mail is written must not become an accepted (truncated) mail.
func TestSMTPBrokenBodySendsNothing(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), ""))
	body := bigXML(t, 40, 200_000)

	m := outMsg(t, nil, body)
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(&failingReader{r: bytes.NewReader(body), n: 100_000}), nil
	})
	if err := publish(p, m); err == nil {
		t.Fatal("a body read error was not reported")
	}
	if n := len(srv.accepted()); n != 0 {
		t.Errorf("read error mid-body: the server accepted %d truncated mail(s)", n)
	}

	short := outMsg(t, nil, body[:100_000])
	short.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	before := len(srv.accepted())
	if err := publish(p, short); err == nil {
		t.Fatal("a short body was not reported")
	}
	if n := len(srv.accepted()) - before; n != 0 {
		t.Errorf("short body: the server accepted %d truncated mail(s)", n)
	}
}

// TestSMTPDisplayNameAddresses: Validate accepts `Name <addr>` in from and
// to; then the envelope must carry the bare address (or the config must be
// refused up front).
func TestSMTPDisplayNameAddresses(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	cfg := smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "from: \"Relay <relay@example.com>\"\nto: [\"Склад <wh@example.com>\"]\n")
	p, err := NewPublisher("ОП", cfg, t.TempDir(), nil)
	if err != nil {
		if !strings.Contains(err.Error(), "from: ") || !strings.Contains(err.Error(), "to[0]: ") {
			t.Fatalf("config refused, but not for from and to[0]: %v", err)
		}
		return // refusing display names up front is a fix too
	}
	if err := publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml"))); err != nil {
		t.Fatal(err)
	}
	got := srv.accepted()
	if len(got) != 1 || got[0].from != "relay@example.com" || strings.Join(got[0].to, ",") != "wh@example.com" {
		t.Fatalf("envelope %+v", got)
	}
	pm := parseMail(t, got[0].raw)
	if f := addresses(t, pm.h, "From"); len(f) != 1 || f[0] != "relay@example.com" {
		t.Errorf("header From %v", f)
	}
	if to := addresses(t, pm.h, "To"); len(to) != 1 || to[0] != "wh@example.com" {
		t.Errorf("header To %v", to)
	}
}

// TestSMTPConnectTimeoutBoundsGreeting: a server that accepts the
// connection but never greets is given up after connect_timeout, not after
// go-smtp's default 5-minute command timeout.
func TestSMTPConnectTimeoutBoundsGreeting(t *testing.T) {
	addr := loopback.Serve(t, func(net.Conn) {}) // held open, silent
	p := newTestPublisher(t, smtpConf(t, "smtp://relay@"+addr, caFile(t, nil), "connect_timeout: 1s\nio_timeout: 1m\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := publish(p, outMsg(t, ctx, readFixture(t, "Message_ЦО_ОП.xml")))
	if err == nil {
		t.Fatal("delivered to a silent server")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v (%v), want about connect_timeout (1s)", d, err)
	}
}

// TestSMTPPartRetryAfterLimitChange: when the size limit changes between
// attempts (another server behind the name, a smaller SIZE), the retry must
// not mix parts of different sizes under one transfer id.
func TestSMTPPartRetryAfterLimitChange(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.data = failThird
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
	body := bigXML(t, 41, 300_000)
	m := outMsg(t, nil, body)
	if err := publish(p, m); err == nil {
		t.Fatal("part 3 did not fail")
	}
	first := len(srv.accepted())
	p.cfg.MaxMessageSize = 128 << 10 // as if the server's SIZE had changed
	if err := publish(p, m); err != nil {
		t.Fatal(err)
	}
	all := srv.accepted()
	nOf := map[string]string{} // transfer id → part count
	for i, a := range all {
		pm := parseMail(t, a.raw)
		id, v := pm.text1(t, HeaderTransfer), pm.text1(t, HeaderPart)
		pt, _ := parsePart(v)
		if n, ok := nOf[id]; ok && n != strconv.Itoa(pt.n) {
			t.Errorf("mail %d: part %s under transfer %s, which already has parts of %s", i+1, v, id, n)
		}
		nOf[id] = strconv.Itoa(pt.n)
	}
	checkParts(t, all[first:], body, "Message_ЦО_ОП.xml", 128<<10)
}

func TestSMTPCheck(t *testing.T) {
	s := startSMTP(t, startTLSSMTP, 0)
	ca := caFile(t, nil)
	log := slog.New(slog.DiscardHandler)
	if err := CheckSMTP(context.Background(), "ОП", smtpConf(t, smtpURL(s, "smtp"), ca, ""), log); err != nil {
		t.Fatalf("check: %v", err)
	}
	if got := s.tried(); len(got) != 0 {
		t.Fatalf("check sent %d mails", len(got))
	}
	if cmds, auths := s.counts(); cmds != 1 || auths != 1 {
		t.Fatalf("check: %d MAIL, %d AUTH; want 1, 1", cmds, auths)
	}
	s.rcpt = func(to string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user " + to}
	}
	err := CheckSMTP(context.Background(), "ОП", smtpConf(t, smtpURL(s, "smtp"), ca, ""), log)
	if err == nil || !strings.Contains(err.Error(), "RCPT TO wh@example.com") || !strings.Contains(err.Error(), "hint:") {
		t.Fatalf("refused recipient: %v", err)
	}
	s.rcpt = nil
	cfg := smtpConf(t, smtpURL(s, "smtp"), ca, "")
	t.Setenv(smtpPassEV, "wrong")
	if err := CheckSMTP(context.Background(), "ОП", cfg, log); err == nil || !strings.Contains(err.Error(), "hint: wrong user or password") {
		t.Fatalf("wrong password: %v", err)
	}
}

// TestSMTPCompressZipPartRetry: with compress: zip, a retried delivery of a
// split file packs the same zip again, so its parts keep their transfer id
// and the parts the server already took are not sent again (else the
// receiver holds an orphaned half set that dead-letters after part_timeout).
func TestSMTPCompressZipPartRetry(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.data = failThird
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\ncompress: zip\n"))
	clock := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return clock }
	var noise []byte
	for i := 0; len(noise) < 200_000; i++ {
		s := sha256.Sum256([]byte(strconv.Itoa(i)))
		noise = append(noise, s[:]...)
	}
	body := []byte("<v8msg:Message xmlns:v8msg=\"http://v8.1c.ru/messages\"><v8msg:Header><v8msg:ExchangePlan>P</v8msg:ExchangePlan>" +
		"<v8msg:To>ОП</v8msg:To><v8msg:From>ЦО</v8msg:From><v8msg:MessageNo>9</v8msg:MessageNo></v8msg:Header><v8msg:Body>" +
		hex.EncodeToString(noise) + "</v8msg:Body></v8msg:Message>\n")
	m := outMsg(t, nil, body)
	if err := publish(p, m); err == nil {
		t.Fatal("delivered although part 3 failed")
	}
	clock = clock.Add(5 * time.Second) // the pipeline retries later
	if err := publish(p, m); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	var tried []string
	for _, a := range srv.tried() {
		pm := parseMail(t, a.raw)
		ids[pm.text1(t, HeaderTransfer)] = true
		tried = append(tried, pm.text1(t, HeaderPart))
	}
	if len(tried) < 5 || len(ids) != 1 || tried[2] != tried[3] {
		t.Fatalf("server saw parts %v under %d transfer ids; want the retry to go on from part 3 of the same transfer", tried, len(ids))
	}
}

// TestSMTPPartRetryOtherSizeSameCount: the size limit changes between two
// attempts of a split delivery (the server's SIZE differs, max_message_size
// was raised a little) but the part count stays the same. The transfer id
// named only the count, so the retry skipped the parts "already sent"
// although they were cut at other offsets, and the receiver joined parts of
// two cuttings into a dead letter (sha256 mismatch). With the bytes per
// part in the id the second cutting is a transfer of its own, and the
// receiving relay joins it intact.
func TestSMTPPartRetryOtherSizeSameCount(t *testing.T) {
	const limit1, limit2 = 64 << 10, 66 << 10
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.data = failThird
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
	body := bigXML(t, 42, 310_000)
	per1, per2 := rawPerMail(limit1), rawPerMail(limit2)
	n1 := (int64(len(body)) + per1 - 1) / per1
	n2 := (int64(len(body)) + per2 - 1) / per2
	if n1 != n2 || per1 == per2 {
		t.Fatalf("setup: %d bytes make %d parts of %d and %d parts of %d; want the same count", len(body), n1, per1, n2, per2)
	}
	m := outMsg(t, nil, body)
	if err := publish(p, m); err == nil {
		t.Fatal("part 3 did not fail")
	}
	first := len(srv.accepted())
	p.cfg.MaxMessageSize = limit2 // another limit on the retry, same part count
	if err := publish(p, m); err != nil {
		t.Fatal(err)
	}
	checkParts(t, srv.accepted()[first:], body, "Message_ЦО_ОП.xml", limit2)

	// The receiving relay reads everything the server accepted.
	s := startMemIMAP(t, nil)
	for _, a := range srv.accepted() {
		s.add(t, "INBOX", a.raw)
	}
	out, _ := runPickup(t, "ЦО", imapTestConfig(s.addr), config.After{Action: config.AfterDelete}, nil)
	got := next(t, out)
	defer got.Ack()
	if pr := got.Metadata.Get(exchange.MetaProblem); pr != "" {
		t.Fatalf("the delivered message arrived as a dead letter: %s", pr)
	}
	if !bytes.Equal(exchangetest.Body(t, got), body) {
		t.Fatal("joined file differs from the message")
	}
}

// TestSMTPCheckHintNoAuthWithoutSTARTTLS: with starttls: off, a server that
// offers AUTH only after STARTTLS fails the check with an error that says
// so; the hint matched "STARTTLS" in it first and told the administrator
// the opposite ("the server offers no STARTTLS here").
func TestSMTPCheckHintNoAuthWithoutSTARTTLS(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0) // STARTTLS offered, AUTH only after it
	cfg := smtpConf(t, smtpURL(srv, "smtp"), "", "starttls: off\n")
	err := CheckSMTP(context.Background(), "ОП", cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("check passed without AUTH")
	}
	if msg := err.Error(); strings.Contains(msg, "offers no STARTTLS") || !strings.Contains(msg, "AUTH only after STARTTLS") {
		t.Fatalf("misleading hint for a server that does offer STARTTLS: %v", err)
	}
}

// TestHint: each failing step gets its own advice, whatever else its
// error mentions.
func TestHint(t *testing.T) {
	for msg, want := range map[string]string{
		"smtp ОП: AUTH: the server offers no authentication (on a plain connection many offer it only after STARTTLS)": "AUTH only after STARTTLS",
		"smtp ОП: STARTTLS: smtp: server doesn't support STARTTLS":                                                     "offers no STARTTLS here",
		"smtp ОП: STARTTLS: tls: failed to verify certificate: x509: certificate signed by unknown authority":          "ca_file",
		"imap ЦО: LOGIN as relay: NO [AUTHENTICATIONFAILED] Invalid credentials":                                       "wrong user or password",
	} {
		if got := hint(errors.New(msg)); !strings.Contains(got, want) {
			t.Errorf("hint(%q) = %q, want it to say %q", msg, got, want)
		}
	}
}

// TestSMTPCheckDisplayNameAddresses proves that relay check probes the
// envelope the delivery sends: from: and to: may carry a display name
// ("Склад <wh@example.com>", accepted by validation and by the delivery,
// which sends the bare address), and the check used to send
// MAIL FROM:<Relay <relay@example.com>> and fail a config that works.
func TestSMTPCheckDisplayNameAddresses(t *testing.T) {
	s := startSMTP(t, startTLSSMTP, 0)
	var rcpts []string
	s.rcpt = func(to string) error { rcpts = append(rcpts, to); return nil }
	cfg := smtpConf(t, smtpURL(s, "smtp"), caFile(t, nil), "from: \"Relay <relay@example.com>\"\nto: [\"Склад <wh@example.com>\"]\n")
	// The delivery takes this config: envelope relay@example.com → wh@example.com.
	if err := publish(newTestPublisher(t, cfg), outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml"))); err != nil {
		t.Fatalf("delivery: %v", err)
	}
	if got := s.accepted(); len(got) != 1 || got[0].from != "relay@example.com" {
		t.Fatalf("delivery envelope: %+v", got)
	}
	rcpts = nil
	if err := CheckSMTP(context.Background(), "ОП", cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("relay check fails a delivery config that works: %v", err)
	}
	if len(rcpts) != 1 || rcpts[0] != "wh@example.com" {
		t.Fatalf("check probed RCPT TO %q, the delivery sends RCPT TO wh@example.com", rcpts)
	}
}

// digestAtEOF serves data and checks its sha256 only when asked for more
// after the last byte, as bus.payloadReader (OpenKnownPayload) does: a
// damaged payload shows only at its end.
type digestAtEOF struct {
	r    *bytes.Reader
	sum  [32]byte
	want string
}

func (d *digestAtEOF) Read(b []byte) (int, error) {
	if d.r.Len() == 0 {
		return 0, d.end()
	}
	return d.r.Read(b)
}

func (d *digestAtEOF) end() error {
	if got := hex.EncodeToString(d.sum[:]); got != d.want {
		return exchange.Permanent(fmt.Errorf("payload: %w: digest %s, want %s", exchange.ErrDamaged, got, d.want))
	}
	return io.EOF
}

// TestSMTPDamagedPayloadExactMultipleOfPart: a stored payload whose bytes
// are damaged (same size, another sha256) is found out by the object store
// only when it is read to its end. The whole-mail path reads to the end
// (LimitReader size+1) and the HTTP delivery holds back the last byte
// (exchange.WholeReader); the split path reads each part with
// LimitReader(body, per), so when the file is an exact multiple of the part
// size the end was never read, the last part was ended with 250 and
// Publish returned nil: the message counted as delivered while the
// receiving relay joined a file whose sha256 did not match (found by
// review). The last part now reads past its end.
func TestSMTPDamagedPayloadExactMultipleOfPart(t *testing.T) {
	const limit = 64 << 10
	per := rawPerMail(limit)
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))

	good := bytes.Repeat([]byte("0123456789abcdef"), int(2*per/16+1))[:2*per]
	bad := bytes.Clone(good)
	bad[per+100] ^= 0xff // damaged in storage: same size, another sha256
	h := exchange.Header{ExchangePlan: "Магазины", From: "ЦО", To: "ОП", MessageNo: 50}
	m := outMsgAs(context.Background(), h, "Message_ЦО_ОП.xml", good)
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(&digestAtEOF{r: bytes.NewReader(bad), sum: sha256.Sum256(bad), want: sha256Hex(good)}), nil
	})
	err := publish(p, m)
	got := srv.accepted()
	if err == nil {
		t.Fatalf("Publish returned nil (delivered) for a damaged payload; the server accepted %d of 2 parts, the receiver will find sha256 %s instead of %s",
			len(got), sha256Hex(bad), sha256Hex(good))
	}
	if !errors.Is(err, exchange.ErrDamaged) {
		t.Errorf("error %v is not the store's damage", err)
	}
	if len(got) == 2 {
		t.Errorf("the server holds a complete (damaged) set")
	}

	// Control: one byte shorter than the exact multiple, the last part
	// reads past its end and the damage is found.
	good2, bad2 := good[:2*per-1], bad[:2*per-1]
	m2 := outMsgAs(context.Background(), exchange.Header{ExchangePlan: "Магазины", From: "ЦО", To: "ОП", MessageNo: 51}, "Message_ЦО_ОП.xml", good2)
	exchange.SetBody(m2, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(&digestAtEOF{r: bytes.NewReader(bad2), sum: sha256.Sum256(bad2), want: sha256Hex(good2)}), nil
	})
	if err := publish(p, m2); !errors.Is(err, exchange.ErrDamaged) {
		t.Errorf("control (size not a multiple of the part): %v", err)
	}
}

// TestSMTPLongTryRefreshesPart1: on a slow uplink one try of a split
// delivery takes longer than resendAfter (here each accepted part costs 3
// minutes; a 10 MiB mail at 512 kbit/s takes about that), and the server
// takes at most 30 mails per session (then 451: a session or rate limit).
// Each retry found part 1 "older than an hour" and began the set again
// from part 1: the same 30 parts again and again, the set of 40 never
// complete, the mailbox filling with copies (found by review). A try now
// ends when part 1 is due a refresh, and the next sends it first.
func TestSMTPLongTryRefreshesPart1(t *testing.T) {
	const limit = 64 << 10
	per := rawPerMail(limit)
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
	var mu sync.Mutex
	clock := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	p.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	inSession := 0
	srv.data = func(int, []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if inSession == 30 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many messages in this session, try again later"}
		}
		inSession++
		clock = clock.Add(3 * time.Minute) // upload time of one part
		return nil
	}
	body := bigXML(t, 60, 39*per+per/2)
	if n := (int64(len(body)) + per - 1) / per; n != 40 {
		t.Fatalf("setup: %d parts, want 40", n)
	}
	tries, err := tryDelivery(t, p, outMsg(t, nil, body), 6, func() {
		mu.Lock()
		inSession = 0
		clock = clock.Add(time.Second) // a try that got parts through is retried after 1 s
		mu.Unlock()
	})
	var parts []string
	for _, a := range srv.accepted() {
		parts = append(parts, parseMail(t, a.raw).text1(t, HeaderPart))
	}
	if err != nil {
		first := strings.Join(parts[:min(len(parts), 3)], " ")
		t.Fatalf("a set of 40 parts whose every try got 30 parts through is still not delivered after %d tries (%d mails accepted, %d of them part 1; each try began again with %s ...): a try longer than resendAfter throws away its own progress, so a slow link never completes the set; last error: %v",
			tries, len(parts), strings.Count(" "+strings.Join(parts, " ")+" ", " 1/40 "), first, err)
	}
	checkParts(t, latestCopies(t, srv.accepted()), body, "Message_ЦО_ОП.xml", limit)
}

// TestSMTPCyrillicDomain: `to: [obmen@склад.рф]` (a .рф domain, as many
// Russian offices have) went as raw UTF-8 in RCPT TO and the To header to
// a server that announced no SMTPUTF8, which answers 501 5.1.3: every
// message to the node was a dead letter (found by review). The domain goes
// in its ASCII form (IDNA) now.
func TestSMTPCyrillicDomain(t *testing.T) {
	srv := startSMTP(t, startTLSSMTP, 0)
	srv.rcpt = func(to string) error {
		for _, c := range []byte(to) {
			if c >= 0x80 {
				// what a server without SMTPUTF8 answers
				return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
			}
		}
		return nil
	}
	cfg := smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "to: [\"obmen@склад.рф\"]\n")
	p, err := NewPublisher("ОП", cfg, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = publish(p, outMsg(t, nil, readFixture(t, "Message_ЦО_ОП.xml")))
	if err != nil {
		t.Fatalf("a recipient accepted by the config cannot be delivered to (permanent=%v, every message dead-lettered): %v; the envelope went as raw UTF-8 to a server without SMTPUTF8 instead of obmen@xn--80aiqe2a.xn--p1ai", exchange.IsPermanent(err), err)
	}
	got := srv.accepted()
	if len(got) != 1 || fmt.Sprint(got[0].to) != "[obmen@xn--80aiqe2a.xn--p1ai]" {
		t.Fatalf("accepted %+v: want one mail to obmen@xn--80aiqe2a.xn--p1ai", got)
	}
	for i, c := range got[0].raw {
		if c >= 0x80 {
			t.Fatalf("byte %d of the mail is %#x: the To header carries the raw 8-bit address (%s)", i, c, fmt.Sprint(got[0].to))
		}
	}
}

// TestSMTPSlowPartsComplete: on a slow uplink a single part takes longer
// than refreshAfter (31 minutes here: a 10 MiB mail at ~45 kbit/s). With
// part 1's age counted from before its own upload, each try sent part 1,
// found it due a refresh before part 2 and stopped: the set never
// completed (found by review of the mid-try stop). It counts from the end
// of the upload now.
func TestSMTPSlowPartsComplete(t *testing.T) {
	const limit = 64 << 10
	per := rawPerMail(limit)
	srv := startSMTP(t, startTLSSMTP, 0)
	p := newTestPublisher(t, smtpConf(t, smtpURL(srv, "smtp"), caFile(t, nil), "max_message_size: 64KiB\n"))
	var mu sync.Mutex
	clock := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	p.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	srv.data = func(int, []byte) error {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(31 * time.Minute) // upload time of one part on a slow line
		return nil
	}
	body := bigXML(t, 60, 2*per+per/2)
	if n := (int64(len(body)) + per - 1) / per; n != 3 {
		t.Fatalf("setup: %d parts, want 3", n)
	}
	tries, err := tryDelivery(t, p, outMsg(t, nil, body), 8, func() {
		mu.Lock()
		clock = clock.Add(time.Second) // a try that got parts through is retried at once
		mu.Unlock()
	})
	if err != nil {
		var parts []string
		for _, a := range srv.accepted() {
			parts = append(parts, parseMail(t, a.raw).text1(t, HeaderPart))
		}
		t.Fatalf("a 3-part set whose parts each take 31 min to upload is not delivered after %d tries: mails accepted %v (only part 1, again and again): the refresh stop fires right after part 1 whenever one part takes longer than refreshAfter, so the set never completes; last error: %v",
			tries, strings.Join(parts, " "), err)
	}
}

// TestSMTPAsciiAddressesValid: addresses that need no IDNA at all (an
// address literal, as offices without DNS MX use, and a host name with an
// underscore, common for Windows/AD hosts) are taken as they are; the IDNA
// Lookup profile (STD3 rules) refused them (found by review).
func TestSMTPAsciiAddressesValid(t *testing.T) {
	for _, to := range []string{"obmen@[192.168.10.5]", "obmen@mail_srv.corp.local"} {
		cfg := smtpConf(t, "smtp://relay@127.0.0.1:2525", "", "to: [\""+to+"\"]\n")
		errs := cfg.Validate()
		for _, err := range errs {
			if strings.Contains(err.Error(), to) {
				t.Errorf("to: %s (pure ASCII, no IDNA needed, accepted before) is refused by Validate: %v", to, err)
			}
		}
	}
}

// tryDelivery publishes m up to n times, calling before ahead of each try,
// as the pipeline retries a delivery that got parts through; it returns
// the tries made and the last error. A permanent error ends the test.
func tryDelivery(t *testing.T, p *Publisher, m *message.Message, n int, before func()) (tries int, err error) {
	t.Helper()
	for ; tries < n; tries++ {
		before()
		if err = publish(p, m); err == nil {
			return tries, nil
		}
		if exchange.IsPermanent(err) {
			t.Fatalf("try %d: permanent %v", tries+1, err)
		}
	}
	return tries, err
}
