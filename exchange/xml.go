package exchange

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Namespaces that identify the dialects.
const (
	nsV8  = "http://v8.1c.ru/messages"
	nsSSL = "http://www.1c.ru/SSL/Exchange/Message"
	nsXML = "http://www.w3.org/XML/1998/namespace"
)

// maxDepth bounds element nesting: the open-element stack is the only state
// that grows with the body, and real messages nest a few dozen levels.
const maxDepth = 4096

// maxNameBytes bounds an element's name (prefix and local part), kept on
// that stack: 1C's are tens of characters.
const maxNameBytes = 4096

// maxTagBytes bounds one tag (a start tag with its attributes, an end tag, a
// processing instruction) below MaxTokenBytes: encoding/xml holds a tag's
// attributes as 48-byte xml.Attr values, so a tag of tiny attributes costs
// some 25 times its size. Real tags are a few hundred bytes; 1 MiB keeps
// the worst one near 30 MiB of memory.
const maxTagBytes = 1 << 20

// ReadHeader reads from r only until the header is complete (it does NOT
// read the body, apart from what one 64 KiB buffer pulls in) and returns it.
// Use it to route; use CheckXML or Inspect to prove a file complete.
func ReadHeader(r io.Reader, lim Limits) (Header, error) {
	return newParser(r, lim, -1).readHeader()
}

// CheckXML reads the whole document from r, proving it well-formed up to and
// including its closing root tag (only whitespace, comments and processing
// instructions may follow), and returns the header. A stream that ends early
// gives an error wrapping ErrIncomplete. When the header was read but the
// rest is bad, the header is returned along with the error, so the reason can
// name the message.
func CheckXML(r io.Reader, lim Limits) (Header, error) {
	return checkXML(r, lim, -1)
}

// checkXML is CheckXML for a document of about size bytes (-1: unknown),
// which sizes the read buffer: a 10 KB message needs no 64 KiB one.
func checkXML(r io.Reader, lim Limits, size int64) (Header, error) {
	p := newParser(r, lim, size)
	h, err := p.readHeader()
	if err != nil {
		return Header{}, err
	}
	return h, p.checkBody()
}

// nsDecl is one namespace declaration in scope while the header is read.
type nsDecl struct {
	prefix, uri string
	depth       int // depth of the element that declared it
}

// parser drives encoding/xml's RawToken (fast: no namespace work, no copies)
// and adds what RawToken leaves out: start/end tag matching, one root, no
// text outside it, no directives, and namespace resolution for the header.
type parser struct {
	s          *byteSrc
	d          *xml.Decoder
	lim        Limits
	stack      []xml.Name // raw (prefix:local) names of the open elements
	ns         []nsDecl   // declarations in scope; kept only while the header is read
	trackNS    bool
	rootSeen   bool
	rootClosed bool
	lastEnd    bool  // the last token was an end tag
	size       int64 // the document's size if known, else -1
	charsetErr error
}

func newParser(r io.Reader, lim Limits, size int64) *parser {
	lim = lim.norm()
	s := newByteSrc(r, size)
	s.maxTok = lim.MaxTokenBytes
	s.tokErr = fmt.Errorf("%w: an XML token (text, tag or comment) is longer than %d bytes (relay.max_xml_token)", ErrTooLarge, lim.MaxTokenBytes)
	s.maxTag = maxTagBytes
	s.tagErr = fmt.Errorf("%w: an XML tag (name and attributes) is longer than %d bytes", ErrTooLarge, maxTagBytes)
	p := &parser{s: s, lim: lim, trackNS: true, size: size}
	d := xml.NewDecoder(s) // s is an io.ByteReader, so the decoder adds no buffer of its own
	d.Strict = true        // and Entity stays nil: only the five predefined entities exist
	d.CharsetReader = func(label string, in io.Reader) (io.Reader, error) {
		if strings.EqualFold(label, "utf-8") {
			return in, nil
		}
		p.charsetErr = fmt.Errorf("%w: declared encoding %s is not UTF-8", ErrNotXML, quote(label))
		return nil, p.charsetErr
	}
	p.d = d
	return p
}

