package mail

import (
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/relay1c/relay/exchange"
)

func TestSubjectFile(t *testing.T) {
	named := regexp.MustCompile(`^Обмен: (?P<file>\S+)(?: \((?P<note>.*)\))?$`)
	unnamed := regexp.MustCompile(`^\[1C\] (\S+) \S+$`)
	otherNamed := regexp.MustCompile(`^X (?P<other>\S+)$`)
	greedy := regexp.MustCompile(`^(.*)$`)
	noGroup := regexp.MustCompile(`^EXCHANGE`)
	optional := regexp.MustCompile(`^(?:Batch: (?P<file>\S+)|.*)$`)

	for _, c := range []struct {
		subject string
		custom  *regexp.Regexp
		want    string
	}{
		// the three forms
		{"EXCHANGE_MESSAGE:Message_ЦО_ОП.xml", nil, "Message_ЦО_ОП.xml"},
		{"СООБЩЕНИЕ_ОБМЕНА: Message_ЦО_ОП.zip", nil, "Message_ЦО_ОП.zip"},
		{"Exchange message (Message_ЦО_ОП.zip)", nil, "Message_ЦО_ОП.zip"},
		// older 1C: no extension; the attachment supplies it
		{"Exchange message (Message_ЦО_ОП)", nil, "Message_ЦО_ОП"},
		{"EXCHANGE_MESSAGE:Message_ЦО_ОП", nil, "Message_ЦО_ОП"},
		// our part suffix
		{"EXCHANGE_MESSAGE:Message_A_B.xml (part 2/5)", nil, "Message_A_B.xml"},
		{"EXCHANGE_MESSAGE:Message_A_B.xml   (part 10000/10000)  ", nil, "Message_A_B.xml"},
		{"СООБЩЕНИЕ_ОБМЕНА:Message_A_B.zip (part 1/2)", nil, "Message_A_B.zip"},
		// the suffix is ours, written lower-case; another spelling is not
		// stripped, and the "/" in it makes the name unacceptable
		{"EXCHANGE_MESSAGE:Message_A_B.xml (Part 2/5)", nil, ""},
		// 1C's form carries no part suffix: the "/" refuses it
		{"Exchange message (Message_A_B.xml) (part 2/5)", nil, ""},
		// spaces around prefix, colon and name
		{"  EXCHANGE_MESSAGE : Message_A_B.xml  ", nil, "Message_A_B.xml"},
		{"\tСООБЩЕНИЕ_ОБМЕНА:\tMessage_A_B.xml", nil, "Message_A_B.xml"},
		{"Exchange message(  Message_A_B.xml  )", nil, "Message_A_B.xml"},
		// case variants of the prefixes (Cyrillic folds too)
		{"exchange_message:Message_A_B.xml", nil, "Message_A_B.xml"},
		{"Exchange_Message:Message_A_B.xml", nil, "Message_A_B.xml"},
		{"сообщение_обмена:Message_A_B.xml", nil, "Message_A_B.xml"},
		{"Сообщение_Обмена: Message_A_B.xml", nil, "Message_A_B.xml"},
		{"EXCHANGE MESSAGE (Message_A_B.xml)", nil, "Message_A_B.xml"},
		{"exchange message (Message_A_B)", nil, "Message_A_B"},
		// the name itself is case-sensitive: 1C always writes Message_
		{"EXCHANGE_MESSAGE:message_A_B.xml", nil, ""},
		{"EXCHANGE_MESSAGE:MESSAGE_A_B.xml", nil, ""},
		// not one of the forms
		{"", nil, ""},
		{"EXCHANGE_MESSAGE:", nil, ""},
		{"EXCHANGE_MESSAGE:   ", nil, ""},
		{"Re: EXCHANGE_MESSAGE:Message_A_B.xml", nil, ""},
		{"Fwd: Exchange message (Message_A_B.xml)", nil, ""},
		{"RE: СООБЩЕНИЕ_ОБМЕНА:Message_A_B.xml", nil, ""},
		{"EXCHANGE_MESSAGE Message_A_B.xml", nil, ""},
		{"EXCHANGEMESSAGE:Message_A_B.xml", nil, ""},
		{"EXCHANGE_MESSAGES:Message_A_B.xml", nil, ""},
		{"Exchange message Message_A_B.xml", nil, ""},
		{"Exchange message (Message_A_B.xml", nil, ""},
		{"Exchange  message (Message_A_B.xml)", nil, ""},
		{"Exchange message ()", nil, ""},
		{"Exchange message (Message_A_B.xml) thanks", nil, ""},
		{"EXCHANGE_MESSAGE:Report.xml", nil, ""},
		{"Message_A_B.xml", nil, ""},
		{"Hello", nil, ""},
		// path tricks
		{"EXCHANGE_MESSAGE:Message_A_B/../../etc/passwd", nil, ""},
		{"EXCHANGE_MESSAGE:Message_..\\..\\boot.ini", nil, ""},
		{"EXCHANGE_MESSAGE:Message_A/B.xml", nil, ""},
		{"Exchange message (Message_A_B\\x.xml)", nil, ""},
		{"EXCHANGE_MESSAGE:../Message_A_B.xml", nil, ""},
		{"EXCHANGE_MESSAGE:/tmp/Message_A_B.xml", nil, ""},
		// a custom pattern with a named group "file"
		{"Обмен: Message_ЦО_ОП.xml", named, "Message_ЦО_ОП.xml"},
		{"Обмен: Message_ЦО_ОП.xml (note)", named, "Message_ЦО_ОП.xml"},
		{"Обмен: Report.xml", named, ""},
		{"Обмен: Message_A/B.xml", named, ""},
		// ... which does not hide the built-in forms when it does not match
		{"EXCHANGE_MESSAGE:Message_A_B.xml", named, "Message_A_B.xml"},
		{"Re: Обмен: Message_A_B.xml", named, ""},
		// a custom pattern with only an unnamed group: the first group
		{"[1C] Message_A_B.zip sent", unnamed, "Message_A_B.zip"},
		{"[1C] Message_A_B.zip", unnamed, ""},
		{"Exchange message (Message_A_B)", unnamed, "Message_A_B"},
		// named groups without "file": the first group is the name
		{"X Message_A_B.xml", otherNamed, "Message_A_B.xml"},
		// a pattern without a group (Validate refuses it) names nothing,
		// the built-in forms still apply
		{"EXCHANGE_MESSAGE:Message_A_B.xml", noGroup, "Message_A_B.xml"},
		// the "file" group did not take part: the built-in forms apply
		{"Batch: Message_A_B.xml", optional, "Message_A_B.xml"},
		{"EXCHANGE_MESSAGE:Message_C_D.xml", optional, "Message_C_D.xml"},
		// A custom pattern that matches and yields no exchange file name
		// leaves the built-in forms to try (found by review: a pattern
		// also matching EXCHANGE_MESSAGE: hid the relay's own part mails).
		{"EXCHANGE_MESSAGE:Message_A_B.xml", greedy, "Message_A_B.xml"},
		{"EXCHANGE_MESSAGE:Message_A_B.xml (part 2/3)", greedy, "Message_A_B.xml"},
		{"Message_A_B.xml", greedy, "Message_A_B.xml"},
		// a part mail's tail is no part of the name a custom pattern finds
		// (found by review: every part mail went unseen)
		{"Обмен: Message_ЦО_ОП.xml (part 1/3)", regexp.MustCompile(`^Обмен: (?P<file>.+)$`), "Message_ЦО_ОП.xml"},
		{"Message_A_B.xml (part 12/30)", greedy, "Message_A_B.xml"},
	} {
		name := c.subject
		if c.custom != nil {
			name += " ~ " + c.custom.String()
		}
		t.Run(name, func(t *testing.T) {
			if got := subjectFile(c.subject, c.custom); got != c.want {
				t.Fatalf("subjectFile(%q) = %q, want %q", c.subject, got, c.want)
			}
		})
	}
}

