package exchange

import (
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// nestGen streams head, then depth copies of the start tag tag, and then
// stops (a truncated file): after the last start tag it records the live
// heap, which is what the parser holds for the open elements.
type nestGen struct {
	head  string
	tag   string
	depth int
	cur   string
	live  uint64
	done  bool
}

func (g *nestGen) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if g.cur == "" {
			switch {
			case g.head != "":
				g.cur, g.head = g.head, ""
			case g.depth > 0:
				g.depth--
				g.cur = g.tag
			default:
				if !g.done {
					g.done = true
					runtime.GC()
					var m runtime.MemStats
					runtime.ReadMemStats(&m)
					g.live = m.HeapAlloc
				}
				if n > 0 {
					return n, nil
				}
				return 0, io.EOF
			}
		}
		k := copy(p[n:], g.cur)
		g.cur = g.cur[k:]
		n += k
	}
	return n, nil
}

// TestNestedNamesMemory: the open-element stack keeps every open
// element's name, and a name may be as long as a tag (1 MiB), 4096 deep:
// a hostile (or pushed) message of N bytes of nested long-named elements
// made CheckXML hold ~N bytes of heap (up to 4 GiB); element names are now
// bounded (maxNameBytes), and so is the stack.
func TestNestedNamesMemory(t *testing.T) {
	doc := v8msg(v8fields, "")
	head := doc[:strings.Index(doc, "</v8msg:Body>")]
	const depth, nameLen = 1000, 128 << 10 // 128 MiB of start tags
	g := &nestGen{head: head, tag: "<n" + strings.Repeat("x", nameLen-1) + ">", depth: depth}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := CheckXML(g, Limits{})
	if !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrTooLarge) {
		t.Fatalf("CheckXML: %v", err)
	}
	held := int64(g.live) - int64(before.HeapAlloc)
	t.Logf("CheckXML: %v; live heap with %d open elements of %d-byte names: %d MiB", err, depth, nameLen, held>>20)
	if held > 64<<20 {
		t.Errorf("parser holds %d MiB for the names of open elements (input so far %d MiB): memory grows with the input", held>>20, int64(depth)*nameLen>>20)
	}
}

// TestRulesSkipNamespaceMemory: what a КД2 file carries before
// <ДанныеПоОбмену> is skipped under the size limit alone, and the xmlns
// declarations of its open elements are not kept meanwhile (found by
// review: ~40 bytes per 12-byte declaration, the parser holding 3-6 times
// the input — many GiB at 4096 levels of 1 MiB tags).
func TestRulesSkipNamespaceMemory(t *testing.T) {
	head := "\ufeff<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ФайлОбмена ВерсияФормата=\"2.0\"><ПравилаОбмена>"
	const tagLen, depth = 1000000, 24 // 24 MB of start tags, each below the 1 MiB tag bound
	tag := "<a" + strings.Repeat(` xmlns:p="u"`, (tagLen-3)/12) + ">"
	g := &nestGen{head: head, tag: tag, depth: depth}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := CheckXML(g, Limits{})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("CheckXML: %v, want ErrIncomplete", err)
	}
	held := int64(g.live) - int64(before.HeapAlloc)
	t.Logf("live heap with %d open elements of %d-byte tags: %d MiB", depth, len(tag), held>>20)
	if held > 64<<20 {
		t.Errorf("parser holds %d MiB after %d MiB of input: memory grows with the input", held>>20, depth*len(tag)>>20)
	}
}