// readHeader reads up to the end of the header and leaves the parser ready
// to read the rest of the document.
func (p *parser) readHeader() (Header, error) {
	p.limitHeader("the first %d bytes")
	if err := p.start(); err != nil {
		return Header{}, err
	}
	var root xml.StartElement
	for {
		t, err := p.tok()
		if err != nil {
			return Header{}, err
		}
		if se, ok := t.(xml.StartElement); ok {
			root = se
			break
		}
	}
	ns, err := p.nsOf(root)
	if err != nil {
		return Header{}, err
	}
	var h Header
	switch {
	case root.Name.Local == "ФайлОбмена":
		h, err = p.rules()
	case root.Name.Local == "Message" && ns == nsV8:
		h, err = p.platform()
	case root.Name.Local == "Message":
		h, err = p.enterpriseData(root, ns)
	default:
		err = fmt.Errorf("%w: root element <%s>%s is not an exchange message",
			ErrUnknownDialect, oneLine(rawName(root.Name)), inNS(ns))
	}
	if err != nil {
		return Header{}, err
	}
	p.trackNS, p.ns = false, nil
	p.limitSize()
	return h, nil
}

// limitHeader lets the header reader consume MaxHeaderBytes from here
// (never past MaxSize); stretch names them in the error, with a %d for
// their number.
func (p *parser) limitHeader(stretch string) {
	from := p.s.pos()
	if p.lim.MaxSize-from < p.lim.MaxHeaderBytes {
		p.limitSize()
		return
	}
	p.s.setLimit(from+p.lim.MaxHeaderBytes,
		fmt.Errorf("%w: header not complete within "+stretch, ErrTooLarge, p.lim.MaxHeaderBytes))
}

// limitSize lets the reader consume up to MaxSize.
func (p *parser) limitSize() {
	p.s.setLimit(p.lim.MaxSize, fmt.Errorf("%w: XML larger than %d bytes", ErrTooLarge, p.lim.MaxSize))
}

// start skips a UTF-8 byte order mark and leading whitespace and makes sure
// the content starts with '<', so that binary junk is told from a truncated
// document before encoding/xml sees it.
func (p *parser) start() error {
	s := p.s
	b, err := s.ReadByte()
	if err != nil {
		return p.early(err, "file is empty")
	}
	if b == 0xEF {
		for _, want := range []byte{0xBB, 0xBF} {
			c, err := s.ReadByte()
			if err != nil {
				return p.early(err, "file ends inside the byte order mark")
			}
			if c != want {
				return fmt.Errorf("%w: content does not start with '<'", ErrNotXML)
			}
		}
		if b, err = s.ReadByte(); err != nil {
			return p.early(err, "file ends after the byte order mark")
		}
	}
	for b == ' ' || b == '\t' || b == '\r' || b == '\n' {
		if b, err = s.ReadByte(); err != nil {
			return p.early(err, "file holds only whitespace")
		}
	}
	if b != '<' {
		if c, err := s.ReadByte(); err == nil && (b == 0xFF && c == 0xFE || b == 0xFE && c == 0xFF) {
			// An editor shows it starting with '<' (found by review).
			return fmt.Errorf("%w: file is UTF-16 (byte order mark %X %X), not UTF-8", ErrNotXML, b, c)
		}
		return fmt.Errorf("%w: content does not start with '<'", ErrNotXML)
	}
	s.unreadByte()
	return nil
}

// early turns a read error before the first '<' into the package's error.
func (p *parser) early(err error, why string) error {
	if err == io.EOF {
		return fmt.Errorf("%w: %s", ErrIncomplete, why)
	}
	return p.fail(err)
}