// TestSubjectFileOfOwnSubjects: whatever subject the delivery writes, the
// pickup reads the file name back.
func TestSubjectFileOfOwnSubjects(t *testing.T) {
	for _, prefix := range []string{PrefixExchangeMessage, PrefixRussian} {
		for _, name := range []string{"Message_ЦО_ОП.xml", "Message_A_B.zip", "Message_Магазин_1_ЦО.xml"} {
			for _, pt := range []part{{1, 1}, {1, 2}, {37, 10000}} {
				subject := prefix + name
				if pt.n > 1 {
					subject += " (part " + pt.String() + ")"
				}
				if got := subjectFile(subject, nil); got != name {
					t.Errorf("subjectFile(%q) = %q, want %q", subject, got, name)
				}
			}
		}
	}
}

// TestFromOtherNode: the pickup of a node leaves the mails naming another
// node's message; names with or without extension, with a node code that
// has '_', and names that do not parse (not judged: taken and checked).
func TestFromOtherNode(t *testing.T) {
	for _, c := range []struct {
		file, node string
		other      bool
	}{
		{"Message_ЦО_ОП.xml", "ЦО", false},
		{"Message_ОП_ЦО.xml", "ЦО", true},
		{"Message_ОП_ЦО", "ЦО", true}, // 1C's subject without extension
		{"Message_ЦО_ОП", "ЦО", false},
		{"Message_ОП_ЦО.zip", "ЦО", true},
		{"Message_Полный_ЦО_ОП.xml", "ЦО", false}, // with a prefix
		{"Message_SHOP_1_ЦО.xml", "SHOP_1", false},
		{"Message_SHOP_1_ЦО.xml", "1", false},
		{"Message_SHOP_1_ЦО.xml", "SHOP", false}, // SHOP's to 1_ЦО (found by review: left unseen)
		{"Message_SHOP_1_ЦО.xml", "ЦО", true},
		{"Message_ЦО_ОП_1.xml", "ЦО", false},
		{"Message_X", "ЦО", false},
		{"", "ЦО", false},
	} {
		if got := fromOtherNode(c.file, c.node, nil); got != c.other {
			t.Errorf("fromOtherNode(%q, %q) = %v, want %v", c.file, c.node, got, c.other)
		}
	}
}

