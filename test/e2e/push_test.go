package e2e

// The HTTP API as nodes use it, with curl as the independent client: push a
// message (raw and multipart), pull a node's mailbox and acknowledge, a
// pull not acknowledged is offered again after its lease, node tokens bound
// to their node, bad input refused with the right status and nothing
// stored, and SIGKILL between a push's 202 and the delivery loses nothing.

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
)

const (
	mobTokenEnv = "RELAY_E2E_MOB_TOKEN"
	mobToken    = "mob-secret-token-1"
)

// pushSite has ЦО and ОП on folders and MOB, a node that pushes and pulls
// over HTTP with its own token; pushes are limited to 1 MiB.
func pushSite(t *testing.T, lease string) *site {
	t.Helper()
	s := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "ОП"},
		nodeSpec{code: "MOB", pickupYAML: "", deliverYAML: fmt.Sprintf("{ http_pull: { lease: %s } }", lease)})
	b, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "  listen: ", "  max_message_size: 1MiB\n  listen: ", 1)
	cfg = strings.Replace(cfg, "    deliver: { http_pull:", "    api_token_env: "+mobTokenEnv+"\n    deliver: { http_pull:", 1)
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// curlDo runs curl and returns the HTTP status, the headers and the body.
func curlDo(t testing.TB, args ...string) (int, http.Header, []byte) {
	t.Helper()
	dir := t.TempDir()
	hdrFile, bodyFile := filepath.Join(dir, "h"), filepath.Join(dir, "b")
	all := append([]string{"--noproxy", "*", "-sS", "--max-time", "30", "-D", hdrFile, "-o", bodyFile, "-w", "%{http_code}"}, args...)
	out, err := exec.Command("curl", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	code, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	body, _ := os.ReadFile(bodyFile)
	raw, _ := os.ReadFile(hdrFile)
	h := http.Header{}
	for _, line := range strings.Split(string(raw), "\r\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			h.Add(k, v)
		}
	}
	return code, h, body
}