// tok returns the next token and enforces the well-formedness rules RawToken
// leaves out. At the clean end of a complete document it returns io.EOF.
func (p *parser) tok() (xml.Token, error) {
	p.s.startToken()
	t, err := p.d.RawToken()
	if err != nil {
		if err == io.EOF && p.rootClosed {
			return nil, io.EOF
		}
		return nil, p.fail(err)
	}
	_, p.lastEnd = t.(xml.EndElement)
	switch t := t.(type) {
	case xml.StartElement:
		if err := openProblem(rawName(t.Name), len(t.Name.Space)+len(t.Name.Local), len(p.stack), p.rootClosed); err != nil {
			return nil, err
		}
		p.stack = append(p.stack, t.Name)
		p.rootSeen = true
		if p.trackNS {
			for _, a := range t.Attr {
				switch {
				case a.Name.Space == "xmlns":
					p.ns = append(p.ns, nsDecl{a.Name.Local, a.Value, len(p.stack)})
				case a.Name.Space == "" && a.Name.Local == "xmlns":
					p.ns = append(p.ns, nsDecl{"", a.Value, len(p.stack)})
				}
			}
			if len(p.ns) > maxNSInScope {
				// Each header element is resolved against them all:
				// tens of thousands made a 1 MiB header cost seconds of
				// CPU (found by review). 1C declares about ten.
				return nil, fmt.Errorf("%w: more than %d namespace declarations in scope", ErrTooLarge, maxNSInScope)
			}
		}
	case xml.EndElement:
		n := len(p.stack)
		if n == 0 {
			return nil, closeProblem("", rawName(t.Name))
		}
		if open := p.stack[n-1]; open != t.Name {
			return nil, closeProblem(rawName(open), rawName(t.Name))
		}
		p.stack = p.stack[:n-1]
		if n == 1 {
			p.rootClosed = true
		}
		if p.trackNS {
			for len(p.ns) > 0 && p.ns[len(p.ns)-1].depth >= n {
				p.ns = p.ns[:len(p.ns)-1]
			}
		}
	case xml.CharData:
		if len(p.stack) == 0 && !isSpace(t) {
			return nil, outsideRoot("text", p.rootClosed)
		}
	case xml.Directive:
		return nil, directive(t)
	case xml.ProcInst:
		if p.rootSeen && strings.EqualFold(t.Target, "xml") {
			return nil, lateDeclaration()
		}
	}
	return t, nil
}

// The well-formedness rules both readers enforce (encoding/xml's RawToken
// for the header, gosax for the body), one error each.

// openProblem says why an element named name (size bytes of prefix and
// local part) may not open at depth, or nil. Each open element's name is
// kept to match its end tag: bounded, the stack is at most maxDepth ×
// maxNameBytes whatever the input.
// (A []byte name is not copied unless it goes into the error: the body's
// reader calls this for every element.)
func openProblem[N ~string | ~[]byte](name N, size, depth int, rootClosed bool) error {
	switch {
	case rootClosed:
		return fmt.Errorf("%w: element <%s> after the root element closed", ErrNotXML, oneLine(string(name)))
	case depth >= maxDepth:
		return fmt.Errorf("%w: elements nested deeper than %d", ErrTooLarge, maxDepth)
	case size > maxNameBytes:
		return fmt.Errorf("%w: an element name is longer than %d bytes", ErrTooLarge, maxNameBytes)
	}
	return nil
}

// closeProblem is the error of an end tag name that does not close open,
// the innermost open element ("" when none is open).
func closeProblem(open, name string) error {
	if open == "" {
		return fmt.Errorf("%w: end tag </%s> without a start tag", ErrNotXML, oneLine(name))
	}
	return fmt.Errorf("%w: element <%s> closed by </%s>", ErrNotXML, oneLine(open), oneLine(name))
}

// outsideRoot refuses what (text, CDATA) outside the root element.
func outsideRoot(what string, rootClosed bool) error {
	where := "before"
	if rootClosed {
		where = "after"
	}
	return fmt.Errorf("%w: %s %s the root element", ErrNotXML, what, where)
}

// directive refuses a <!DOCTYPE ...> (or other) directive; d is its text
// after "<!".
func directive(d []byte) error {
	return fmt.Errorf("%w: document holds a <!%s> directive", ErrDTD, oneLine(firstWord(d)))
}

// lateDeclaration refuses an XML declaration that is not at the start.
func lateDeclaration() error {
	return fmt.Errorf("%w: XML declaration after the start of the document", ErrNotXML)
}

// endsInside is the error of a document that ends inside element name.
func endsInside(name string) error {
	return fmt.Errorf("%w: file ends inside <%s>", ErrIncomplete, oneLine(name))
}

// fail classifies an error from the decoder: truncation (the reader hit EOF)
// is ErrIncomplete, our own limit and zip errors pass through, anything else
// the decoder refused is ErrNotXML.
func (p *parser) fail(err error) error {
	if err == io.EOF {
		if !p.rootSeen {
			return fmt.Errorf("%w: file ends before the root element", ErrIncomplete)
		}
		return endsInside(rawName(p.stack[len(p.stack)-1]))
	}
	if p.charsetErr != nil {
		return p.charsetErr
	}
	if IsVerdict(err) {
		return err
	}
	if p.s.err != nil && p.s.err != io.EOF && errors.Is(err, p.s.err) {
		return fmt.Errorf("exchange: reading message: %w", err)
	}
	if p.s.sawEOF {
		return fmt.Errorf("%w: file ends early (%s)", ErrIncomplete, oneLine(err.Error()))
	}
	return fmt.Errorf("%w: %s", ErrNotXML, oneLine(err.Error()))
}

