package exchange

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// checkXMLStd is the check as it was before gosax: encoding/xml's RawToken
// over the whole document. The body check is held to it.
func checkXMLStd(r io.Reader, lim Limits) (Header, error) {
	p := newParser(r, lim, -1)
	h, err := p.readHeader()
	if err != nil {
		return Header{}, err
	}
	for {
		if _, err := p.tok(); err != nil {
			if err == io.EOF {
				return h, nil
			}
			return h, err
		}
	}
}

// bodySeeds are bodies for the v8msg envelope: well-formed ones and the
// mistakes the check must see.
var bodySeeds = []string{
	smallBody, "", "<x/>", "<a b='1' c=\"&lt;&#x41;&#65;\">t</a>", "<![CDATA[<x>]]>",
	"<!-- c -->", "<?pi data?>", "<a>&bogus;</a>", "<a>\x01</a>", "<a><b></a></b>",
	"<a b=\"<\"/>", "<a b/>", "<a b=1/>", "<1a/>", "</a>", "<a></a >", "<a></a b>",
	"<!DOCTYPE x>", "<?xml version=\"1.0\"?>", "<a>]]></a>", "<a>Ц\u0400</a>", "<a>\xef\xbf\xbe</a>",
	"<!-- a -- b -->", "<a\tb='1'\n/>", "<a>&#0;</a>", "<a>&#x110000;</a>", "<a>&#xFFFE;</a>",
	"<ns:a xmlns:ns=\"u\"><ns:b/></ns:a>", "<a b='x' b='y'/>", "<a>x</a><b/>",
	"&#000000000000070;", "<a>&#xD800;</a>", "<a b='&#xDFFF;'/>", "&#x00000000000000041;", "&#99999999999999999999;", "&amp" + strings.Repeat("x", 40) + ";",
}

// FuzzBodyCheck holds the gosax body check to encoding/xml's: a body
// encoding/xml proves well-formed must pass, and no input gives a panic, an
// error of no sentinel or success with an unusable header. (The gosax check
// may refuse less; the table tests and TestTruncation fix what it refuses.)
func FuzzBodyCheck(f *testing.F) {
	for _, s := range bodySeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		doc := v8msg(v8fields, body)
		h, err := CheckXML(strings.NewReader(doc), Limits{})
		checkResult(t, "CheckXML", h, err)
		_, stdErr := checkXMLStd(strings.NewReader(doc), Limits{})
		if stdErr == nil && err != nil && !strings.Contains(body, "<!--->") {
			t.Fatalf("encoding/xml accepts, gosax check refuses: %v\nbody %q", err, body)
		}
		if errors.Is(stdErr, ErrNotXML) && err == nil {
			t.Fatalf("encoding/xml refuses (%v), gosax check accepts\nbody %q", stdErr, body)
		}
		if errors.Is(stdErr, ErrIncomplete) && err == nil {
			t.Fatalf("encoding/xml says incomplete, gosax check accepts\nbody %q", body)
		}
		// Every cut of a document that passes is incomplete.
		if err == nil {
			for n := len(doc) - len(strings.TrimRight(doc, " \n")) + 1; n <= len(doc)-strings.LastIndex(doc, "</v8msg:Message>"); n++ {
				if _, cerr := CheckXML(strings.NewReader(doc[:len(doc)-n]), Limits{}); !errors.Is(cerr, ErrIncomplete) {
					t.Fatalf("cut %d bytes from the end: %v, want ErrIncomplete\nbody %q", n, cerr, body)
				}
			}
		}
	})
}

// TestBodyCheckCommentDash is the one known well-formed body the gosax
// check refuses: a comment whose text starts with "->" (`<!--->-->`), which
// gosax ends at the first "-->" it finds. 1C writes no comments in bodies.
func TestBodyCheckCommentDash(t *testing.T) {
	doc := v8msg(v8fields, "<!--->-->")
	if _, err := checkXMLStd(strings.NewReader(doc), Limits{}); err != nil {
		t.Fatalf("encoding/xml: %v", err)
	}
	if _, err := CheckXML(strings.NewReader(doc), Limits{}); !errors.Is(err, ErrNotXML) {
		t.Fatalf("gosax check: %v, want ErrNotXML (if it passes now, drop the exception in FuzzBodyCheck)", err)
	}
}

// TestBodyCheckAgrees runs the seeds through both checks and shows where
// they differ: the gosax check must refuse what encoding/xml refuses here,
// with the same class of error.
func TestBodyCheckAgrees(t *testing.T) {
	for _, body := range bodySeeds {
		doc := v8msg(v8fields, body)
		_, err := CheckXML(strings.NewReader(doc), Limits{})
		_, stdErr := checkXMLStd(strings.NewReader(doc), Limits{})
		if (err == nil) != (stdErr == nil) || err != nil && class(err) != class(stdErr) {
			t.Errorf("body %q: gosax %v; encoding/xml %v", body, err, stdErr)
		}
	}
}

// class is the sentinel err wraps.
func class(err error) error {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}

// TestBodyCheckReadSizes: the result does not depend on how the reader
// hands out the bytes.
func TestBodyCheckReadSizes(t *testing.T) {
	for _, body := range bodySeeds {
		doc := v8msg(v8fields, body+strings.Repeat("<x>y</x>", 3000))
		_, want := CheckXML(strings.NewReader(doc), Limits{})
		_, got := CheckXML(&oneByte{bytes.NewReader([]byte(doc))}, Limits{})
		if (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
			t.Errorf("body %q: one byte at a time %v, at once %v", body, got, want)
		}
	}
}
