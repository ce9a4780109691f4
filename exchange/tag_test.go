package exchange

import (
	"bytes"
	"io"
	"runtime"
	"strings"
	"testing"
)

// attrBomb is a platform message whose body holds one element with n bytes
// of tiny attributes (a="" a="" ...): encoding/xml turns each 5 bytes into a
// 48-byte xml.Attr, so such a tag costs ~25 times its size in memory.
func attrBomb(n int) []byte {
	var b bytes.Buffer
	doc := v8msg(v8fields, "<x/>")
	i := strings.Index(doc, "<x/>")
	b.WriteString(doc[:i+2])
	for b.Len() < i+n {
		b.WriteString(` a=""`)
	}
	b.WriteString(doc[i+2:])
	return b.Bytes()
}

// TestTagMemoryBounded: a message whose body is one tag of tiny attributes
// must not make the parser hold ~25 times its size (the default
// MaxTokenBytes of 64 MiB lets such a tag through: 48 MB took 2.4 GB); it
// is refused as too large once the tag passes 1 MiB, while text nodes,
// comments and CDATA beyond that size still pass.
func TestTagMemoryBounded(t *testing.T) {
	doc := attrBomb(8 << 20) // without the tag bound: ~200 MiB allocated
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := CheckXML(bytes.NewReader(doc), Limits{})
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("CheckXML: %v; allocated %d MiB for a %d MiB document", err, alloc>>20, len(doc)>>20)
	wantErr(t, "attribute bomb", err, ErrTooLarge)
	if alloc > 128<<20 {
		t.Errorf("allocated %d MiB reading a %d MiB document", alloc>>20, len(doc)>>20)
	}

	// A huge text node (a stored file in base64) is still fine, and so is a
	// big comment or CDATA section, and a tag right after text.
	big := strings.Repeat("QUJD", 1<<20) // 4 MiB, past the tag bound
	for name, body := range map[string]string{
		"text":              "<b>" + big + "</b>",
		"CDATA":             "<b><![CDATA[" + big + "]]></b>",
		"comment":           "<!--" + big + "-->",
		"text then tag":     "t<b a=\"1\">" + big + "</b>",
		"CDATA then text":   "<b><![CDATA[x]]>" + big + "</b>",
		"text after end":    "<b></b>" + big,
		"tag with long val": `<b v="` + strings.Repeat("x", 512<<10) + `"/>`,
	} {
		if _, err := CheckXML(strings.NewReader(v8msg(v8fields, body)), Limits{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Every read size still sees the same result.
	small := attrBomb(2 << 20)
	if _, err := CheckXML(io.LimitReader(&oneByte{bytes.NewReader(small)}, int64(len(small))), Limits{}); err == nil {
		t.Errorf("one byte at a time: a 2 MiB tag was accepted")
	}
}

type oneByte struct{ r io.Reader }

func (o *oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1)]) }