// maxNSInScope bounds the namespace declarations in scope while the header
// is read.
const maxNSInScope = 256

// resolve maps a prefix to its namespace URI using the declarations in scope.
func (p *parser) resolve(prefix string) (string, bool) {
	if prefix == "xml" {
		return nsXML, true
	}
	for i := len(p.ns) - 1; i >= 0; i-- {
		if p.ns[i].prefix == prefix {
			return p.ns[i].uri, prefix == "" || p.ns[i].uri != ""
		}
	}
	return "", prefix == ""
}

// nsOf is the namespace URI of an element read while the header is read.
func (p *parser) nsOf(e xml.StartElement) (string, error) {
	ns, ok := p.resolve(e.Name.Space)
	if !ok {
		return "", fmt.Errorf("%w: element <%s> uses undeclared namespace prefix %s",
			ErrNotXML, oneLine(rawName(e.Name)), quote(e.Name.Space))
	}
	return ns, nil
}

// child returns the next child element of the open element at depth (the
// stack is that deep when called), skipping text, comments and the subtrees
// of children already returned; ok is false once that element has closed.
func (p *parser) child(depth int) (xml.StartElement, bool, error) {
	for {
		t, err := p.tok()
		if err != nil {
			return xml.StartElement{}, false, err
		}
		switch t := t.(type) {
		case xml.StartElement:
			if len(p.stack) == depth+1 {
				return t, true, nil
			}
		case xml.EndElement:
			if len(p.stack) < depth {
				return xml.StartElement{}, false, nil
			}
		}
	}
}

// text reads the text content of the open element at depth up to its end tag.
func (p *parser) text(depth int, label string) (string, error) {
	var b strings.Builder
	for {
		t, err := p.tok()
		if err != nil {
			return "", err
		}
		switch t := t.(type) {
		case xml.CharData:
			b.Write(t)
		case xml.StartElement:
			return "", fmt.Errorf("%w: %s holds element <%s> instead of a value",
				ErrBadHeader, label, oneLine(rawName(t.Name)))
		case xml.EndElement:
			if len(p.stack) < depth {
				return b.String(), nil
			}
		}
	}
}

// Field indexes and their names in each dialect, for error messages.
const (
	fPlan = iota
	fFrom
	fTo
	fMsgNo
	fRecvNo
	nFields
)

var (
	xmlFieldNames   = [nFields]string{"ExchangePlan", "From", "To", "MessageNo", "ReceivedNo"}
	rulesFieldNames = [nFields]string{"ПланОбмена", "ОтКого", "Кому", "НомерИсходящегоСообщения", "НомерВходящегоСообщения"}
)

// fields collects the five header values as text, whatever the dialect.
type fields struct {
	names *[nFields]string
	val   [nFields]string
	has   [nFields]bool
}

func (f *fields) index(name string) int {
	for i, n := range f.names {
		if n == name {
			return i
		}
	}
	return -1
}

func (f *fields) set(i int, v string) error {
	if f.has[i] {
		return fmt.Errorf("%w: %s given twice", ErrBadHeader, f.names[i])
	}
	f.has[i], f.val[i] = true, v
	return nil
}

// elements reads header fields from the children (in namespace ns) of the open element at depth.
func (p *parser) elements(depth int, ns string, f *fields) error {
	for {
		el, ok, err := p.child(depth)
		if err != nil || !ok {
			return err
		}
		ens, err := p.nsOf(el)
		if err != nil {
			return err
		}
		i := f.index(el.Name.Local)
		if ens != ns || i < 0 {
			continue // an element we do not need; child skips its subtree
		}
		v, err := p.text(depth+1, f.names[i])
		if err != nil {
			return err
		}
		if err := f.set(i, v); err != nil {
			return err
		}
	}
}

