package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// queueByNameStored queues a message routed by its file name (no numbers)
// on SRC → DST with its payload stored, as ingest does for a password zip
// no password opens.
func queueByNameStored(t *testing.T, b *bus.Bus, body string) string {
	t.Helper()
	ctx := context.Background()
	h := exchange.Header{Dialect: exchange.DialectName, From: "SRC", To: "DST"}
	sum := sha256.Sum256([]byte(body))
	sha := hex.EncodeToString(sum[:])
	id := MessageID(h, sha)
	if _, _, err := b.PutPayload(ctx, id, int64(len(body)), strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(id, nil)
	exchange.SetHeader(m, h)
	m.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	m.Metadata.Set(exchange.MetaObject, id)
	m.Metadata.Set(exchange.MetaSHA256, sha)
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	if _, _, err := publishRecord(ctx, b.JS, bus.Subject("", "SRC", "DST"), m); err != nil {
		t.Fatal(err)
	}
	return sha
}

// TestRetryByNameRefusedAfterNewer: a message routed by name (no MessageNo)
// is ordered by its place in the stream. a dies at delivery; b, taken in
// after it, is delivered. Retrying a queued a fresh record at the end of
// the stream, where it counted as the newest and was written over b at the
// destination: the older message replaced the newer one, and b was lost if
// the node had not read it yet (found by review). Now refused.
func TestRetryByNameRefusedAfterNewer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	var aSHA string
	// A retried record keeps the sha, not other metadata (no "tag").
	d := &tagDelivery{key: exchange.MetaSHA256, fail: func(sha string, attempt int) error {
		if sha == aSHA && attempt == 1 {
			return exchange.Permanent(errors.New("refused for good"))
		}
		return nil
	}}
	aSHA = queueByNameStored(t, b, "a-body")
	p := runPipeline(t, retryYAML, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	if c := waitChannel(t, p, "", 15*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want a dead", c)
	}
	bSHA := queueByNameStored(t, b, "b-body")
	if c := waitChannel(t, p, "", 15*time.Second, func(c Channel) bool { return c.Resolved == 2 }); c.Resolved != 2 {
		t.Fatalf("state %+v: want b delivered", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if _, err := p.Retry(ctx, ls[0].Seq); !errors.Is(err, ErrCannotRetry) || !strings.Contains(err.Error(), "a newer message") {
		t.Fatalf("retry of the older a after b: %v, want refused (ErrCannotRetry: a newer message came after it)", err)
	}
	waitChannel(t, p, "", 10*time.Second, func(c Channel) bool { return c.Resolved == 3 })
	time.Sleep(500 * time.Millisecond)
	got := d.delivered()
	if len(got) > 0 && got[len(got)-1] != bSHA {
		t.Fatalf("destination written in the order %v (a=%s…, b=%s…): older a, retried, landed over newer b",
			short(got), aSHA[:4], bSHA[:4])
	}
}

func short(ss []string) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s[:4]+"…")
	}
	return out
}
