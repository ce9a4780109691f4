package folder

import (
	"bytes"
	"context"
	"io/fs"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/folder/foldertest"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// stampFile is one file of stampSource.
type stampFile struct {
	data  []byte
	mtime time.Time
}

// stampSource is a folder in memory with an mtime per file; renameStamps makes
// a rename give the file a new mtime (an FTP server on object storage,
// whose rename is a copy); slow delays the download of the names in it.
type stampSource struct {
	mu           sync.Mutex
	files        map[string]stampFile
	renameStamps bool
	slow         map[string]time.Duration
	spool        string
}

func (z *stampSource) List(context.Context) ([]File, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	var out []File
	for n, f := range z.files {
		out = append(out, File{Name: n, Size: int64(len(f.data)), ModTime: f.mtime})
	}
	return out, nil
}

func (z *stampSource) Stat(_ context.Context, name string) (File, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	f, ok := z.files[name]
	if !ok {
		return File{}, fs.ErrNotExist
	}
	return File{Name: name, Size: int64(len(f.data)), ModTime: f.mtime}, nil
}

func (z *stampSource) Fetch(ctx context.Context, f File) (Fetched, error) {
	z.mu.Lock()
	b := z.files[f.Name].data
	d := z.slow[f.Name]
	z.mu.Unlock()
	time.Sleep(d)
	return Spool(ctx, z.spool, bytes.NewReader(b), 1<<30)
}

func (z *stampSource) Remove(_ context.Context, name string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if _, ok := z.files[name]; !ok {
		return fs.ErrNotExist
	}
	delete(z.files, name)
	return nil
}

func (z *stampSource) Move(ctx context.Context, name, _, _ string) error { return z.Remove(ctx, name) }
func (z *stampSource) Where(name string) string                          { return "stamp:" + name }

func (z *stampSource) Rename(_ context.Context, from, to string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	f, ok := z.files[from]
	if !ok {
		return fs.ErrNotExist
	}
	delete(z.files, from)
	if z.renameStamps {
		f.mtime = time.Now()
	}
	z.files[to] = f
	return nil
}

func (z *stampSource) names() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	var out []string
	for n := range z.files {
		out = append(out, n)
	}
	return out
}

// TestHeldFileTakenBeforeNewer: a held file (a commit left
// No 7 under relay-commit-Message_A_B.xml) and 1C's next message No 8
// written under Message_A_B.xml meanwhile are one channel. The scan takes
// them side by side (takeParallel), so the older one reaches the pipeline
// whenever its download ends: here after the newer one. On a channel routed
// by its file name (a password zip) the stream order is the delivery order
// (pipeline nameOrder): the older message was delivered over the newer
// one (found by review). The held file goes first now.
func TestHeldFileTakenBeforeNewer(t *testing.T) {
	now := time.Now()
	z := &stampSource{files: map[string]stampFile{}, spool: t.TempDir(), slow: map[string]time.Duration{}}
	held := HeldName("Message_A_B.xml")
	z.files[held] = stampFile{data: messageXML(t, 7), mtime: now.Add(-2 * time.Hour).Add(123)}
	z.files["Message_A_B.xml"] = stampFile{data: messageXML(t, 8), mtime: now.Add(-time.Hour).Add(456)}
	z.slow[held] = 300 * time.Millisecond // a larger file, a slower download
	ch := subscribed(t, z, fastOptions())
	var order []uint64
	for len(order) < 2 {
		select {
		case msg := <-ch:
			order = append(order, messageNo(t, msg))
			// The pipeline acks later; what matters is the order it got them in.
			go func(m *message.Message) { time.Sleep(500 * time.Millisecond); m.Ack() }(msg)
		case <-time.After(5 * time.Second):
			t.Fatalf("only %v handed over", order)
		}
	}
	if order[0] != 7 {
		t.Fatalf("handed to the pipeline in the order %v: the newer No 8 of channel A->B went before the older No 7 held by an earlier commit (one channel's two files taken side by side)", order)
	}
}

// TestDeadLetterOnceOnRenameStampingServer: a file that becomes a
// dead letter (here: its header says From C in A's file name) has no
// sha256 for the commit to compare. Where a rename gives the file a new
// mtime (the case the change adds the content compare for), the commit's
// look finds the held file "changed" against the empty sum and leaves it
// under relay-commit-; the next scan took it again: two dead letters for
// one file (found by review). Its sha256 is taken for the commit now.
func TestDeadLetterOnceOnRenameStampingServer(t *testing.T) {
	var b bytes.Buffer
	if err := exchangetest.WriteXML(&b, exchange.Header{ExchangePlan: "P", From: "C", To: "B", MessageNo: 3}, 100); err != nil {
		t.Fatal(err)
	}
	z := &stampSource{files: map[string]stampFile{}, spool: t.TempDir(), renameStamps: true}
	z.files["Message_A_B.xml"] = stampFile{data: b.Bytes(), mtime: time.Now().Add(-time.Hour).Add(789)}
	ch := subscribed(t, z, fastOptions())
	handed := 0
	deadline := time.After(3 * time.Second)
loop:
	for {
		select {
		case msg := <-ch:
			if msg.Metadata.Get(exchange.MetaProblem) == "" {
				t.Fatal("want a problem message (dead letter)")
			}
			handed++
			msg.Ack()
		case <-deadline:
			break loop
		}
	}
	if handed != 1 || len(z.names()) != 0 {
		t.Fatalf("one broken file handed to the pipeline %d times (each a dead letter of its own; want 1), files left %v", handed, z.names())
	}
}