func TestSameStem(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"Message_A_B.xml", "Message_A_B.xml", true},
		{"Message_A_B", "Message_A_B.xml", true},
		{"Message_A_B.zip", "Message_A_B", true},
		{"Message_ЦО_ОП", "Message_ЦО_ОП.ZIP", true},
		{"Message_A_B.XML", "Message_A_B", true},
		// both with an extension: the stems decide (a subject naming the
		// .xml of a zipped attachment is the same message)
		{"Message_A_B.xml", "Message_A_B.zip", true},
		{"Message_A_B", "Message_A_C", false},
		{"Message_A_B.xml", "Message_A_C.xml", false},
		{"Message_A_B", "Message_A_Bxml", false},
		{"Message_A_B.txt", "Message_A_B", false},
		{"Message_A_B.xml.001", "Message_A_B.xml", false},
		// the stem is compared as written
		{"message_a_b", "Message_A_B.xml", false},
		{"Message_A_B.xml", "Message_A_B.xml.xml", false},
		{".xml", "", true},
		{"", "", true},
	} {
		if got := sameStem(c.a, c.b); got != c.want {
			t.Errorf("sameStem(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := sameStem(c.b, c.a); got != c.want {
			t.Errorf("sameStem(%q, %q) = %v, want %v (not symmetric)", c.b, c.a, got, c.want)
		}
	}
}

