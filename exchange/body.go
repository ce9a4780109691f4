package exchange

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/orisano/gosax"
)

// The body — everything after the header, up to gigabytes — is proved
// well-formed with gosax, a streaming XML lexer that splits the input into
// tags, text, comments and the like at several hundred MB/s, where
// encoding/xml's RawToken manages about 40: on a large message the check
// was most of the relay's work. gosax only splits; checkBody adds what
// well-formedness asks of each piece: names, attributes, character and
// entity references, valid characters, one root, matching tags, no DTD.
// The header, where names and namespaces matter, stays with encoding/xml.

// checkBody reads the rest of the document after readHeader and proves it
// well-formed up to its closing root tag (only whitespace, comments and
// processing instructions may follow).
func (p *parser) checkBody() (err error) {
	// encoding/xml may hold a token it has half delivered: the end of a
	// self-closing tag, or the '<' after a text. It holds nothing right
	// after an end tag, so it reads on to the next one.
	for !p.lastEnd {
		if _, err := p.tok(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
	b := &bodyCheck{p: p, known: map[string]bool{}}
	for _, n := range p.stack {
		b.push([]byte(rawName(n)))
	}
	b.rootClosed = p.rootClosed
	p.stack = nil
	s := p.s
	s.tokLim = 0 // the per-token limit is the guard's from here on
	s.setEnd()
	b.guard = tokenGuard{r: s, max: p.lim.MaxTokenBytes, chunk: min(bufSize, p.lim.MaxTokenBytes), err: s.tokErr}
	left := int64(-1)
	if p.size >= 0 {
		left = max(p.size-s.pos(), 0)
	}
	// A power of two times 4 KiB: gosax doubles its buffer when a token
	// outgrows it, so its sizes reach MaxTokenBytes (64 MiB) exactly and
	// the guard can stop a token before the buffer doubles past it.
	r := gosax.NewReaderBuf(&b.guard, make([]byte, 0, pow2(max(BufferSize(left, bufSize), 4096))))
	r.EmitSelfClosingTag = true
	defer func() {
		// gosax is a third party's lexer: whatever it does on hostile
		// input must not take the relay down.
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: the XML lexer failed (%v)", ErrNotXML, oneLine(fmt.Sprint(v)))
		}
	}()
	for {
		b.guard.n = 0
		e, err := r.Event()
		if err != nil {
			return b.readFailed(err)
		}
		if e.Type() == gosax.EventEOF {
			if !b.rootClosed {
				return b.endsEarly()
			}
			return nil
		}
		if err := b.event(e); err != nil {
			if e.Type() == gosax.EventText && len(b.ends) > 0 {
				// Text the file ends in is cut, not wrong: a character
				// or a reference may be half written.
				if next, nerr := r.Event(); nerr == io.EOF || nerr == nil && next.Type() == gosax.EventEOF {
					return b.endsEarly()
				}
			}
			return err
		}
	}
}

// bodyCheck is the state of checkBody: the open elements' names, stored
// one after another in names with their ends in ends.
type bodyCheck struct {
	p          *parser
	guard      tokenGuard
	names      []byte
	ends       []int
	rootClosed bool
	// known caches validName's verdict per distinct name (a document has a
	// few hundred), up to knownBytes of names.
	known      map[string]bool
	knownBytes int
}

func (b *bodyCheck) push(name []byte) {
	b.names = append(b.names, name...)
	b.ends = append(b.ends, len(b.names))
}

// top is the innermost open element's name.
func (b *bodyCheck) top() []byte {
	n := len(b.ends)
	start := 0
	if n > 1 {
		start = b.ends[n-2]
	}
	return b.names[start:b.ends[n-1]]
}

func (b *bodyCheck) pop() {
	b.ends = b.ends[:len(b.ends)-1]
	if n := len(b.ends); n > 0 {
		b.names = b.names[:b.ends[n-1]]
	} else {
		b.names = b.names[:0]
	}
}

// readFailed classifies an error gosax returned: the reader's end inside a
// token is truncation; the rest as the header's reader classifies its
// errors (parser.fail: the parser's own limits pass through).
func (b *bodyCheck) readFailed(err error) error {
	switch {
	case err == io.EOF:
		return b.endsEarly()
	case strings.HasPrefix(err.Error(), "unknown bang type"):
		// <!ENTITY, <!ELEMENT, ...: markup declarations, as encoding/xml
		// classes them.
		return fmt.Errorf("%w: document holds a markup declaration (<!...>)", ErrDTD)
	}
	return b.p.fail(err)
}

// endsEarly is the error for a document that stops before its root closed.
func (b *bodyCheck) endsEarly() error {
	if b.rootClosed {
		return fmt.Errorf("%w: file ends inside markup after the root element", ErrIncomplete)
	}
	if len(b.ends) == 0 {
		return fmt.Errorf("%w: file ends after an element closed, before the root element did", ErrIncomplete)
	}
	return endsInside(string(b.top()))
}

func (b *bodyCheck) event(e gosax.Event) error {
	t := e.Bytes
	switch e.Type() {
	case gosax.EventStart, gosax.EventEnd, gosax.EventProcessingInstruction:
		// Real tags are a few hundred bytes; the bound keeps the one
		// limit that held with encoding/xml (see maxTagBytes).
		if len(t) > maxTagBytes {
			return b.p.s.tagErr
		}
	}
	switch e.Type() {
	case gosax.EventStart:
		return b.start(t)
	case gosax.EventEnd:
		return b.end(t)
	case gosax.EventText:
		if len(b.ends) == 0 {
			if !isSpace(t) {
				return outsideRoot("text", b.rootClosed)
			}
			return nil
		}
		if bytes.Contains(t, []byte("]]>")) {
			return fmt.Errorf("%w: \"]]>\" in text", ErrNotXML)
		}
		return checkText(t, "text", nil)
	case gosax.EventCData:
		if !bytes.HasPrefix(t, []byte("<![CDATA[")) {
			return fmt.Errorf("%w: markup %s is neither a comment nor CDATA", ErrNotXML, quote(string(t[:min(len(t), 12)])))
		}
		if len(b.ends) == 0 {
			return outsideRoot("CDATA", b.rootClosed)
		}
		return checkChars(t[len("<![CDATA[") : len(t)-len("]]>")])
	case gosax.EventComment:
		if !bytes.HasPrefix(t, []byte("<!--")) || len(t) < len("<!---->") {
			return fmt.Errorf("%w: markup %s is neither a comment nor CDATA", ErrNotXML, quote(string(t[:min(len(t), 12)])))
		}
		if c := t[len("<!--") : len(t)-len("-->")]; bytes.Contains(c, []byte("--")) || bytes.HasSuffix(c, []byte("-")) {
			return fmt.Errorf("%w: \"--\" inside a comment", ErrNotXML)
		}
		return nil
	case gosax.EventProcessingInstruction:
		// The target is the name at the start, as encoding/xml reads it
		// (<?A0!?> has target A0).
		target := t[2 : len(t)-2]
		for i, c := range target {
			if c < utf8.RuneSelf && !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_:-.", c) >= 0) {
				target = target[:i]
				break
			}
		}
		// Any number of ':' (no namespaces here): checked as '_'.
		if !b.validName(bytes.ReplaceAll(target, []byte(":"), []byte("_"))) {
			return fmt.Errorf("%w: processing instruction target %s is not a valid XML name", ErrNotXML, quote(string(target)))
		}
		if bytes.EqualFold(target, []byte("xml")) {
			return lateDeclaration()
		}
		return nil
	case gosax.EventDocType:
		return directive(t[2:])
	}
	return fmt.Errorf("%w: unexpected markup %s", ErrNotXML, quote(string(t[:min(len(t), 12)])))
}