// platform reads the v8msg header: Message/Header/{ExchangePlan,To,From,MessageNo,ReceivedNo}.
func (p *parser) platform() (Header, error) {
	el, ok, err := p.child(1)
	if err != nil {
		return Header{}, err
	}
	if !ok {
		return Header{}, fmt.Errorf("%w: Message has no Header", ErrNoHeader)
	}
	if ns, err := p.nsOf(el); err != nil {
		return Header{}, err
	} else if ns != nsV8 || el.Name.Local != "Header" {
		return Header{}, fmt.Errorf("%w: Message starts with <%s>, not Header", ErrNoHeader, oneLine(rawName(el.Name)))
	}
	f := fields{names: &xmlFieldNames}
	if err := p.elements(2, nsV8, &f); err != nil {
		return Header{}, err
	}
	return f.header(DialectPlatform)
}

// enterpriseData reads the SSL header: Message/msg:Header/msg:Confirmation/{...}.
// A Message root in a namespace other than none or the SSL one counts as
// EnterpriseData only if its first child is the SSL Header.
func (p *parser) enterpriseData(root xml.StartElement, rootNS string) (Header, error) {
	known := rootNS == "" || rootNS == nsSSL
	unknown := func() (Header, error) {
		return Header{}, fmt.Errorf("%w: root element <%s>%s is not an exchange message",
			ErrUnknownDialect, oneLine(rawName(root.Name)), inNS(rootNS))
	}
	el, ok, err := p.child(1)
	if err != nil {
		return Header{}, err
	}
	if !ok {
		if !known {
			return unknown()
		}
		return Header{}, fmt.Errorf("%w: Message has no Header", ErrNoHeader)
	}
	if ns, err := p.nsOf(el); err != nil {
		return Header{}, err
	} else if ns != nsSSL || el.Name.Local != "Header" {
		if !known {
			return unknown()
		}
		return Header{}, fmt.Errorf("%w: Message starts with <%s>, not the %s Header",
			ErrNoHeader, oneLine(rawName(el.Name)), nsSSL)
	}
	f := fields{names: &xmlFieldNames}
	found := false
	for {
		c, ok, err := p.child(2)
		if err != nil {
			return Header{}, err
		}
		if !ok {
			break
		}
		ns, err := p.nsOf(c)
		if err != nil {
			return Header{}, err
		}
		if ns != nsSSL || c.Name.Local != "Confirmation" {
			continue
		}
		if found {
			return Header{}, fmt.Errorf("%w: Confirmation given twice", ErrBadHeader)
		}
		found = true
		if err := p.elements(3, nsSSL, &f); err != nil {
			return Header{}, err
		}
	}
	if !found {
		return Header{}, fmt.Errorf("%w: Header has no Confirmation", ErrNoHeader)
	}
	return f.header(DialectEnterpriseData)
}

// rules reads the КД2 header: the attributes of ФайлОбмена's ДанныеПоОбмену
// child. Other children before it (exchange rules) are skipped; data objects
// before it mean there is no header.
func (p *parser) rules() (Header, error) {
	for {
		el, ok, err := p.child(1)
		if err != nil {
			return Header{}, err
		}
		if !ok {
			return Header{}, fmt.Errorf("%w: ФайлОбмена has no ДанныеПоОбмену", ErrNoHeader)
		}
		switch el.Name.Local {
		case "ДанныеПоОбмену":
			f := fields{names: &rulesFieldNames}
			for _, a := range el.Attr {
				if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
					continue
				}
				if i := f.index(a.Name.Local); i >= 0 {
					if err := f.set(i, a.Value); err != nil {
						return Header{}, err
					}
				}
			}
			return f.header(DialectRules)
		case "Объект":
			return Header{}, fmt.Errorf("%w: ФайлОбмена has data (<Объект>) before ДанныеПоОбмену", ErrNoHeader)
		default:
			// What a КД2 file may carry before its header is not header:
			// the exchange rules (ПравилаОбмена, megabytes for a pair of
			// typical configurations) and the description of the types
			// they use (ИнформацияОТипахДанных, as large). Read past it
			// under the size limit alone.
			// Its namespace declarations are not kept (found by review:
			// ~40 bytes each for the whole skip, memory growing with
			// the file); they go out of scope with the section.
			p.limitSize()
			track := p.trackNS
			p.trackNS = false
			for len(p.stack) > 1 {
				if _, err := p.tok(); err != nil {
					return Header{}, err
				}
			}
			p.trackNS = track
			for len(p.ns) > 0 && p.ns[len(p.ns)-1].depth > len(p.stack) {
				p.ns = p.ns[:len(p.ns)-1]
			}
			p.limitHeader("%d bytes after " + strings.ReplaceAll(el.Name.Local, "%", "%%"))
		}
	}
}

