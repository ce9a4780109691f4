package main

// The big scenario: one big message dir→dir through the relay binary,
// against cp of the same file on the same filesystem; with the relay's
// peak RSS.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/relay1c/relay/exchange"
)

// bigResult is the outcome of the big scenario.
type bigResult struct {
	Size     int64
	Generate time.Duration // writing the file (untimed for the ratio)
	Cp       time.Duration // cp src dst
	CpFsync  time.Duration // cp, then fsync of the copy
	bigRelayRun
}

// runBig times one big message through the real relay binary, against cp
// of the same file on the same filesystem.
func runBig(ctx context.Context, o bigOptions) (res bigResult, err error) {
	log := o.with("big: ")
	res.Size = o.Size
	const from, to = "A", "B"
	name := exchange.FileName(from, to, exchange.FormatXML)
	root, err := tempSite(o.Dir, "relay-bench-big-", []string{from, to})
	if err != nil {
		return res, err
	}
	defer removeTemp(root)
	bin, err := relayBinary(ctx, o.RelayBin, root, log.logf)
	if err != nil {
		return res, err
	}
	stageDir := filepath.Join(root, "stage")
	if err := os.MkdirAll(stageDir, 0o755); err != nil {
		return res, err
	}
	staged := filepath.Join(stageDir, name)

	log.logf("generating %s", humanBytes(o.Size))
	t := time.Now()
	sentSHA, size, err := generateBig(staged, from, to, o.Size)
	if err != nil {
		return res, err
	}
	res.Generate, res.Size = time.Since(t), size

	// cp baseline on the same filesystem (the source is in the page cache, as
	// it is for the relay).
	cpDst := filepath.Join(root, "cp-"+name)
	t = time.Now()
	if out, err := exec.CommandContext(ctx, "cp", staged, cpDst).CombinedOutput(); err != nil {
		return res, fmt.Errorf("cp: %v: %s", err, out)
	}
	res.Cp = time.Since(t)
	if err := fsyncFile(cpDst); err != nil {
		return res, err
	}
	res.CpFsync = time.Since(t)
	if err := os.Remove(cpDst); err != nil {
		return res, err
	}
	log.logf("cp %s, cp+fsync %s", res.Cp.Round(time.Millisecond), res.CpFsync.Round(time.Millisecond))

	// The relay: A picks up from A/out, B delivers into B/in.
	config := func(listen string) string {
		return dirRoutingYAML("bench-big", listen, []string{from, to}, "", o.Settle, o.Poll)
	}
	outDir, inDir := filepath.Join(root, from, "out"), filepath.Join(root, to, "in")
	msg := bigMessage{staged: staged, out: filepath.Join(outDir, name), outName: outDir, in: filepath.Join(inDir, name), sha256: sentSHA}
	res.bigRelayRun, err = runBigRelay(ctx, bin, root, config, msg, o.Timeout, log)
	return res, err
}
