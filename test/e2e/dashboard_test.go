package e2e

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/pipeline"
)

// headless runs Debian's chromium headless on url with extra flags (a DOM
// dump or a screenshot) and returns its stdout. chromium forks helpers; it
// runs in its own process group, which is killed by PID when it is done.
func headless(t testing.TB, url string, flags ...string) string {
	t.Helper()
	bin := ""
	for _, b := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(b); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		missingServer(t, "chromium not installed; scripts/test.sh installs it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// No traffic but to 127.0.0.1: Chromium's background services (network
	// time, component updates, spelling dictionaries) reached for Google
	// hosts and made DNS lookups (found by review).
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=8000"}, flags...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	// Its group goes with the test binary too, killed or timed out.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind
	}
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	return string(out)
}

// TestDashboard loads the dashboard in a real browser: every node is shown,
// a flowing channel as flowing and a channel whose destination fails as
// failing, its error on the page without the text direction mark its
// folder's name holds (it would show the rest of the error reversed).
// A sequential node's next number waiting for it to read the one in its
// folder is waiting, not failing. A channel whose dead letter was dropped
// is not shown as dead any more (found walking through the quick start:
// the count of dead letters ever made it dead for good); one whose letter
// is there is.
func TestDashboard(t *testing.T) {
	s := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "SHOP1"}, nodeSpec{code: "WH", deliverYAML: "{ dir: \"./WH/in\u202eput\" }"},
		nodeSpec{code: "ОП", mode: "sequential"}, nodeSpec{code: "R1", noDeliver: true}, nodeSpec{code: "R2", noDeliver: true})
	s.start(t)
	whIn := filepath.Join(s.root, "WH", "in\u202eput")
	if err := os.RemoveAll(whIn); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(whIn, []byte("not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := exchange.FileName("ЦО", "SHOP1", exchange.FormatXML)
	os.WriteFile(filepath.Join(s.out("ЦО"), ok), fxXML(t, header("ЦО", "SHOP1", 1, 0), 1000), 0o644)
	os.WriteFile(filepath.Join(s.out("ЦО"), exchange.FileName("ЦО", "WH", exchange.FormatXML)), fxXML(t, header("ЦО", "WH", 1, 0), 1000), 0o644)
	// Dead letters at route (R1 and R2 cannot receive); R1's is dropped.
	for _, to := range []string{"R1", "R2"} {
		os.WriteFile(filepath.Join(s.out("ЦО"), exchange.FileName("ЦО", to, exchange.FormatXML)), fxXML(t, header("ЦО", to, 1, 0), 1000), 0o644)
	}
	var letters []pipeline.DeadLetter
	waitFor(t, 15*time.Second, "two dead letters", func() bool { letters = fxDead(t, s); return len(letters) == 2 })
	for _, l := range letters {
		if l.Header != nil && l.Header.To == "R1" {
			if err := api.NewClient(s.listen, "").DropDead(context.Background(), l.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	op := exchange.FileName("ЦО", "ОП", exchange.FormatXML)
	for no := uint64(1); no <= 2; no++ {
		os.WriteFile(filepath.Join(s.out("ЦО"), op), fxXML(t, header("ЦО", "ОП", no, 0), 1000), 0o644)
		waitFor(t, 10*time.Second, "ЦО→ОП taken", func() bool { return gone(filepath.Join(s.out("ЦО"), op)) })
	}
	if !fxAwait(15*time.Second, func() bool {
		return readNo(filepath.Join(s.in("SHOP1"), ok)) == 1 && channelSoFar(t, s, "ЦО", "WH").LastError != "" &&
			strings.HasPrefix(channelSoFar(t, s, "ЦО", "ОП").LastError, "waiting: ")
	}) {
		t.Fatalf("setup: %+v", fxNodes(t, s))
	}

	dom := headless(t, "http://"+s.listen+"/", "--dump-dom")
	for _, code := range []string{"ЦО", "SHOP1", "WH"} {
		if !strings.Contains(dom, `data-node="`+code+`"`) {
			t.Errorf("node %s not on the page", code)
		}
	}
	for ch, want := range map[string]string{"ЦО→SHOP1": "flowing", "ЦО→WH": "failing", "ЦО→ОП": "waiting", "ЦО→R1": "flowing", "ЦО→R2": "dead"} {
		re := regexp.MustCompile(`data-channel="` + ch + `" data-state="([a-z]+)"`)
		m := re.FindStringSubmatch(dom)
		if m == nil || m[1] != want {
			t.Errorf("channel %s shown as %v, want %s", ch, m, want)
		}
	}
	if !strings.Contains(dom, "not a directory") || !strings.Contains(dom, "in put") {
		t.Errorf("the failing channel's error is not on the page, or not with its folder's name blanked")
	}
	if strings.ContainsRune(dom, '\u202e') {
		t.Errorf("the page shows a right-to-left override")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}
	// The node page lists the node's recent events.
	page := headless(t, "http://"+s.listen+"/?node="+url.QueryEscape("ЦО"), "--dump-dom")
	if !strings.Contains(page, `data-step="picked_up"`) {
		t.Errorf("node page of ЦО shows no picked_up event:\n%s", page)
	}
	// RELAY_DASHBOARD_SCREENSHOT=path keeps a picture (the README's).
	if shot := os.Getenv("RELAY_DASHBOARD_SCREENSHOT"); shot != "" {
		headless(t, "http://"+s.listen+"/", "--screenshot="+shot, "--window-size=1100,700", "--hide-scrollbars")
	}
}
