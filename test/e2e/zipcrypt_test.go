package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// encryptedZip writes the exchange message h as a password-protected zip
// (Info-ZIP's traditional encryption, as 1C's default archive password
// writes it) named for its channel in dir, and returns its path.
func encryptedZip(t *testing.T, dir string, h exchange.Header, password string) string {
	t.Helper()
	zipBin, err := exec.LookPath("zip")
	if err != nil {
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") != "" {
			t.Fatal("zip (Info-ZIP) is not installed; scripts/test.sh installs it")
		}
		t.Skip("zip (Info-ZIP) is not installed")
	}
	work := t.TempDir()
	xml, err := exchangetest.WriteFile(work, h, 20<<10, exchange.FormatXML)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(work, "out.zip")
	if out, err := exec.Command(zipBin, "-q", "-j", "-P", password, tmp, xml).CombinedOutput(); err != nil {
		t.Fatalf("zip -P: %v: %s", err, out)
	}
	dst := filepath.Join(dir, exchange.FileName(h.From, h.To, exchange.FormatZip))
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestPasswordProtectedZip: 1C's archive password. A head office (CO) and
// two offices, each office's password on its own node: CO's zip to SHOP1,
// encrypted with SHOP1's password, and SHOP1's reply are read with it and
// delivered byte-identical; a zip with a password nobody configured becomes
// a dead letter that says so; zips between nodes without any password are
// routed by their file names (DESIGN §2).
func TestPasswordProtectedZip(t *testing.T) {
	t.Setenv("RELAY_E2E_ZIP_CO", "head-office-secret")
	t.Setenv("RELAY_E2E_ZIP_SHOP1", "shop1-secret")
	s := newSite(t,
		nodeSpec{code: "CO", extraYAML: "zip_password_env: RELAY_E2E_ZIP_CO"},
		nodeSpec{code: "SHOP1", extraYAML: "zip_password_env: RELAY_E2E_ZIP_SHOP1"},
		nodeSpec{code: "SHOP2"}, nodeSpec{code: "SHOP3"})
	s.start(t)
	cl := api.NewClient(s.listen, "")

	for _, c := range []struct {
		from, to, password string
	}{
		{"CO", "SHOP1", "shop1-secret"},       // the addressee's password
		{"SHOP1", "CO", "shop1-secret"},       // the sender's
		{"CO", "SHOP2", "head-office-secret"}, // the sender's; SHOP2 has none
	} {
		src := encryptedZip(t, s.out(c.from), header(c.from, c.to, 3, 1), c.password)
		want := sha(t, src)
		dst := filepath.Join(s.in(c.to), filepath.Base(src))
		waitFor(t, 20*time.Second, c.from+"→"+c.to+" delivered", func() bool {
			_, err := os.Stat(dst)
			return err == nil
		})
		if got := sha(t, dst); got != want {
			t.Fatalf("%s→%s: delivered sha256 %s, want %s", c.from, c.to, got, want)
		}
		st := channelWhen(t, s, c.from, c.to, func(c api.ChannelView) bool { return c.DeliveredNo == 3 })
		if st.DeliveredNo != 3 {
			t.Fatalf("%s→%s: delivered No %d, want 3 (the header read from the encrypted zip)", c.from, c.to, st.DeliveredNo)
		}
	}

	// SHOP2 and SHOP3 have no password: SHOP2's zip to SHOP1 is tried
	// with SHOP1's, which is not the one it was written with: a dead letter.
	encryptedZip(t, s.out("SHOP2"), header("SHOP2", "SHOP1", 4, 0), "guess")
	waitFor(t, 20*time.Second, "SHOP2→SHOP1 dead-lettered", func() bool {
		ls, err := cl.DeadLetters(context.Background())
		return err == nil && len(ls) == 1
	})
	ls, _ := cl.DeadLetters(context.Background())
	if !strings.Contains(ls[0].Reason, "wrong zip password") || ls[0].Object == "" {
		t.Fatalf("SHOP2→SHOP1: dead letter %+v, want a reason that says \"wrong zip password\" and the bytes kept", ls[0])
	}

	// Its zips to SHOP3 have no password to try: they are routed by their
	// file name, no header read, in the order they were written (written
	// one after the other, each once the last is taken, as 1C does).
	dst := filepath.Join(s.in("SHOP3"), "Message_SHOP2_SHOP3.zip")
	for no := uint64(5); no <= 7; no++ {
		src := encryptedZip(t, s.out("SHOP2"), header("SHOP2", "SHOP3", no, 0), "shop2-to-shop3")
		want := sha(t, src)
		waitFor(t, 20*time.Second, fmt.Sprintf("SHOP2→SHOP3 No %d routed by name and delivered", no), func() bool {
			_, err := os.Stat(dst)
			return err == nil && sha(t, dst) == want
		})
	}
	c := channelWhen(t, s, "SHOP2", "SHOP3", func(c api.ChannelView) bool { return c.Resolved == 3 && c.Pending == 0 })
	if c.Plan != "" || c.Resolved != 3 || c.Pending != 0 || c.DeliveredNo != 0 {
		t.Fatalf("SHOP2→SHOP3 by name: %+v, want no plan, no numbers, 3 resolved", c)
	}
	if ls, _ := cl.DeadLetters(context.Background()); len(ls) != 1 {
		t.Fatalf("dead letters: %+v, want only SHOP2→SHOP1's", ls)
	}
}
