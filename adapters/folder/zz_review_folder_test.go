package folder

import (
	"testing"
	"time"

	"github.com/relay1c/relay/adapters/folder/foldertest"
	"github.com/relay1c/relay/config"
)

// TestZZKeepHeldFileRememberedBlocksNewer: a relay-commit- file left by
// `after: delete`/`move:` (a commit that failed: an FTP account that may
// rename but not DELE, an archive folder that cannot be made) and then
// `after: keep` (the operator's answer to "no right to delete"). The first
// run under keep takes the held file and remembers it. After a restart the
// memory says it was taken: the take returns with retryAt = farFuture but
// without marking the candidate stored, and the scan keeps 1C's newer file
// of the name waiting for the held one to be stored: forever, silently.
func TestZZKeepHeldFileRememberedBlocksNewer(t *testing.T) {
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