func TestPushAndPull(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		missingServer(t, "curl not installed")
	}
	s := pushSite(t, "2s")
	s.start(t)
	base := "http://" + s.listen
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Raw push from loopback without a token (the operator), name from the header.
	toOP := fxXML(t, header("ЦО", "ОП", 1, 0), 50000)
	code, _, body := curlDo(t, "-X", "POST", "-H", "Content-Type: application/xml", "--data-binary", "@"+write("a.xml", toOP), base+"/api/v1/messages")
	var rep api.PushReply
	if code != http.StatusAccepted || json.Unmarshal(body, &rep) != nil || rep.File != "Message_ЦО_ОП.xml" || rep.MessageNo != 1 || rep.ID == "" {
		t.Fatalf("push: %d %s", code, body)
	}
	dst := filepath.Join(s.in("ОП"), "Message_ЦО_ОП.xml")
	if !fxAwait(10*time.Second, func() bool { return readNo(dst) == 1 }) || fxFileSum(dst) != fxSum(toOP) {
		t.Fatalf("pushed message not delivered identical to %s", dst)
	}

	// Multipart push of a zip for MOB, then MOB pulls it.
	toMOB := fxZip(t, header("ЦО", "MOB", 4, 0), 80000)
	code, _, body = curlDo(t, "-F", "file=@"+write("Message_ЦО_MOB.zip", toMOB), base+"/api/v1/messages")
	if code != http.StatusAccepted {
		t.Fatalf("multipart push: %d %s", code, body)
	}
	auth := "Authorization: Bearer " + mobToken
	var got []byte
	var hdr http.Header
	if !fxAwait(10*time.Second, func() bool {
		code, hdr, got = curlDo(t, "-H", auth, base+"/api/v1/nodes/MOB/messages/next")
		return code == http.StatusOK
	}) {
		t.Fatalf("MOB's message never offered: last status %d %s", code, got)
	}
	id := hdr.Get("Relay-Message-Id")
	if !bytes.Equal(got, toMOB) || id == "" || hdr.Get("X-Relay-Message-No") != "4" || !strings.Contains(hdr.Get("Content-Disposition"), "Message_") {
		t.Fatalf("pulled %d bytes (want %d identical), headers %v", len(got), len(toMOB), hdr)
	}
	// Leased: not offered to another pull now...
	if code, _, _ := curlDo(t, "-H", auth, base+"/api/v1/nodes/MOB/messages/next"); code != http.StatusNoContent {
		t.Fatalf("second pull within the lease: %d, want 204", code)
	}
	// ...but again once the 2 s lease ran out without an ack.
	time.Sleep(2500 * time.Millisecond)
	code, hdr, got = curlDo(t, "-H", auth, base+"/api/v1/nodes/MOB/messages/next")
	if code != http.StatusOK || hdr.Get("Relay-Message-Id") != id || !bytes.Equal(got, toMOB) {
		t.Fatalf("after the lease: %d, id %q (want %q)", code, hdr.Get("Relay-Message-Id"), id)
	}
	if c := channel(t, s, "ЦО", "MOB"); c.DeliveredNo != 0 {
		t.Fatalf("delivered before the ack: %+v", c)
	}
	if code, _, body := curlDo(t, "-X", "POST", "-H", auth, base+"/api/v1/nodes/MOB/messages/"+id+"/ack"); code != http.StatusOK {
		t.Fatalf("ack: %d %s", code, body)
	}
	if !fxAwait(10*time.Second, func() bool { return deliveredNo(t, s, "ЦО", "MOB") == 4 }) {
		t.Fatalf("ack did not complete the delivery: %+v", channel(t, s, "ЦО", "MOB"))
	}
	if code, _, _ := curlDo(t, "-X", "POST", "-H", auth, base+"/api/v1/nodes/MOB/messages/"+id+"/ack"); code != http.StatusNotFound {
		t.Errorf("second ack: %d, want 404", code)
	}
	if code, _, _ := curlDo(t, "-H", auth, base+"/api/v1/nodes/MOB/messages/next"); code != http.StatusNoContent {
		t.Errorf("empty mailbox: %d, want 204", code)
	}

	// MOB pushes its own message with its token; not one from ЦО.
	fromMOB := fxXML(t, header("MOB", "ЦО", 2, 4), 3000)
	if code, _, body := curlDo(t, "-H", auth, "--data-binary", "@"+write("m.xml", fromMOB), base+"/api/v1/messages?name=Message_MOB_ЦО.xml"); code != http.StatusAccepted {
		t.Fatalf("MOB's own push: %d %s", code, body)
	}
	if !fxAwait(10*time.Second, func() bool { return readNo(filepath.Join(s.in("ЦО"), "Message_MOB_ЦО.xml")) == 2 }) {
		t.Fatal("MOB's message not delivered")
	}
	if c := channel(t, s, "ЦО", "MOB"); c.AckedNo != 4 {
		t.Errorf("MOB's ReceivedNo 4 did not acknowledge ЦО→MOB: %+v", c)
	}
	status := func(args ...string) int {
		code, _, _ := curlDo(t, args...)
		return code
	}
	asCO := fxXML(t, header("ЦО", "ОП", 9, 0), 3000)
	for _, c := range []struct {
		what string
		want int
		args []string
	}{
		{"node token sending as another node", http.StatusForbidden, []string{"-H", auth, "--data-binary", "@" + write("co.xml", asCO), base + "/api/v1/messages"}},
		{"wrong token", http.StatusUnauthorized, []string{"-H", "Authorization: Bearer nope", "--data-binary", "@" + write("co2.xml", asCO), base + "/api/v1/messages"}},
		{"pull without the node's token", http.StatusForbidden, []string{base + "/api/v1/nodes/MOB/messages/next"}},
		{"pull another node's mailbox", http.StatusForbidden, []string{"-H", auth, base + "/api/v1/nodes/ОП/messages/next"}},
		{"node token on an operator endpoint", http.StatusForbidden, []string{"-H", auth, base + "/api/v1/dead"}},
		{"not XML", http.StatusBadRequest, []string{"--data-binary", "@../../testdata/fixtures/bad/not_xml.xml", base + "/api/v1/messages"}},
		{"no header", http.StatusBadRequest, []string{"--data-binary", "@../../testdata/fixtures/bad/no_header.xml", base + "/api/v1/messages"}},
		{"truncated", http.StatusBadRequest, []string{"--data-binary", "@../../testdata/fixtures/bad/truncated.xml", base + "/api/v1/messages"}},
		{"path traversal in a zip", http.StatusBadRequest, []string{"--data-binary", "@../../testdata/fixtures/bad/traversal.zip", base + "/api/v1/messages"}},
		{"zip bomb", http.StatusBadRequest, []string{"--data-binary", "@" + write("bomb.zip", zipBomb(t)), base + "/api/v1/messages"}},
		{"name contradicts the header", http.StatusBadRequest, []string{"--data-binary", "@" + write("x.xml", asCO), base + "/api/v1/messages?name=Message_ОП_ЦО.xml"}},
		{"unknown sender", http.StatusBadRequest, []string{"--data-binary", "@" + write("u.xml", fxXML(t, header("NOPE", "ОП", 1, 0), 100)), base + "/api/v1/messages"}},
		{"over max_message_size", http.StatusRequestEntityTooLarge, []string{"--data-binary", "@" + write("big.xml", fxXML(t, header("ЦО", "ОП", 10, 0), 2<<20)), base + "/api/v1/messages"}},
	} {
		if got := status(c.args...); got != c.want {
			t.Errorf("%s: %d, want %d", c.what, got, c.want)
		}
	}

	// A client that goes away mid-body: nothing stored, the relay serves on.
	conn, err := net.Dial("tcp", s.listen)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\nContent-Length: 500000\r\n\r\n")
	conn.Write(toOP[:20000])
	conn.Close()
	time.Sleep(300 * time.Millisecond)

	if d := fxDead(t, s); len(d) != 0 {
		t.Errorf("bad pushes were stored as dead letters: %+v", d)
	}
	if c := channel(t, s, "ЦО", "ОП"); c.PickedNo != 1 || c.DeliveredNo != 1 {
		t.Errorf("refused pushes changed ЦО→ОП: %+v", c)
	}
	if left, _ := filepath.Glob(filepath.Join(s.root, "data", "spool", "api", "*")); len(left) != 0 {
		t.Errorf("spool files left: %v", left)
	}
	if code, _, _ := curlDo(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("relay not ready after the bad input: %d", code)
	}
	code, _, body = curlDo(t, base+"/api/v1/openapi.json")
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &doc) != nil || doc.Paths["/api/v1/messages"] == nil || doc.Paths["/api/v1/nodes/{code}/messages/next"] == nil {
		t.Errorf("openapi.json: %d, %d paths", code, len(doc.Paths))
	}
}

