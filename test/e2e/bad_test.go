package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/pipeline"
)

const fixtures = "../../testdata/fixtures"

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBadInputGoesToDeadLetters: every bad fixture, dropped into an outbox
// under a message name, ends as a dead letter with its one-line reason; the
// relay keeps running and good messages still flow; nothing is delivered.
func TestBadInputGoesToDeadLetters(t *testing.T) {
	s := newSite(t, nodeSpec{code: "CO"}, nodeSpec{code: "SHOP1"}, nodeSpec{code: "SHOP2"})
	s.start(t)
	cases := []struct {
		fixture, node, name, reason string
	}{
		{"bad/not_xml.xml", "CO", "Message_CO_SHOP1.xml", "not well-formed"},
		{"bad/no_header.xml", "CO", "Message_CO_SHOP1.xml", "header"},
		{"bad/wrong_namespace.xml", "CO", "Message_CO_SHOP1.xml", "http://example.com/other"},
		{"bad/bad_number.xml", "CO", "Message_CO_SHOP1.xml", "twelve"},
		{"bad/Message_SHOP2_CO.xml", "SHOP2", "Message_SHOP2_CO.xml", "Message_SHOP2_CO"},
		{"bad/two_files.zip", "CO", "Message_CO_SHOP1.zip", "entries"},
		{"bad/traversal.zip", "CO", "Message_CO_SHOP1.zip", "../"},
		{"bad/truncated.xml", "CO", "Message_CO_SHOP1.xml", "incomplete"},
	}
	cl := api.NewClient(s.listen, "")
	for i, c := range cases {
		src := filepath.Join(s.out(c.node), c.name)
		copyFile(t, filepath.Join(fixtures, c.fixture), src)
		waitFor(t, 20*time.Second, c.fixture+" dead-lettered", func() bool {
			ls, err := cl.DeadLetters(context.Background())
			return err == nil && len(ls) == i+1
		})
		ls, _ := cl.DeadLetters(context.Background())
		l := ls[i]
		if l.Stage != pipeline.StagePickup || l.FileName != c.name || !strings.Contains(strings.ToLower(l.Reason), strings.ToLower(c.reason)) || strings.Contains(l.Reason, "\n") {
			t.Errorf("%s: dead letter %+v, want stage pickup and a one-line reason containing %q", c.fixture, l, c.reason)
		}
		if l.Object == "" || l.Size == 0 {
			t.Errorf("%s: payload not kept: %+v", c.fixture, l)
		}
		waitFor(t, 5*time.Second, "source committed", func() bool { return gone(src) })
	}
	for _, n := range s.nodes {
		if es, _ := os.ReadDir(s.in(n)); len(es) != 0 {
			t.Errorf("%s/in has %d files; bad input must never be delivered", n, len(es))
		}
	}

	// Valid but unroutable: a node that is not in routing.yaml.
	exchangetest.WriteFile(s.out("CO"), exchange.Header{ExchangePlan: "Stores", From: "CO", To: "NOWHERE", MessageNo: 1}, 100, exchange.FormatXML)
	waitFor(t, 10*time.Second, "unroutable dead-lettered", func() bool {
		ls, _ := cl.DeadLetters(context.Background())
		return len(ls) == len(cases)+1
	})
	ls, _ := cl.DeadLetters(context.Background())
	route := ls[len(ls)-1]
	if route.Stage != pipeline.StageRoute || !strings.Contains(route.Reason, `unknown node "NOWHERE"`) || route.Header == nil {
		t.Errorf("unroutable: %+v", route)
	}
	if _, err := cl.RetryDead(context.Background(), route.Seq); err == nil || !strings.Contains(err.Error(), "still cannot be routed") {
		t.Errorf("retry of an unroutable letter: err %v", err)
	}
	if _, err := cl.RetryDead(context.Background(), ls[0].Seq); err == nil || !strings.Contains(err.Error(), "still not a valid message") {
		t.Errorf("retry of a bad file: err %v", err)
	}
	if err := cl.DropDead(context.Background(), route.Seq); err != nil {
		t.Fatal(err)
	}
	if err := cl.DropDead(context.Background(), route.Seq); err == nil {
		t.Error("dropping twice succeeded")
	}
	ls, _ = cl.DeadLetters(context.Background())
	if len(ls) != len(cases) {
		t.Errorf("after drop: %d dead letters, want %d", len(ls), len(cases))
	}

	// Good messages still flow, including a good fixture zip.
	copyFile(t, filepath.Join(fixtures, "good/Message_CO_SHOP1.zip"), filepath.Join(s.out("CO"), "Message_CO_SHOP1.zip"))
	dst := filepath.Join(s.in("SHOP1"), "Message_CO_SHOP1.zip")
	waitFor(t, 10*time.Second, "good zip delivered", func() bool { return sameFile(t, dst, filepath.Join(fixtures, "good/Message_CO_SHOP1.zip")) })
}

