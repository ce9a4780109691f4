package exchange

// The body check's refusals and bounds, held to encoding/xml.

import (
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// TestBodyRefusesMalformed: bodies that are not well-formed XML, which
// encoding/xml (the reference the body check is held to) refuses as
// ErrNotXML, must be refused by the gosax body check too, or the pickup
// would hand a malformed file on as complete. (gosax.Name strips a '/' from
// end tags, ends a comment at its first "-->", and checks no names.)
func TestBodyRefusesMalformed(t *testing.T) {
	for name, body := range map[string]string{
		"end tag with trailing slash":        "<a></a/>",
		"end tag with space and slash":       "<a></a />",
		"root end tag with trailing slash":   "(whole document below)",
		"comment ending in --->":             "<!-- x --->",
		"PI without target":                  "<??>",
		"PI target after space":              "<? x?>",
		"PI target not a name":               "<?1x?>",
		"PI target xml + VT (decl, ctl chr)": "<?xml\x0b?>",
		"element name with U+00D7":           "<a×/>",
		"element name starting with U+00B7":  "<·a/>",
		"element name of a combining mark":   "<\u0300/>",
		"attribute name with U+037E":         "<a b\u037e='1'/>",
		"element name with two colons":       "<a:b:c/>",
	} {
		doc := v8msg(v8fields, body)
		if name == "root end tag with trailing slash" {
			doc = strings.TrimSuffix(v8msg(v8fields, ""), "</v8msg:Body>\n</v8msg:Message>\n") + "</v8msg:Body/>\n</v8msg:Message/>\n"
		}
		_, stdErr := checkXMLStd(strings.NewReader(doc), Limits{})
		if !errors.Is(stdErr, ErrNotXML) {
			t.Fatalf("%s: encoding/xml says %v; the test expects ErrNotXML", name, stdErr)
		}
		_, err := CheckXML(strings.NewReader(doc), Limits{})
		if !errors.Is(err, ErrNotXML) {
			t.Errorf("%s %q: gosax check %v; encoding/xml: %v", name, body, err, stdErr)
		}
	}
}

// peakReader samples the live heap while the check reads.
type peakReader struct {
	r     io.Reader
	n, at int64
	peak  uint64
}

func (p *peakReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if p.n-p.at >= 256<<10 || err != nil {
		p.at = p.n
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		p.peak = max(p.peak, m.HeapAlloc)
	}
	return n, err
}

func peakOf(check func(io.Reader, Limits) (Header, error), doc string, lim Limits) (uint64, error) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	pr := &peakReader{r: strings.NewReader(doc)}
	_, err := check(pr, lim)
	return pr.peak - min(pr.peak, before.HeapAlloc), err
}

// TestBodyTokenMemory: MaxTokenBytes keeps memory flat: a text just under
// the limit must not make gosax's doubling buffer reach twice the limit
// with the old buffer still live (~3×, 192 MiB at the default 64 MiB,
// before tokenGuard.limit; encoding/xml needed ~1.75×).
func TestBodyTokenMemory(t *testing.T) {
	const max = 16 << 20
	lim := Limits{MaxTokenBytes: max}
	doc := v8msg(v8fields, "<b>"+strings.Repeat("x", max-200<<10)+"</b>")
	stdPeak, stdErr := peakOf(checkXMLStd, doc, lim)
	peak, err := peakOf(CheckXML, doc, lim)
	t.Logf("token %d MiB: encoding/xml %v, peak %d MiB; gosax %v, peak %d MiB", max>>20, stdErr, stdPeak>>20, err, peak>>20)
	if err != nil {
		t.Fatalf("CheckXML: %v", err)
	}
	if peak > 2*max {
		t.Errorf("a %d MiB text (under MaxTokenBytes) costs the body check %d MiB of heap (encoding/xml: %d MiB)", max>>20, peak>>20, stdPeak>>20)
	}
}

// TestBodyDTDClass: a markup declaration in the body is ErrDTD, as for
// encoding/xml (gosax calls <!ENTITY ...> an "unknown bang type").
func TestBodyDTDClass(t *testing.T) {
	// Known: a <!DOCTYPE whose quoted literal holds '<' (gosax counts it as
	// markup) reads to the end and is ErrIncomplete, so the pickup waits
	// incomplete_timeout before the dead letter. 1C writes no DTDs.
	doc := v8msg(v8fields, `<!DOCTYPE x [<!ENTITY a "<">]>`)
	if _, err := CheckXML(strings.NewReader(doc), Limits{}); !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrDTD) {
		t.Errorf("DOCTYPE with '<' in a literal: %v, want ErrIncomplete (or ErrDTD)", err)
	}
	for _, body := range []string{
		`<!ENTITY x "y">`,
		`<!ELEMENT a ANY>`,
	} {
		doc := v8msg(v8fields, body)
		_, stdErr := checkXMLStd(strings.NewReader(doc), Limits{})
		_, err := CheckXML(strings.NewReader(doc), Limits{})
		if !errors.Is(err, ErrDTD) {
			t.Errorf("%q: gosax check %v; encoding/xml %v", body, err, stdErr)
		}
	}
}

// TestBodyNameLimitColon: the body check bounds a name as the header's
// reader does, len(prefix)+len(local), not the raw "prefix:local".
func TestBodyNameLimitColon(t *testing.T) {
	name := "p:" + strings.Repeat("n", maxNameBytes-1) // Space+Local = 4096, raw 4097
	doc := v8msg(v8fields, "<"+name+"/>")
	if _, err := checkXMLStd(strings.NewReader(doc), Limits{}); err != nil {
		t.Fatalf("encoding/xml: %v", err)
	}
	if _, err := CheckXML(strings.NewReader(doc), Limits{}); err != nil {
		t.Errorf("gosax check refuses what encoding/xml accepts: %v", err)
	}
}

// TestBodyTrailingCutMessage: a trailing comment cut after the root closed
// is incomplete, and the reason does not say the root is still open.
func TestBodyTrailingCutMessage(t *testing.T) {
	doc := v8msg(v8fields, "") + "<!-- trailing"
	_, err := CheckXML(strings.NewReader(doc), Limits{})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("CheckXML: %v", err)
	}
	if strings.Contains(err.Error(), "before the root element did") {
		t.Errorf("root closed, but the error says: %v", err)
	}
}
