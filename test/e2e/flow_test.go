package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

var threeNodes = []nodeSpec{{code: "ЦО"}, {code: "ОП"}, {code: "SHOP1"}}

func channelsOf(nodes []string) [][2]string {
	var out [][2]string
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				out = append(out, [2]string{a, b})
			}
		}
	}
	return out
}

func gone(path string) bool {
	_, err := os.Stat(path)
	return os.IsNotExist(err)
}

// TestFlowEveryMessageDelivered: six channels, 50 messages each, every one
// delivered byte-identical to the right inbox. The receiving "1C node" reads
// and removes each delivered file before its sender writes the next message,
// so nothing is superseded and every message must arrive.
func TestFlowEveryMessageDelivered(t *testing.T) {
	const perChannel = 50
	s := newSite(t, threeNodes...)
	s.start(t)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for _, ch := range channelsOf(s.nodes) {
		wg.Add(1)
		go func(from, to string) {
			defer wg.Done()
			src := filepath.Join(s.out(from), exchange.FileName(from, to, exchange.FormatXML))
			dst := filepath.Join(s.in(to), exchange.FileName(from, to, exchange.FormatXML))
			for n := uint64(1); n <= perChannel; n++ {
				if _, err := exchangetest.WriteFile(s.out(from), header(from, to, n, 0), int64(500+int(n)*37), exchange.FormatXML); err != nil {
					errs <- err
					return
				}
				want := sha(t, src)
				deadline := time.Now().Add(30 * time.Second)
				for readNo(dst) != n {
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("%s→%s: message %d not delivered in 30s", from, to, n)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
				if got := sha(t, dst); got != want {
					errs <- fmt.Errorf("%s→%s: message %d delivered with sha %s, sent %s", from, to, n, got, want)
					return
				}
				if !gone(src) {
					// The source is committed (deleted) after JetStream acked; give it a moment.
					waitForErr := time.Now().Add(5 * time.Second)
					for !gone(src) && time.Now().Before(waitForErr) {
						time.Sleep(10 * time.Millisecond)
					}
					if !gone(src) {
						errs <- fmt.Errorf("%s→%s: source of %d not removed after delivery", from, to, n)
						return
					}
				}
				if err := os.Remove(dst); err != nil {
					errs <- err
					return
				}
			}
		}(ch[0], ch[1])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A delivery is recorded just after its file is in place (the file
	// first, then the state): the last ones may still be on their way.
	settled := func(c api.ChannelView) bool {
		return c.DeliveredNo == perChannel && c.PickedNo == perChannel && c.Pending == 0 && c.Duplicates+c.Stale+c.Superseded+c.Dead == 0
	}
	var chans []api.ChannelView
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		chans = statusOf(t, s)
		if len(chans) == 6 && !slices.ContainsFunc(chans, func(c api.ChannelView) bool { return !settled(c) }) || time.Now().After(deadline) {
			break
		}
	}
	if len(chans) != 6 {
		t.Fatalf("status shows %d channels, want 6", len(chans))
	}
	for _, c := range chans {
		if !settled(c) {
			t.Errorf("channel %s→%s: %+v", c.From, c.To, c)
		}
	}
}

// TestLatestNeverGoesBackwards: a node rewrites the same file name with
// rising numbers, in pieces, without waiting (as 1C does). The inbox never
// shows a partial file and its MessageNo never decreases; it ends at the last.
func TestLatestNeverGoesBackwards(t *testing.T) {
	s := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "ОП"})
	s.start(t)
	dst := filepath.Join(s.in("ОП"), "Message_ЦО_ОП.xml")
	src := filepath.Join(s.out("ЦО"), "Message_ЦО_ОП.xml")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	checkErr := make(chan error, 1)
	go func() {
		var last uint64
		for ctx.Err() == nil {
			if _, err := os.Stat(dst); err == nil {
				no := readNo(dst)
				if no == 0 {
					checkErr <- fmt.Errorf("inbox file is not a complete message")
					return
				}
				if no < last {
					checkErr <- fmt.Errorf("inbox went backwards: %d after %d", no, last)
					return
				}
				last = no
			}
			time.Sleep(5 * time.Millisecond)
		}
		checkErr <- nil
	}()

	const last = 30
	for n := uint64(1); n <= last; n++ {
		writeInPieces(t, src, header("ЦО", "ОП", n, 0), 64<<10, 4, 30*time.Millisecond)
		time.Sleep(time.Duration(n%4) * 100 * time.Millisecond)
	}
	waitFor(t, 30*time.Second, "last message delivered", func() bool { return readNo(dst) == last })
	cancel()
	if err := <-checkErr; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "source taken", func() bool { return gone(src) })
	c := channelWhen(t, s, "ЦО", "ОП", func(c api.ChannelView) bool { return c.DeliveredNo == last })
	if c.DeliveredNo != last {
		t.Fatalf("delivered_no %d, want %d", c.DeliveredNo, last)
	}
}