// start checks a start tag (<name attr="v" ...> or <name .../>).
func (b *bodyCheck) start(t []byte) error {
	name, attrs := gosax.Name(t)
	if err := b.checkName(name, "element"); err != nil {
		return err
	}
	// Its size as the header's reader counts it: prefix and local part.
	size := len(name) - bytes.Count(name[:min(len(name), bytes.IndexByte(name, ':')+1)], []byte(":"))
	if err := openProblem(name, size, len(b.ends), b.rootClosed); err != nil {
		return err
	}
	if err := b.checkAttrs(name, attrs); err != nil {
		return err
	}
	b.push(name)
	return nil
}

// end checks an end tag (</name>, or the end gosax makes of <name/>)
// against the innermost open element.
func (b *bodyCheck) end(t []byte) error {
	name, _ := gosax.Name(t)
	if t[1] == '/' {
		// </name>, maybe with whitespace before the '>'; gosax.Name would
		// also let a '/' or an attribute through.
		if rest := t[min(2+len(name), len(t)-1) : len(t)-1]; !bytes.HasPrefix(t[2:], name) || !isSpace(rest) {
			return fmt.Errorf("%w: end tag %s holds more than a name", ErrNotXML, quote(string(t[:min(len(t), 64)])))
		}
	}
	if len(b.ends) == 0 {
		return closeProblem("", string(name))
	}
	if open := b.top(); !bytes.Equal(open, name) {
		return closeProblem(string(open), string(name))
	}
	b.pop()
	if len(b.ends) == 0 {
		b.rootClosed = true
	}
	return nil
}

