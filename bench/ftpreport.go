package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// okFail marks a target as the ftp scenarios report it.
func okFail(ok bool) string {
	if ok {
		return "OK"
	}
	return "FAIL"
}

func printFTP(tw io.Writer, f *ftpReport) {
	w, o := f.w, f.opts
	dest := "B"
	if len(w.channels) > 1 {
		dest = fmt.Sprintf("%s..%s", w.channels[0].to, w.channels[len(w.channels)-1].to)
	}
	per := fmt.Sprint(w.messages / len(w.channels))
	if w.messages%len(w.channels) != 0 {
		per += fmt.Sprintf("-%d", w.messages/len(w.channels)+1)
	}
	fmt.Fprintf(tw, "\nftp: %d messages, %s avg, FTP→FTP on one vsftpd (127.0.0.1): A's %s → %d channel(s) A→%s, all delivered into %s; %s per channel, each written once the previous was taken\n",
		w.messages, humanBytes(w.bytes/int64(w.messages)), ftpOutDir, len(w.channels), dest, ftpInDir, per)
	fmt.Fprintf(tw, "relay binary, ftp pickup settle %s, poll_interval %s, destination mode sequential; baseline = fastest of: %v\n", o.Settle, o.Poll, sideNames(f.baselines))
	b := f.best()
	fmt.Fprintf(tw, "METRIC\tRELAY\t%s\tRELAY/BASELINE\n", strings.ToUpper(b.Name))
	fmt.Fprintf(tw, "elapsed\t%s\t%s\t%.2f\n", f.relay.Elapsed.Round(time.Millisecond), b.Elapsed.Round(time.Millisecond), f.relay.Elapsed.Seconds()/b.Elapsed.Seconds())
	rate := func(s ftpSide) float64 { return float64(w.messages) / s.Elapsed.Seconds() }
	mb := func(s ftpSide) float64 { return float64(w.bytes) / 1e6 / s.Elapsed.Seconds() }
	fmt.Fprintf(tw, "messages/s\t%.1f\t%.1f\t%.2f  (throughput ratio)\n", rate(f.relay), rate(b), rate(f.relay)/rate(b))
	fmt.Fprintf(tw, "MB/s\t%.2f\t%.2f\t%.2f\n", mb(f.relay), mb(b), mb(f.relay)/mb(b))
	fmt.Fprintf(tw, "seen in b/in, sha256 ok\t%d\t%d\t\n", f.relay.Observed, b.Observed)
	fmt.Fprintf(tw, "write→gone from a/out\t%s\t%s\t\n", f.relay.Taken, b.Taken)
	fmt.Fprintf(tw, "write→in b/in\t%s\t%s\t\n", f.relay.Seen, b.Seen)
	fmt.Fprintf(tw, "relay CPU / peak RSS\t%s (%.0f%% of a core) / %s\t\t\n", f.relay.CPU.Round(time.Millisecond), 100*f.relay.CPU.Seconds()/f.relay.Elapsed.Seconds(), humanBytes(f.relay.PeakRSS))
	for _, s := range f.baselines {
		fmt.Fprintf(tw, "%s\t\t%s, %d passes, %d curl processes\t%.2f\n", s.Name, s.Elapsed.Round(time.Millisecond), s.Passes, s.Procs, f.relay.Elapsed.Seconds()/s.Elapsed.Seconds())
	}
}

func sideNames(ss []ftpSide) []string {
	var n []string
	for _, s := range ss {
		n = append(n, s.Name)
	}
	return n
}

func printFTPBig(tw io.Writer, b *ftpBigResult, settle time.Duration) {
	fmt.Fprintf(tw, "\nftpbig: one %s message FTP→FTP on one vsftpd (127.0.0.1), a/out → b/in, relay binary as a child process, ftp pickup settle %s\n", humanBytes(b.Size), settle)
	fmt.Fprintln(tw, "METRIC\tRELAY\tCURL download+upload\tRATIO")
	mbs := func(d time.Duration) float64 { return float64(b.Size) / 1e6 / d.Seconds() }
	fmt.Fprintf(tw, "wall, a/out → b/in\t%s\t%s (download %s + upload %s)\t%.2f× curl\n", b.Relay.Round(time.Millisecond), b.curl().Round(time.Millisecond),
		b.CurlDownload.Round(time.Millisecond), b.CurlUpload.Round(time.Millisecond), b.Relay.Seconds()/b.curl().Seconds())
	fmt.Fprintf(tw, "MB/s\t%.1f\t%.1f\t%.2f\n", mbs(b.Relay), mbs(b.curl()), mbs(b.Relay)/mbs(b.curl()))
	fmt.Fprintf(tw, "  of which ingest (until gone from a/out)\t%s\t\t\n", b.Ingested.Round(time.Millisecond))
	fmt.Fprintf(tw, "relay CPU\t%s (%.0f%% of a core)\t\t\n", b.CPU.Round(time.Millisecond), 100*b.CPU.Seconds()/b.Relay.Seconds())
	fmt.Fprintf(tw, "peak RSS (VmHWM)\t%s\t\ttarget < 150 MiB: %s\n", humanBytes(b.PeakRSS), okFail(b.PeakRSS < 150<<20))
	fmt.Fprintf(tw, "RSS idle / ingest / deliver / stop\t%s / %s / %s / %s\t\t\n", humanBytes(b.RSSIdle), humanBytes(b.RSSIngest), humanBytes(b.RSSDeliver), humanBytes(b.RSSAtStop))
}