func TestParsePart(t *testing.T) {
	for _, c := range []struct {
		v    string
		want part
		ok   bool
	}{
		{"1/1", part{1, 1}, true},
		{"2/5", part{2, 5}, true},
		{"5/5", part{5, 5}, true},
		{" 3 / 7 ", part{3, 7}, true},
		{"007/010", part{7, 10}, true},
		{"1/10000", part{1, 10000}, true},
		{"10000/10000", part{10000, 10000}, true},
		{"0/3", part{}, false},
		{"4/3", part{}, false},
		{"1/0", part{}, false},
		{"0/0", part{}, false},
		{"1/10001", part{}, false},
		{"10001/10001", part{}, false},
		{"1/999999", part{}, false},
		{"1/1000000", part{}, false}, // 7 digits
		{"-1/3", part{}, false},
		{"1/-3", part{}, false},
		{"+1/3", part{}, false},
		{"1/3/5", part{}, false},
		{"1 of 3", part{}, false},
		{"1\\3", part{}, false},
		{"1/3x", part{}, false},
		{"x1/3", part{}, false},
		{"١/٣", part{}, false}, // Arabic-Indic digits
		{"1/", part{}, false},
		{"/3", part{}, false},
		{"", part{}, false},
		{"  ", part{}, false},
	} {
		got, ok := parsePart(c.v)
		if ok != c.ok || got != c.want {
			t.Errorf("parsePart(%q) = %v, %v; want %v, %v", c.v, got, ok, c.want, c.ok)
		}
		if ok && got.String() != strconv.Itoa(got.i)+"/"+strconv.Itoa(got.n) {
			t.Errorf("part%v.String() = %q", got, got.String())
		}
	}
	for _, p := range []part{{1, 1}, {2, 5}, {maxParts, maxParts}} {
		back, ok := parsePart(p.String())
		if !ok || back != p {
			t.Errorf("parsePart(%q) = %v, %v", p.String(), back, ok)
		}
	}
}

func TestTransferID(t *testing.T) {
	h := exchange.Header{ExchangePlan: "Магазины", From: "ЦО", To: "ОП", MessageNo: 20}
	sha := strings.Repeat("ab", 32)
	id := transferID(h, sha, 3, 1000)
	if !validTransfer.MatchString(id) {
		t.Fatalf("transferID %q is refused by validTransfer", id)
	}
	if transferID(h, sha, 3, 1000) != id {
		t.Fatal("transferID is not stable")
	}
	h2 := h
	h2.ReceivedNo = 99 // not part of the identity
	if transferID(h2, sha, 3, 1000) != id {
		t.Fatal("transferID depends on ReceivedNo")
	}
	for _, o := range []exchange.Header{
		{ExchangePlan: "Другой", From: "ЦО", To: "ОП", MessageNo: 20},
		{ExchangePlan: "Магазины", From: "ОП", To: "ЦО", MessageNo: 20},
		{ExchangePlan: "Магазины", From: "ЦО", To: "ОП", MessageNo: 21},
	} {
		if transferID(o, sha, 3, 1000) == id {
			t.Errorf("transferID of %+v equals that of %+v", o, h)
		}
	}
	if transferID(h, strings.Repeat("cd", 32), 3, 1000) == id {
		t.Error("transferID does not depend on the content")
	}
	if transferID(h, sha, 4, 1000) == id {
		t.Error("transferID does not depend on the number of parts")
	}
	// Two size limits can cut one file into as many parts at other offsets.
	if transferID(h, sha, 3, 1001) == id {
		t.Error("transferID does not depend on the bytes per part")
	}
	if contentType("Message_A_B.ZIP") != "application/zip" || contentType("Message_A_B.xml") != "application/xml" {
		t.Error("contentType")
	}
}

// patternReader repeats a byte pattern forever.
type patternReader struct{ off int }

var pattern = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i*131 + i>>8)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	n := copy(b, pattern[p.off:])
	p.off = (p.off + n) % len(pattern)
	return n, nil
}

// byteCounter counts what is written to it.
type byteCounter int64

func (c *byteCounter) Write(b []byte) (int, error) { *c += byteCounter(len(b)); return len(b), nil }

