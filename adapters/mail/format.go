// Package mail carries exchange messages by e-mail, for sites that only
// have a mailbox: delivery sends one mail per message over SMTP with the file
// as an attachment, pickup reads an IMAP mailbox and takes the attachments of
// mails whose subject names an exchange file. Files larger than a mail
// server accepts travel as numbered parts that the receiving relay joins and
// checks against the whole file's sha256.
package mail

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/exchange"
)

// Subject prefixes that mark an exchange mail: scripts write the first, the
// 1C book the second; 1C's own mail transport writes "Exchange message (<file>)".
const (
	PrefixExchangeMessage = "EXCHANGE_MESSAGE:"
	PrefixRussian         = "СООБЩЕНИЕ_ОБМЕНА:"
	DefaultSubjectPrefix  = PrefixExchangeMessage
)

// Headers relay writes on every mail it sends. The pickup needs only the
// part headers; the others let a person (or a filter) see what a mail carries
// without opening the attachment.
const (
	HeaderPlan       = "X-Relay-Plan"
	HeaderFrom       = "X-Relay-From"
	HeaderTo         = "X-Relay-To"
	HeaderMessageNo  = "X-Relay-Message-No"
	HeaderReceivedNo = "X-Relay-Received-No"
	HeaderFile       = "X-Relay-File"
	HeaderSize       = "X-Relay-Size"
	// HeaderSHA256 is the sha256 of the whole file, also on each part.
	HeaderSHA256 = "X-Relay-Sha256"
	// HeaderTransfer is common to all parts of one split file.
	HeaderTransfer = "X-Relay-Transfer"
	// HeaderPart is "i/n" on a part of a split file.
	HeaderPart = "X-Relay-Part"
)

// pickupHeaders are the header fields the pickup fetches to classify a mail.
var pickupHeaders = []string{"From", "Subject", HeaderFile, HeaderSHA256, HeaderSize, HeaderTransfer, HeaderPart}

var (
	prefixRE  = regexp.MustCompile(`^\s*(?i:EXCHANGE_MESSAGE|СООБЩЕНИЕ_ОБМЕНА)\s*:\s*(.+?)\s*$`)
	oneCRE    = regexp.MustCompile(`^\s*(?i:Exchange message)\s*\(\s*(.+?)\s*\)\s*$`)
	partTail  = regexp.MustCompile(`\s*\(part \d+/\d+\)$`)
	partValue = regexp.MustCompile(`^\s*(\d{1,6})\s*/\s*(\d{1,6})\s*$`)
)

// subjectFile returns the exchange file a subject names, or "" when the
// subject is not one of the accepted forms. The name may lack its
// extension (older 1C releases); the attachment supplies it then. custom,
// when set, is tried first: its group "file" (or its first group) is the
// name. A part mail's " (part i/n)" is no part of the name, whichever form
// found it, and a name custom finds that is no exchange file name leaves
// the built-in forms to try (found by review: with `(?P<file>.+)` every
// part mail, the relay's own standard ones too, went unseen).
func subjectFile(subject string, custom *regexp.Regexp) string {
	if custom != nil {
		if m := custom.FindStringSubmatch(subject); m != nil {
			i := custom.SubexpIndex("file")
			if i < 0 && len(m) > 1 {
				i = 1
			}
			if i > 0 {
				if name := fileName(partTail.ReplaceAllString(m[i], "")); name != "" {
					return name
				}
			}
		}
	}
	if m := prefixRE.FindStringSubmatch(subject); m != nil {
		return fileName(partTail.ReplaceAllString(m[1], ""))
	}
	if m := oneCRE.FindStringSubmatch(subject); m != nil {
		return fileName(m[1])
	}
	return ""
}

// fileName is name trimmed if it can be an exchange file's name, else "".
func fileName(name string) string {
	name = strings.TrimSpace(name)
	if !strings.HasPrefix(name, "Message_") || strings.ContainsAny(name, `/\`) {
		return ""
	}
	return name
}

// sameStem reports whether two file names are the same message name, one
// of them possibly without its extension.
func sameStem(a, b string) bool {
	stem := func(s string) string {
		l := strings.ToLower(s)
		if strings.HasSuffix(l, ".xml") || strings.HasSuffix(l, ".zip") {
			return s[:len(s)-4]
		}
		return s
	}
	return stem(a) == stem(b)
}

// fromOtherNode reports whether file, as a subject or X-Relay-File names it
// (possibly without its extension), is a message another node than node
// wrote. 1C's mail transport reads and writes one mailbox, so the pickup of
// a node also sees the mails delivered to it; those are its 1C's to read.
// A name that does not parse is not judged here: the content check says
// what is wrong with it.
func fromOtherNode(file, node string, isNode func(string) bool) bool {
	return folder.ForAnotherNode(withExt(file), node, isNode)
}

// part is "i of n" of a split file.
type part struct{ i, n int }

// parsePart reads an X-Relay-Part value; ok is false for anything but
// 1 ≤ i ≤ n ≤ maxParts.
func parsePart(v string) (part, bool) {
	m := partValue.FindStringSubmatch(v)
	if m == nil {
		return part{}, false
	}
	i, _ := strconv.Atoi(m[1])
	n, _ := strconv.Atoi(m[2])
	if i < 1 || i > n || n > maxParts {
		return part{}, false
	}
	return part{i, n}, true
}

func (p part) String() string { return strconv.Itoa(p.i) + "/" + strconv.Itoa(p.n) }

// maxParts bounds how many parts one file may be split into (and so what a
// receiver tracks per transfer): 10,000 parts of 10 MiB mails is about 70 GiB.
const maxParts = 10000

// transferID names all parts of one file cut into n parts of per bytes; it
// depends only on the message and the cutting, so a retried delivery sends
// parts the receiver recognises as the same. per is in it because a changed
// size limit can cut the same file into as many parts at other offsets: the
// receiver must never join parts of two cuttings.
func transferID(h exchange.Header, sha string, n int, per int64) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%d\x00%s\x00%d\x00%d", h.ExchangePlan, h.From, h.To, h.MessageNo, sha, n, per))
	return hex.EncodeToString(sum[:12])
}

// validTransfer accepts what transferID makes (and similar ids of other
// senders), refusing anything that could be abused in a file or log.
var validTransfer = regexp.MustCompile(`^[A-Za-z0-9._-]{8,64}$`)

// validSHA256 is lower- or upper-case hex of 32 bytes.
var validSHA256 = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)

// contentType is the attachment type of an exchange file.
func contentType(name string) string {
	if strings.HasSuffix(strings.ToLower(name), ".zip") {
		return "application/zip"
	}
	return "application/xml"
}