// TestDeadRetryDelivers: a message for a node without a deliver endpoint is
// dead-lettered; the operator adds the endpoint, restarts, and `dead retry`
// delivers it byte-identical.
func TestDeadRetryDelivers(t *testing.T) {
	s := newSite(t, nodeSpec{code: "A"}, nodeSpec{code: "B"})
	full, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	noDeliver := strings.Replace(string(full), "    deliver: { dir: ./B/in }\n", "", 1)
	if noDeliver == string(full) {
		t.Fatal("could not remove B's deliver from the generated config")
	}
	os.WriteFile(s.cfg, []byte(noDeliver), 0o644)
	r := s.start(t)
	cl := api.NewClient(s.listen, "")
	src, _ := exchangetest.WriteFile(s.out("A"), header("A", "B", 7, 0), 1000, exchange.FormatXML)
	want := sha(t, src)
	waitFor(t, 10*time.Second, "dead-lettered", func() bool {
		ls, _ := cl.DeadLetters(context.Background())
		return len(ls) == 1
	})
	ls, _ := cl.DeadLetters(context.Background())
	if ls[0].Stage != pipeline.StageRoute || !strings.Contains(ls[0].Reason, `node "B" has no deliver endpoint`) {
		t.Fatalf("dead letter: %+v", ls[0])
	}
	waitFor(t, 5*time.Second, "source committed", func() bool { return gone(src) })
	r.close()

	os.WriteFile(s.cfg, full, 0o644)
	s.start(t)
	id, err := cl.RetryDead(context.Background(), ls[0].Seq)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(s.in("B"), "Message_A_B.xml")
	waitFor(t, 10*time.Second, "retried message delivered", func() bool { return readNo(dst) == 7 })
	if got := sha(t, dst); got != want {
		t.Fatalf("retried message sha %s, want %s (id %s)", got, want, id)
	}
	if ls, _ := cl.DeadLetters(context.Background()); len(ls) != 0 {
		t.Fatalf("dead letter not removed after retry: %+v", ls)
	}
}

// TestKeepAndMove: after: keep leaves the file and never takes it twice;
// a new version of it is taken. move:sent moves it into out/sent.
func TestKeepAndMove(t *testing.T) {
	s := newSite(t, nodeSpec{code: "K", after: "keep"}, nodeSpec{code: "M", after: "move:sent"}, nodeSpec{code: "R"})
	s.start(t)
	kSrc, _ := exchangetest.WriteFile(s.out("K"), header("K", "R", 1, 0), 2000, exchange.FormatXML)
	mSrc, _ := exchangetest.WriteFile(s.out("M"), header("M", "R", 1, 0), 2000, exchange.FormatZip)
	kDst := filepath.Join(s.in("R"), "Message_K_R.xml")
	waitFor(t, 10*time.Second, "keep delivered", func() bool { return readNo(kDst) == 1 })
	waitFor(t, 10*time.Second, "move delivered", func() bool { return readNo(filepath.Join(s.in("R"), "Message_M_R.zip")) == 1 })
	waitFor(t, 5*time.Second, "moved", func() bool { return gone(mSrc) && !gone(filepath.Join(s.out("M"), "sent", "Message_M_R.zip")) })
	if gone(kSrc) {
		t.Fatal("after: keep removed the source")
	}
	// Several polls later the kept file has not been taken again.
	os.Remove(kDst)
	time.Sleep(2 * time.Second)
	if !gone(kDst) {
		t.Fatal("kept file was delivered twice")
	}
	if c := channel(t, s, "K", "R"); c.Duplicates != 0 || c.DeliveredNo != 1 {
		t.Fatalf("kept file taken again: %+v", c)
	}
	// The node writes its next message over the same name: it is taken.
	exchangetest.WriteFile(s.out("K"), header("K", "R", 2, 0), 2100, exchange.FormatXML)
	waitFor(t, 10*time.Second, "second kept delivered", func() bool { return readNo(kDst) == 2 })
}

// TestSequentialHoldsGap: a sequential node gets 1, then 3 (held: 2 is
// missing), then 2; it receives 1, 2, 3 in order and status showed the gap.
// Its 1C acknowledges each number it reads, which lets the next one into
// its folder.
func TestSequentialHoldsGap(t *testing.T) {
	s := newSite(t, nodeSpec{code: "A"}, nodeSpec{code: "S", mode: "sequential"})
	s.start(t)
	dst := filepath.Join(s.in("S"), "Message_A_S.xml")
	src := filepath.Join(s.out("A"), "Message_A_S.xml")
	acknowledge(t, s.out("S"), "S", "A", dst)
	send := func(n uint64) {
		exchangetest.WriteFile(s.out("A"), header("A", "S", n, 0), 500, exchange.FormatXML)
		waitFor(t, 10*time.Second, "taken", func() bool { return gone(src) })
	}
	send(1)
	waitFor(t, 10*time.Second, "1 delivered", func() bool { return readNo(dst) == 1 })
	send(3)
	waitFor(t, 10*time.Second, "gap reported", func() bool {
		return strings.Contains(channelSoFar(t, s, "A", "S").LastError, "gap")
	})
	if readNo(dst) != 1 {
		t.Fatalf("3 delivered over a gap")
	}
	send(2)
	waitFor(t, 20*time.Second, "3 delivered after 2", func() bool { return readNo(dst) == 3 })
	// The state is written right after the rename that shows No 3 in the
	// inbox: wait for it rather than read it once.
	waitFor(t, 10*time.Second, "the state to show No 3 delivered and no gap", func() bool {
		c := channel(t, s, "A", "S")
		return c.DeliveredNo == 3 && c.LastError == ""
	})
}