// TestRawPerMail: a mail that write() builds around a chunk of exactly
// rawPerMail(limit) bytes fits in limit, with long Cyrillic names and
// several recipients, for a whole part and for the last one of a split file.
func TestRawPerMail(t *testing.T) {
	var cfg SMTPConfig
	cfg.From = "relay-delivery-service@long-subdomain.example.com"
	cfg.To = []string{"warehouse-branch-office-1@example.com", "warehouse-branch-office-2@example.com", "archive+exchange@example.org"}
	cfg.SubjectPrefix = PrefixRussian
	cfg.Helo = "relay-host.long-subdomain.example.com"
	p := &Publisher{cfg: cfg, now: time.Now}
	h := exchange.Header{
		ExchangePlan: "ОбменУправлениеТорговлейБухгалтерияПредприятияРозничныеМагазины",
		From:         "ЦентральныйОфисГоловнойКомпании",
		To:           "ОбособленноеПодразделениеСевер",
		MessageNo:    18446744073709551615,
		ReceivedNo:   18446744073709551614,
	}
	name := exchange.FileName(h.From, h.To, exchange.FormatXML)
	for _, limit := range []int64{64 << 10, 100 << 10, 1 << 20, 10 << 20, 25 << 20} {
		per := rawPerMail(limit)
		if per <= 0 || per >= limit {
			t.Fatalf("rawPerMail(%d) = %d", limit, per)
		}
		// A part carries more header than a whole file (part and transfer
		// headers, a longer subject, text and attachment name): the big
		// limits, slow to encode under -race, are checked as parts only.
		forms := []part{{maxParts - 1, maxParts}}
		if limit <= 1<<20 {
			forms = append(forms, part{1, 1})
		}
		for _, pt := range forms {
			out := outgoing{name: name, h: h, size: per * int64(pt.n), sha: strings.Repeat("f", 64)}
			attach, tid := name, ""
			if pt.n > 1 {
				attach, tid = name+".9999", transferID(h, out.sha, pt.n, per)
			}
			var n byteCounter
			if err := p.write(&n, out, pt, tid, io.LimitReader(&patternReader{}, per), attach); err != nil {
				t.Fatal(err)
			}
			if int64(n) > limit {
				t.Errorf("limit %d, part %s: a mail with %d file bytes is %d bytes", limit, pt, per, n)
			}
			if limit-int64(n) > 16<<10 {
				t.Errorf("limit %d, part %s: the mail is only %d bytes: more than the 16 KiB reserve unused", limit, pt, n)
			}
		}
	}
	// a tiny limit still yields a positive chunk (Validate keeps limits ≥ 64 KiB)
	if rawPerMail(1000) <= 0 {
		t.Fatal("rawPerMail of a tiny limit is not positive")
	}
}

// FuzzSubjectFile: any subject gives "" or a Message_ name without a path
// separator, with and without a custom pattern.
func FuzzSubjectFile(f *testing.F) {
	for _, s := range []string{
		"EXCHANGE_MESSAGE:Message_ЦО_ОП.xml",
		"СООБЩЕНИЕ_ОБМЕНА: Message_ЦО_ОП.zip",
		"Exchange message (Message_ЦО_ОП.zip)",
		"Exchange message (Message_ЦО_ОП)",
		"EXCHANGE_MESSAGE:Message_A_B.xml (part 2/5)",
		"Re: EXCHANGE_MESSAGE:Message_A_B.xml",
		"EXCHANGE_MESSAGE:Message_..\\x",
		"Обмен: Message_A_B.xml",
		"",
		"\x00\xff",
	} {
		f.Add(s)
	}
	custom := regexp.MustCompile(`^Обмен: (?P<file>.+)$`)
	f.Fuzz(func(t *testing.T, s string) {
		for _, re := range []*regexp.Regexp{nil, custom} {
			got := subjectFile(s, re)
			if got == "" {
				continue
			}
			if !strings.HasPrefix(got, "Message_") || strings.ContainsAny(got, `/\`) {
				t.Fatalf("subjectFile(%q) = %q", s, got)
			}
			if got != strings.TrimSpace(got) {
				t.Fatalf("subjectFile(%q) = %q has surrounding space", s, got)
			}
			if utf8.ValidString(s) && !utf8.ValidString(got) {
				t.Fatalf("subjectFile(%q) = %q is not valid UTF-8", s, got)
			}
		}
	})
}