// checkAttrs checks the attributes of element el: name="value" or
// name='value', each value free of '<' and of bad references.
func (b *bodyCheck) checkAttrs(el, rest []byte) error {
	for {
		a, next, err := gosax.NextAttribute(rest)
		if err != nil {
			return fmt.Errorf("%w: element <%s>: %s", ErrNotXML, oneLine(string(el)), oneLine(err.Error()))
		}
		if len(a.Key) == 0 {
			if len(next) == 0 && isSpace(rest) {
				return nil
			}
			return fmt.Errorf("%w: element <%s> holds a stray %s", ErrNotXML, oneLine(string(el)), quote(string(rest[:min(len(rest), 12)])))
		}
		if err := b.checkName(a.Key, "attribute"); err != nil {
			return err
		}
		v := a.Value
		if len(v) < 2 || v[len(v)-1] != v[0] {
			return fmt.Errorf("%w: attribute %s of <%s> has no quoted value", ErrNotXML, quote(string(a.Key)), oneLine(string(el)))
		}
		if bytes.IndexByte(v, '<') >= 0 {
			return fmt.Errorf("%w: attribute %s of <%s> holds '<'", ErrNotXML, quote(string(a.Key)), oneLine(string(el)))
		}
		if err := checkText(v[1:len(v)-1], "attribute", a.Key); err != nil {
			return err
		}
		rest = next
	}
}

// checkName refuses an empty or malformed element, attribute or
// processing instruction target name.
func (b *bodyCheck) checkName(name []byte, what string) error {
	if !b.validName(name) {
		return fmt.Errorf("%w: %s name %s is not a valid XML name", ErrNotXML, what, quote(string(name)))
	}
	return nil
}

// knownBytes bounds the names whose verdict bodyCheck keeps.
const knownBytes = 256 << 10

// validName asks encoding/xml, the header's reader, whether name is a name
// (its rules: XML's name characters, at most one ':'), once per distinct
// name: the rules are its tables, not copied here.
func (b *bodyCheck) validName(name []byte) bool {
	if len(name) == 0 {
		return false
	}
	if ok, seen := b.known[string(name)]; seen {
		return ok
	}
	doc := make([]byte, 0, len(name)+3)
	doc = append(append(append(doc, '<'), name...), '/', '>')
	t, err := xml.NewDecoder(bytes.NewReader(doc)).RawToken()
	se, isStart := t.(xml.StartElement)
	ok := err == nil && isStart && len(se.Attr) == 0 && rawName(se.Name) == string(name)
	if b.knownBytes+len(name) <= knownBytes {
		b.known[string(name)] = ok
		b.knownBytes += len(name)
	}
	return ok
}