// zipBomb is a small zip whose one entry inflates far beyond the ratio limit.
func zipBomb(t testing.TB) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	w, err := zw.Create("Message_ЦО_ОП.xml")
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range 64 {
		w.Write(zeros)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPushCrash: the relay is SIGKILLed right after answering 202 to a
// push; after a restart the message is there for the node to pull.
func TestPushCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("SIGKILL crash test skipped under -short")
	}
	sideBySide(t)
	if _, err := exec.LookPath("curl"); err != nil {
		missingServer(t, "curl not installed")
	}
	bin := buildRelay(t)
	s := pushSite(t, "1m")
	rp := newRelayProc(t, bin, s)
	rp.start()
	base := "http://" + s.listen
	if !fxAwait(30*time.Second, func() bool { return fxNodesOK(s) }) {
		t.Fatal("relay not ready")
	}
	dir := t.TempDir()
	// relay send: one good file is stored and delivered, a bad one is refused.
	good := filepath.Join(dir, "Message_ЦО_ОП.xml")
	os.WriteFile(good, fxXML(t, header("ЦО", "ОП", 1, 0), 5000), 0o644)
	out, err := exec.Command(bin, "send", "-c", s.cfg, good, "../../testdata/fixtures/bad/not_xml.xml").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "stored as") || !strings.Contains(string(out), "not_xml.xml: ") {
		t.Fatalf("relay send: %v\n%s", err, out)
	}
	if !fxAwait(10*time.Second, func() bool { return readNo(filepath.Join(s.in("ОП"), "Message_ЦО_ОП.xml")) == 1 }) {
		t.Fatalf("relay send: not delivered\n%s", out)
	}
	sums := map[uint64]string{}
	for no := uint64(1); no <= 3; no++ {
		data := fxXML(t, header("ЦО", "MOB", no, 0), 100000+int64(no))
		p := filepath.Join(dir, fmt.Sprintf("m%d.xml", no))
		os.WriteFile(p, data, 0o644)
		code, _, body := curlDo(t, "--data-binary", "@"+p, base+"/api/v1/messages")
		rp.kill() // right after the 202
		if code != http.StatusAccepted {
			t.Fatalf("push %d: %d %s", no, code, body)
		}
		sums[no] = fxSum(data)
		rp.start()
		if !fxAwait(30*time.Second, func() bool { return fxNodesOK(s) }) {
			t.Fatal("relay not ready after restart")
		}
	}
	// latest mode: No 3 supersedes 1 and 2; it must be there. A message a
	// killed relay was delivering (parked for the pull) comes back after
	// JetStream's AckWait, 30 s.
	auth := "Authorization: Bearer " + mobToken
	var got []byte
	var hdr http.Header
	if !fxAwait(60*time.Second, func() bool {
		var code int
		code, hdr, got = curlDo(t, "-H", auth, base+"/api/v1/nodes/MOB/messages/next")
		return code == http.StatusOK && hdr.Get("X-Relay-Message-No") == "3"
	}) {
		t.Fatalf("No 3 not offered after the crashes; last headers %v", hdr)
	}
	if fxSum(got) != sums[3] {
		t.Fatal("pulled No 3 differs from what was pushed")
	}
	if code, _, body := curlDo(t, "-X", "POST", "-H", auth, base+"/api/v1/nodes/MOB/messages/"+hdr.Get("Relay-Message-Id")+"/ack"); code != http.StatusOK {
		t.Fatalf("ack: %d %s", code, body)
	}
	if !fxAwait(10*time.Second, func() bool { return deliveredNo(t, s, "ЦО", "MOB") == 3 }) {
		t.Fatalf("not delivered: %+v", channel(t, s, "ЦО", "MOB"))
	}
}
