package main

// The ftpbig scenario: one big message FTP→FTP (a/out → b/in of one vsftpd)
// through the relay binary, against curl downloading the same file to local
// disk and uploading it to b/in; with the relay's peak RSS.

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/relay1c/relay/exchange"
)

// ftpBigResult is the outcome of the ftpbig scenario.
type ftpBigResult struct {
	Size         int64
	CurlDownload time.Duration // curl RETR a/out → local disk
	CurlUpload   time.Duration // curl STOR local → b/in temp name, RNFR/RNTO
	bigRelayRun
}

func (r ftpBigResult) curl() time.Duration { return r.CurlDownload + r.CurlUpload }

// runFTPBig generates the message into the server's stage/ folder, times
// curl on it, then the relay.
func runFTPBig(ctx context.Context, o bigOptions) (res ftpBigResult, err error) {
	log := o.with("ftpbig: ")
	res.Size = o.Size
	fb, err := startFTPBench(ctx, o.Dir, "relay-bench-ftpbig-", o.RelayBin, o.logf)
	if err != nil {
		return res, err
	}
	defer fb.close(&err)
	v := fb.v

	const from, to = "A", "B"
	name := exchange.FileName(from, to, exchange.FormatXML)
	staged, outPath, inPath := v.Path(ftpStageDir+"/"+name), v.Path(ftpOutDir+"/"+name), v.Path(ftpInDir+"/"+name)

	// Straight into the server's tree.
	log.logf("generating %s into %s", humanBytes(o.Size), staged)
	sentSHA, size, err := generateBig(staged, from, to, o.Size)
	if err != nil {
		return res, err
	}
	res.Size = size
	if err := os.Chown(staged, v.UID, v.GID); err != nil {
		return res, err
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	// Baseline: the file appears in a/out; curl downloads it to local disk,
	// then uploads it to b/in under a temp name and renames it.
	if err := os.Rename(staged, outPath); err != nil {
		return res, err
	}
	local := filepath.Join(fb.root, "curl-"+name)
	var dl, ul curlConfig
	dl.download(v, ftpOutDir+"/"+name, local, false)
	ul.upload(v, local, ftpInDir, name)
	t := time.Now()
	if err := runCurl(ctx, fb.curl, filepath.Join(fb.root, "dl.conf"), &dl); err != nil {
		return res, err
	}
	res.CurlDownload = time.Since(t)
	t = time.Now()
	if err := runCurl(ctx, fb.curl, filepath.Join(fb.root, "ul.conf"), &ul); err != nil {
		return res, err
	}
	res.CurlUpload = time.Since(t)
	log.logf("curl download %s, upload %s", res.CurlDownload.Round(time.Millisecond), res.CurlUpload.Round(time.Millisecond))
	// Untimed: check, and put things back for the relay.
	if err := checkSHA256(inPath, sentSHA, "curl: uploaded file"); err != nil {
		return res, err
	}
	for _, p := range []string{local, inPath} {
		if err := os.Remove(p); err != nil {
			return res, err
		}
	}
	if err := os.Rename(outPath, staged); err != nil {
		return res, err
	}

	// The relay: A picks up from a/out, B delivers into b/in.
	dir := filepath.Join(fb.root, "relay-run") // root/relay is the built binary
	if err := os.Mkdir(dir, 0o755); err != nil {
		return res, err
	}
	config := func(listen string) string {
		return ftpRoutingYAML("bench-ftpbig", listen, v, from, []string{to}, "", o.Settle, o.Poll)
	}
	msg := bigMessage{staged: staged, out: outPath, outName: ftpOutDir, in: inPath, sha256: sentSHA}
	res.bigRelayRun, err = runBigRelay(ctx, fb.bin, dir, config, msg, o.Timeout, log.with("relay: "))
	return res, err
}
