package ftp

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ftpserver "goftp.io/server/v2"
	"goftp.io/server/v2/driver/file"
)

// storKeepsPartial is a server that fails an upload after it has created
// (part of) the file, as vsftpd does on a full disk or quota ("451 Failure
// writing to local file"): the partial file stays on the server.
type storKeepsPartial struct{ ftpserver.Driver }

func (d storKeepsPartial) PutFile(ctx *ftpserver.Context, p string, r io.Reader, off int64) (int64, error) {
	n, _ := d.Driver.PutFile(ctx, p, io.LimitReader(r, 3), off)
	_, _ = io.Copy(io.Discard, r)
	return n, errors.New("failure writing to local file (quota exceeded)")
}

// TestCheckLeavesNoProbeWhenUploadFails: `relay check` does not leave its
// probe file behind when STOR fails after the server made the file: every
// failed check added a .relay-check-*.tmp to the node's exchange folder,
// which nothing removes (found by review).
func TestCheckLeavesNoProbeWhenUploadFails(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, storKeepsPartial{drv}, "out")
	for _, role := range []string{"pickup", "deliver"} {
		err := Check(context.Background(), "A", role, testConfig(url, role), nil)
		if err == nil || !strings.Contains(err.Error(), "upload probe file") {
			t.Fatalf("%s: check %v, want the upload's failure", role, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(root, "out"))
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".relay-check-") {
			left = append(left, e.Name())
		}
	}
	if len(left) > 0 {
		t.Fatalf("failed checks left their probe files in the exchange folder: %v", left)
	}
}