// A held file (relay-commit-Message_A_B.xml, left by a commit: here one
// whose look found 1C's next, larger message under the held name, or a
// limit lowered since) that is over max_message_size is dead-lettered and
// left in place by leaveTooLarge, which never marks its candidate stored.
// The scan made 1C's file of the same name wait until the held one was
// stored: 1C's newer message was never taken (found by review). A held
// file handed over as a dead letter counts as stored.
func TestTooLargeHeldFileLetsNewerGo(t *testing.T) {
	var big bytes.Buffer
	if err := exchangetest.WriteXML(&big, exchange.Header{ExchangePlan: "P", From: "A", To: "B", MessageNo: 7}, 20000); err != nil {
		t.Fatal(err)
	}
	small := messageXML(t, 8)
	z := &stampSource{files: map[string]stampFile{}, spool: t.TempDir(), slow: map[string]time.Duration{}}
	now := time.Now()
	z.files[HeldName("Message_A_B.xml")] = stampFile{data: big.Bytes(), mtime: now.Add(-2 * time.Hour).Add(123)}
	z.files["Message_A_B.xml"] = stampFile{data: small, mtime: now.Add(-time.Hour).Add(456)}
	o := fastOptions()
	o.Limits = exchange.DefaultLimits()
	o.Limits.MaxSize = int64(len(small)) + 1000
	if int64(big.Len()) <= o.Limits.MaxSize {
		t.Fatalf("setup: held file %d bytes not over the limit %d", big.Len(), o.Limits.MaxSize)
	}
	ch := subscribed(t, z, o)
	var got []string
	deadline := time.After(4 * time.Second)
	for {
		select {
		case msg := <-ch:
			if p := msg.Metadata.Get(exchange.MetaProblem); p != "" {
				got = append(got, "dead letter: "+p)
			} else {
				no := messageNo(t, msg)
				msg.Ack()
				if no == 8 {
					return
				}
				got = append(got, "No "+string(rune('0'+no)))
				continue
			}
			msg.Ack()
		case <-deadline:
			t.Fatalf("1C's newer Message_A_B.xml (No 8, %d bytes, within the limit) never handed to the pipeline in 4 s: it waits for the held too-large file, which is dead-lettered and left in place but never marked stored (handed: %q; files %v)", len(small), got, z.names())
		}
	}
}

// TestKeepHeldFileRememberedLetsNewerGo: a relay-commit- file left by
// `after: delete`/`move:` (a commit that failed: an FTP account that may
// rename but not DELE, an archive folder that cannot be made) and then
// `after: keep` (the operator's answer to "no right to delete"). The first
// run under keep takes the held file and remembers it. After a restart the
// memory says it was taken: the take returned without marking the
// candidate stored, and the scan kept 1C's newer file of the name waiting
// for the held one to be stored: forever, silently (found by review).
func TestKeepHeldFileRememberedLetsNewerGo(t *testing.T) {
	now := time.Now()
	z := &stampSource{files: map[string]stampFile{}, spool: t.TempDir()}
	held := HeldName("Message_A_B.xml")
	old := messageXML(t, 7)
	z.files[held] = stampFile{data: old, mtime: now.Add(-2 * time.Hour).Add(123)}
	z.files["Message_A_B.xml"] = stampFile{data: messageXML(t, 8), mtime: now.Add(-time.Hour).Add(456)}
	// What the previous run under keep remembered of the held file.
	mem := foldertest.NewMemory(map[string]string{
		z.Where(held): fingerprint(int64(len(old)), z.files[held].mtime, sha256Hex(old)),
	})
	o := fastOptions()
	o.After = config.After{Action: config.AfterKeep}
	o.Memory = mem
	p, ch := started(t, z, o)
	m := foldertest.Next(ch, 3*time.Second)
	if m == nil {
		msg, _ := p.LastError()
		t.Fatalf("1C's newer Message_A_B.xml (No 8) never handed over in 3 s: it waits for the held file, which keep-memory says was taken already (pickup error shown: %q)", msg)
	}
	if no := messageNo(t, m); no != 8 {
		t.Fatalf("handed No %d, want 8", no)
	}
	m.Ack()
}