// checkText checks character data (text, or the value of attribute key):
// valid characters, and '&' only in a reference to one of the five
// predefined entities or to a valid character.
func checkText(t []byte, what string, key []byte) error {
	if err := checkChars(t); err != nil {
		return err
	}
	for {
		i := bytes.IndexByte(t, '&')
		if i < 0 {
			return nil
		}
		t = t[i+1:]
		j := bytes.IndexByte(t, ';')
		if j < 0 || !validRef(t[:j]) {
			if key != nil {
				what += " " + quote(string(key))
			}
			return fmt.Errorf("%w: %s holds '&' that is not a valid reference (%s)", ErrNotXML, what, quote(string(t[:min(len(t), 12)])))
		}
		t = t[j+1:]
	}
}

// validRef reports whether ref (between '&' and ';') names a predefined
// entity or a valid character.
func validRef(ref []byte) bool {
	if len(ref) <= len("quot") {
		switch string(ref) {
		case "lt", "gt", "amp", "apos", "quot":
			return true
		}
	}
	if len(ref) < 2 || ref[0] != '#' {
		return false
	}
	digits, base := ref[1:], rune(10)
	if digits[0] == 'x' {
		digits, base = digits[1:], 16
	}
	if len(digits) == 0 {
		return false
	}
	var r rune
	for _, c := range digits {
		var d rune
		switch {
		case '0' <= c && c <= '9':
			d = rune(c - '0')
		case base == 16 && 'a' <= c && c <= 'f':
			d = rune(c-'a') + 10
		case base == 16 && 'A' <= c && c <= 'F':
			d = rune(c-'A') + 10
		default:
			return false
		}
		if r = r*base + d; r > utf8.MaxRune { // leading zeros may be many
			return false
		}
	}
	// A surrogate is no XML character, but encoding/xml (the header's
	// reader) takes a reference to one as U+FFFD, and so does this check.
	return xmlChar(r) || 0xD800 <= r && r <= 0xDFFF
}

// checkChars refuses invalid UTF-8 and characters XML does not allow
// (controls other than tab, newline and carriage return; U+FFFE, U+FFFF;
// valid UTF-8 holds no surrogates).
func checkChars(t []byte) error {
	if !utf8.Valid(t) {
		return fmt.Errorf("%w: invalid UTF-8 in the document", ErrNotXML)
	}
	for _, c := range t {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' {
			return fmt.Errorf("%w: control character %#02x in the document", ErrNotXML, c)
		}
	}
	for i := 0; ; {
		j := bytes.Index(t[i:], []byte("\xef\xbf"))
		if j < 0 {
			return nil
		}
		i += j + 2
		if i < len(t) && (t[i] == 0xbe || t[i] == 0xbf) {
			return fmt.Errorf("%w: character U+FFF%X is not allowed in XML", ErrNotXML, t[i]-0xb0)
		}
	}
}

// xmlChar is XML 1.0's Char production.
func xmlChar(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}

// tokenGuard bounds what gosax buffers for one token, since gosax grows its
// buffer to hold a whole token: it reads from r at most chunk bytes at a
// time and refuses once more than limit() bytes were read since n was last
// reset (at every token). For a max of a MiB or more (the default is 64
// MiB) that is a little under max, so that gosax's buffer, which doubles
// when a token leaves it less than 1 KiB free, stops at max: about 1.5 max
// of memory at the worst moment (the old buffer and the new one), where
// encoding/xml took some 1.75. Smaller limits (tests) are enforced as
// max+chunk.
type tokenGuard struct {
	r     io.Reader
	n     int64
	max   int64
	chunk int64
	err   error
}

func (g *tokenGuard) Read(p []byte) (int, error) {
	if g.n > g.limit() {
		return 0, g.err
	}
	n, err := g.r.Read(p[:min(int64(len(p)), g.chunk)])
	g.n += int64(n)
	return n, err
}

// limit is how many bytes one token may read: the next read (chunk), what
// was read ahead before the token began (up to chunk) and gosax's 1 KiB of
// headroom must fit in max.
func (g *tokenGuard) limit() int64 {
	if g.max >= 1<<20 {
		return g.max - 2*g.chunk - 1024
	}
	return g.max + g.chunk
}

// pow2 is the smallest power of two ≥ n.
func pow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}