// header validates the collected values.
func (f *fields) header(d Dialect) (Header, error) {
	h := Header{Dialect: d}
	var v [nFields]string
	for i := range v {
		v[i] = strings.TrimSpace(f.val[i])
	}
	for _, i := range []int{fPlan, fFrom, fTo, fMsgNo} {
		if !f.has[i] {
			return Header{}, fmt.Errorf("%w: %s is missing", ErrBadHeader, f.names[i])
		}
		if v[i] == "" {
			return Header{}, fmt.Errorf("%w: %s is empty", ErrBadHeader, f.names[i])
		}
	}
	for _, i := range []int{fPlan, fFrom, fTo} {
		if why := badCode(v[i], i != fPlan); why != "" {
			return Header{}, fmt.Errorf("%w: %s %s %s", ErrBadHeader, f.names[i], quote(v[i]), why)
		}
	}
	h.ExchangePlan, h.From, h.To = v[fPlan], v[fFrom], v[fTo]
	n, err := strconv.ParseUint(v[fMsgNo], 10, 64)
	if err != nil || n == 0 {
		return Header{}, fmt.Errorf("%w: %s %s is not a positive integer", ErrBadHeader, f.names[fMsgNo], quote(v[fMsgNo]))
	}
	h.MessageNo = n
	if v[fRecvNo] != "" { // absent or empty: nothing received yet
		n, err := strconv.ParseUint(v[fRecvNo], 10, 64)
		if err != nil {
			return Header{}, fmt.Errorf("%w: %s %s is not a non-negative integer", ErrBadHeader, f.names[fRecvNo], quote(v[fRecvNo]))
		}
		h.ReceivedNo = n
	}
	return h, nil
}

// CodeProblem says why s cannot be a node code, or "" if it can: what a
// header's From or To is refused for, so that routing.yaml cannot name a
// node no message could ever come from or go to.
func CodeProblem(s string) string { return badCode(s, true) }

// maxCodeParts bounds the '_'-separated parts of a node code: two codes
// and a prefix of a few parts must fit a message name (maxNameCodes).
const maxCodeParts = 6

// badCode says why a plan or node code cannot be used, or "" if it can.
// Codes end up in file names and subjects, so separators and control
// characters are refused; node codes also refuse what would make their
// messages' names ones ParseName refuses: "..", an empty '_'-separated
// part, more than maxCodeParts parts.
func badCode(s string, node bool) string {
	switch {
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	case strings.ContainsAny(s, `/\`):
		return "contains a path separator"
	case strings.IndexFunc(s, IsControl) >= 0:
		return "contains a control character or a text direction mark"
	case !node:
		return ""
	case strings.Contains(s, ".."):
		return `contains ".."`
	case strings.HasPrefix(s, ".") || strings.HasSuffix(s, "."):
		// Message_A_B..xml, Message_._B.xml: names ParseName refuses
		// (found by review).
		return `begins or ends with ".": the file names of its messages would not read back`
	case s != "" && (strings.HasPrefix(s, "_") || strings.HasSuffix(s, "_") || strings.Contains(s, "__")):
		return `begins or ends with "_" or holds "__": the file names of its messages (Message_<from>_<to>) would not read back`
	case strings.Count(s, "_") >= maxCodeParts:
		return fmt.Sprintf(`holds more than %d "_"-separated parts: the file names of its messages would not read back`, maxCodeParts)
	}
	return ""
}

func rawName(n xml.Name) string {
	if n.Space != "" {
		return n.Space + ":" + n.Local
	}
	return n.Local
}

func inNS(ns string) string {
	if ns == "" {
		return " (no namespace)"
	}
	return " in namespace " + quote(ns)
}

func isSpace(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// firstWord is the directive's keyword (DOCTYPE, ENTITY, ...) for the error message.
func firstWord(b []byte) string {
	if i := strings.IndexFunc(string(b[:min(len(b), 32)]), unicode.IsSpace); i >= 0 {
		b = b[:i]
	}
	return string(b[:min(len(b), 32)])
}