// gapOfNo2 runs a relay whose sequential node S got A's No 1 and No 3, No 2
// never written (1C wrote No 3 over it before relay took it); dst is S's
// file of the channel.
func gapOfNo2(t *testing.T) (*site, string) {
	t.Helper()
	s := newSite(t, nodeSpec{code: "A"}, nodeSpec{code: "S", mode: "sequential", extraYAML: "overwrite_unread: true"})
	s.start(t)
	dst := filepath.Join(s.in("S"), "Message_A_S.xml")
	for _, n := range []uint64{1, 3} {
		exchangetest.WriteFile(s.out("A"), header("A", "S", n, 0), 500, exchange.FormatXML)
		waitFor(t, 10*time.Second, "taken", func() bool { return gone(filepath.Join(s.out("A"), "Message_A_S.xml")) })
	}
	return s, dst
}

// TestSequentialGapFilledByHand: a number that will never come (its file
// written over in the sender's outbox before relay took it) is given to
// the channel by hand, as the README says: an empty message of that
// number, pushed as relay send does. The numbers after it go on.
func TestSequentialGapFilledByHand(t *testing.T) {
	s, dst := gapOfNo2(t)
	waitFor(t, 10*time.Second, "the gap reported", func() bool {
		return strings.Contains(channelSoFar(t, s, "A", "S").LastError, "until No 2 arrives")
	})
	var empty bytes.Buffer
	if err := exchangetest.WriteXML(&empty, header("A", "S", 2, 0), 0); err != nil {
		t.Fatal(err)
	}
	reply, err := api.NewClient(s.listen, "").Push(context.Background(), "Message_A_S.xml", bytes.NewReader(empty.Bytes()), int64(empty.Len()))
	if err != nil || reply.Outcome != pipeline.OutcomeQueued {
		t.Fatalf("push of an empty No 2: %+v, %v", reply, err)
	}
	waitFor(t, 20*time.Second, "No 3 delivered after the empty No 2", func() bool { return readNo(dst) == 3 })
}

// TestSequentialGapSkipped: the same gap, passed with the command the
// hold names (`relay skip`, the real binary against the running relay):
// No 3 is delivered, and the state keeps No 2 as skipped.
func TestSequentialGapSkipped(t *testing.T) {
	s, dst := gapOfNo2(t)
	const command = "relay skip Магазины A S 2"
	waitFor(t, 10*time.Second, "the gap reported with the command past it", func() bool {
		return strings.Contains(channelSoFar(t, s, "A", "S").LastError, command)
	})
	bin := buildRelay(t)
	if out, err := exec.Command(bin, "skip", "-c", s.cfg, "Магазины", "A", "S", "3").CombinedOutput(); err == nil {
		t.Fatalf("relay skip of the held No 3 itself succeeded:\n%s", out)
	}
	out, err := exec.Command(bin, "skip", "-c", s.cfg, "Магазины", "A", "S", "2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "goes on past No 2") {
		t.Fatalf("%s: %v\n%s", command, err, out)
	}
	waitFor(t, 40*time.Second, "No 3 delivered after the skip", func() bool { return readNo(dst) == 3 })
	if c := channelSoFar(t, s, "A", "S"); c.DroppedNo != 2 || c.DeliveredNo != 3 || c.LastError != "" {
		t.Fatalf("after the skip: %+v", c)
	}
}

// TestAcknowledgement: ReceivedNo of B→A acknowledges A→B.
func TestAcknowledgement(t *testing.T) {
	s := newSite(t, nodeSpec{code: "A"}, nodeSpec{code: "B"})
	s.start(t)
	exchangetest.WriteFile(s.out("A"), header("A", "B", 5, 0), 300, exchange.FormatXML)
	waitFor(t, 10*time.Second, "A→B delivered", func() bool { return readNo(filepath.Join(s.in("B"), "Message_A_B.xml")) == 5 })
	exchangetest.WriteFile(s.out("B"), header("B", "A", 1, 5), 0, exchange.FormatXML)
	waitFor(t, 10*time.Second, "ack recorded", func() bool { return channelSoFar(t, s, "A", "B").AckedNo == 5 })
}
