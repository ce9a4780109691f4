package main

import (
	"fmt"
	"io"
	"time"
)

func printMail(tw io.Writer, r *mailReport) {
	w, o, rl, b := r.w, r.opts, r.relay, r.base
	dest := w.channels[0].to
	if len(w.channels) > 1 {
		dest = fmt.Sprintf("%s..%s", w.channels[0].to, w.channels[len(w.channels)-1].to)
	}
	per := fmt.Sprint(w.messages / len(w.channels))
	if w.messages%len(w.channels) != 0 {
		per += fmt.Sprintf("-%d", w.messages/len(w.channels)+1)
	}
	fmt.Fprintf(tw, "\nmail: %d messages, %s avg, %d channel(s) %s→%s, %s per channel, each written once the previous was taken; destination mode sequential on both relays\n",
		w.messages, humanBytes(w.bytes/int64(w.messages)), len(w.channels), mailSender, dest, per)
	fmt.Fprintf(tw, "relay A (dir pickup settle %s, poll_interval %s; smtp deliver, STARTTLS+AUTH, max_message_size %s) → postfix → %s@localhost Maildir → dovecot IMAPS → relay B (imap pickup, IDLE, after: delete) → dir; baseline: one go-smtp session + one go-imap session, same servers\n",
		o.Settle, o.Poll, humanBytes(o.MaxSize), mailHubUser)
	fmt.Fprintln(tw, "METRIC\tRELAY A→B\tGO-SMTP+GO-IMAP\tRELAY/BASELINE")
	fmt.Fprintf(tw, "elapsed\t%s\t%s\t%.2f\n", rl.Elapsed.Round(time.Millisecond), b.Elapsed.Round(time.Millisecond), rl.Elapsed.Seconds()/b.Elapsed.Seconds())
	rate := func(d time.Duration) float64 { return float64(w.messages) / d.Seconds() }
	mb := func(d time.Duration) float64 { return float64(w.bytes) / 1e6 / d.Seconds() }
	fmt.Fprintf(tw, "messages/s\t%.1f\t%.1f\t%.2f  (throughput ratio)\n", rate(rl.Elapsed), rate(b.Elapsed), rate(rl.Elapsed)/rate(b.Elapsed))
	fmt.Fprintf(tw, "MB/s\t%.2f\t%.2f\t%.2f\n", mb(rl.Elapsed), mb(b.Elapsed), mb(rl.Elapsed)/mb(b.Elapsed))
	fmt.Fprintf(tw, "delivered, sha256 ok\t%d\t%d\t\n", rl.Observed, b.Fetched)
	fmt.Fprintf(tw, "latency drop→delivered\t%s\t%s\t\n", rl.Seen, b.Latency)
	fmt.Fprintf(tw, "  drop→A picked up\t%s\t\t\n", rl.Picked)
	fmt.Fprintf(tw, "  A picked up→A sent (SMTP 250)\t%s\t\t\n", rl.Sent)
	fmt.Fprintf(tw, "  A sent→in Maildir (postfix)\t%s\t\t\n", rl.Postfix)
	fmt.Fprintf(tw, "  in Maildir→B picked up (IMAP)\t%s\t\t\n", rl.Fetch)
	fmt.Fprintf(tw, "  B picked up→in B's inbox\t%s\t\t\n", rl.Deliver)
	fmt.Fprintf(tw, "out of order: Maildir / B pickup\t%d / %d of %d mails\t\t\n", rl.Reordered, rl.BReorder, rl.Mails)
	fmt.Fprintf(tw, "B sequential holds (gap, 1 s each)\t%d\t\t\n", rl.BHeld)
	fmt.Fprintf(tw, "relay A CPU / peak RSS\t%s (%.0f%% of a core) / %s\t\ttarget < 150 MiB: %s\n", rl.CPUA.Round(time.Millisecond), 100*rl.CPUA.Seconds()/rl.Elapsed.Seconds(), humanBytes(rl.PeakA), okFail(rl.PeakA < 150<<20))
	fmt.Fprintf(tw, "relay B CPU / peak RSS\t%s (%.0f%% of a core) / %s\t\ttarget < 150 MiB: %s\n", rl.CPUB.Round(time.Millisecond), 100*rl.CPUB.Seconds()/rl.Elapsed.Seconds(), humanBytes(rl.PeakB), okFail(rl.PeakB < 150<<20))
	fmt.Fprintf(tw, "baseline: all sent / IMAP rounds\t\t%s / %d\t\n", b.SendDone.Round(time.Millisecond), b.Rounds)
}

func printMailBig(tw io.Writer, r *mailBigResult) {
	fmt.Fprintf(tw, "\nmailbig: one %s message %s→WH by mail, max_message_size = postfix message_size_limit = %s, %s of the file per part; relay A (dir) → SMTP → postfix → Maildir → IMAPS → relay B (joins the parts) → dir\n",
		humanBytes(r.Size), mailSender, humanBytes(r.MaxSize), humanBytes(r.PartBytes))
	fmt.Fprintln(tw, "METRIC\tRELAY A→B\tGO-SMTP+GO-IMAP\tRATIO")
	mbs := func(d time.Duration) float64 { return float64(r.Size) / 1e6 / d.Seconds() }
	fmt.Fprintf(tw, "wall, drop → delivered\t%s\t%s\t%.2f× baseline\n", r.Relay.Round(time.Millisecond), r.Base.Round(time.Millisecond), r.Relay.Seconds()/r.Base.Seconds())
	fmt.Fprintf(tw, "MB/s\t%.1f\t%.1f\t%.2f\n", mbs(r.Relay), mbs(r.Base), mbs(r.Relay)/mbs(r.Base))
	fmt.Fprintf(tw, "parts (mails)\t%d (%d seen in Maildir)\t%d\t\n", r.Parts, r.PartsSeen, r.BaseParts)
	at := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return d.Round(time.Millisecond).String()
	}
	fmt.Fprintf(tw, "  A ingested (gone from outbox)\t%s\t\t\n", at(r.Ingested))
	fmt.Fprintf(tw, "  first / last part in Maildir\t%s / %s\t\t\n", at(r.FirstPart), at(r.LastPart))
	fmt.Fprintf(tw, "  A sent every part (SMTP 250)\t%s\tall sent %s\t\n", at(r.ASent), at(r.BaseSend))
	fmt.Fprintf(tw, "  B joined, checked, stored\t%s\t\t\n", at(r.BPicked))
	fmt.Fprintf(tw, "relay A CPU / peak RSS (VmHWM)\t%s (%.0f%% of a core) / %s\t\ttarget < 150 MiB: %s\n", r.CPUA.Round(time.Millisecond), 100*r.CPUA.Seconds()/r.Relay.Seconds(), humanBytes(r.PeakA), okFail(r.PeakA < 150<<20))
	fmt.Fprintf(tw, "relay B CPU / peak RSS (VmHWM)\t%s (%.0f%% of a core) / %s\t\ttarget < 150 MiB: %s\n", r.CPUB.Round(time.Millisecond), 100*r.CPUB.Seconds()/r.Relay.Seconds(), humanBytes(r.PeakB), okFail(r.PeakB < 150<<20))
}