// writeInPieces overwrites path with a message in n pieces with pauses, the
// way a slow writer leaves a half-written file behind for a while.
func writeInPieces(t testing.TB, path string, h exchange.Header, size int64, n int, pause time.Duration) {
	t.Helper()
	var b strings.Builder
	if err := exchangetest.WriteXML(&b, h, size); err != nil {
		t.Fatal(err)
	}
	data := []byte(b.String())
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	step := len(data)/n + 1
	for i := 0; i < len(data); i += step {
		end := min(i+step, len(data))
		if _, err := f.Write(data[i:end]); err != nil {
			t.Fatal(err)
		}
		if end < len(data) {
			time.Sleep(pause)
		}
	}
}

func statusOf(t testing.TB, s *site) []api.ChannelView {
	t.Helper()
	cs, err := api.NewClient(s.listen, "").Channels(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func channel(t testing.TB, s *site, from, to string) api.ChannelView {
	t.Helper()
	c, ok := findChannel(t, s, from, to)
	if !ok {
		t.Fatalf("no channel %s→%s in status", from, to)
	}
	return c
}

// channelSoFar is the channel from→to as status shows it, the zero view
// while it has none yet: for a wait, which starts before the relay took in
// the channel's first message.
func channelSoFar(t testing.TB, s *site, from, to string) api.ChannelView {
	t.Helper()
	c, _ := findChannel(t, s, from, to)
	return c
}

func findChannel(t testing.TB, s *site, from, to string) (api.ChannelView, bool) {
	t.Helper()
	for _, c := range statusOf(t, s) {
		if c.From == from && c.To == to {
			return c, true
		}
	}
	return api.ChannelView{}, false
}

// channelWhen waits up to 10 s for the channel from→to to satisfy ok and
// returns its last view either way. A delivered file appears before the
// relay records it (the rename comes first, so that a crash in between
// delivers again rather than loses), so a test that has seen the file must
// give the record a moment.
func channelWhen(t testing.TB, s *site, from, to string, ok func(api.ChannelView) bool) api.ChannelView {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := channel(t, s, from, to)
		if ok(c) || time.Now().After(deadline) {
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLatestSupersedes: while a node's inbox is unavailable, its sender
// writes 1, 2, 3. When the inbox is back, only 3 is delivered; 1 and 2 are
// dropped — superseded if they come up for delivery before 3, stale if after
// (the retries' backoffs decide the order) — and the failure was shown as the
// channel's last error.
func TestLatestSupersedes(t *testing.T) {
	s := newSite(t, nodeSpec{code: "A"}, nodeSpec{code: "B"})
	s.start(t)
	in := s.in("B")
	// Break the inbox: a file where the folder should be.
	if err := os.RemoveAll(in); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, []byte("not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(s.out("A"), "Message_A_B.xml")
	for n := uint64(1); n <= 3; n++ {
		exchangetest.WriteFile(s.out("A"), header("A", "B", n, 0), 400, exchange.FormatXML)
		waitFor(t, 10*time.Second, "taken", func() bool { return gone(src) })
	}
	waitFor(t, 10*time.Second, "failure shown", func() bool { return channelSoFar(t, s, "A", "B").LastError != "" })
	if c := channel(t, s, "A", "B"); c.PickedNo != 3 || c.DeliveredNo != 0 || c.Pending != 3 {
		t.Fatalf("while the inbox is broken: %+v", c)
	}
	os.Remove(in)
	os.MkdirAll(in, 0o755)
	dst := filepath.Join(in, "Message_A_B.xml")
	waitFor(t, 20*time.Second, "3 delivered", func() bool { return readNo(dst) == 3 })
	waitFor(t, 5*time.Second, "counted", func() bool {
		c := channel(t, s, "A", "B")
		return c.Superseded+c.Stale == 2 && c.DeliveredNo == 3 && c.Pending == 0 && c.LastError == ""
	})
}
