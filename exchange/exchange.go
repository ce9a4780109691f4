// Package exchange understands 1C:Enterprise exchange message files
// (Message_<FROM>_<TO>.xml|.zip): it parses their names, reads their routing
// header and proves a file complete, streaming with bounded buffers so that a
// multi-gigabyte body is never held in memory.
package exchange

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them (or an I/O error of the caller's reader), so callers can route bad
// input with errors.Is while err.Error() stays a one-line reason.
var (
	// ErrBadName marks a file name that is not an exchange message name.
	ErrBadName = errors.New("exchange: bad message file name")
	// ErrNameMismatch marks a file name whose codes contradict the header (the header wins).
	ErrNameMismatch = errors.New("exchange: file name contradicts header")
	// ErrNotXML marks content that is not (well-formed) XML.
	ErrNotXML = errors.New("exchange: not well-formed XML")
	// ErrIncomplete marks a file that ends early: probably still being written, try later.
	ErrIncomplete = errors.New("exchange: message incomplete")
	// ErrNoHeader marks a message whose header element is missing.
	ErrNoHeader = errors.New("exchange: no message header")
	// ErrBadHeader marks a header with a missing, empty or invalid field.
	ErrBadHeader = errors.New("exchange: bad message header")
	// ErrUnknownDialect marks XML whose root is none of the known message formats.
	ErrUnknownDialect = errors.New("exchange: unknown message format")
	// ErrBadZip marks a zip that is complete but not one plain .xml message.
	ErrBadZip = errors.New("exchange: bad zip")
	// ErrEncrypted marks a password-protected zip read without a password:
	// its header cannot be read, so the caller routes it by its file name.
	ErrEncrypted = errors.New("exchange: encrypted zip")
	// ErrWrongPassword marks a password-protected zip whose password check
	// fails: the node's configured password is not the one the sender used.
	ErrWrongPassword = errors.New("exchange: wrong zip password")
	// ErrZipBomb marks a zip entry that decompresses to more than it declares or than the ratio limit allows.
	ErrZipBomb = errors.New("exchange: zip bomb")
	// ErrTooLarge marks input beyond one of the Limits.
	ErrTooLarge = errors.New("exchange: too large")
	// ErrDTD marks XML with a DOCTYPE or other <! directive, refused to rule out entity expansion.
	ErrDTD = errors.New("exchange: DTD not allowed")
)

var sentinels = []error{ErrBadName, ErrNameMismatch, ErrNotXML, ErrIncomplete, ErrNoHeader,
	ErrBadHeader, ErrUnknownDialect, ErrBadZip, ErrEncrypted, ErrWrongPassword, ErrZipBomb, ErrTooLarge, ErrDTD}

// IsVerdict reports whether err is this package's verdict on the bytes it
// read (it wraps one of the sentinels), as opposed to an I/O error of the
// caller's reader, after which nothing is known about the file.
func IsVerdict(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// Dialect names the header format a message was written in.
type Dialect string

// The three header dialects 1C writes.
const (
	// DialectPlatform is the platform's own format: root Message + Header in ns http://v8.1c.ru/messages.
	DialectPlatform Dialect = "v8msg"
	// DialectEnterpriseData is the SSL/XDTO format: <Message>, Header/Confirmation in http://www.1c.ru/SSL/Exchange/Message.
	DialectEnterpriseData Dialect = "enterprisedata"
	// DialectRules is rules-based exchange (КД2): <ФайлОбмена> with a <ДанныеПоОбмену .../> element.
	DialectRules Dialect = "rules"
	// DialectName marks a header taken from the file name of a
	// password-protected zip that no configured password reads (DESIGN §2):
	// From and To only; no plan, MessageNo or ReceivedNo.
	DialectName Dialect = "name"
)

// Header is the routing part of a message.
type Header struct {
	Dialect      Dialect
	ExchangePlan string
	From, To     string
	MessageNo    uint64 // >= 1
	ReceivedNo   uint64 // absent = 0
}

// Format is the container: plain XML or a zip holding one XML.
type Format string

// The two containers 1C writes.
const (
	// FormatXML is a plain XML message file.
	FormatXML Format = "xml"
	// FormatZip is a zip archive holding exactly one XML message.
	FormatZip Format = "zip"
)

// Name is a parsed file name.
type Name struct {
	Prefix, From, To string
	Format           Format
}

// namePrefix is case-sensitive: 1C always writes "Message_", and accepting
// other spellings would let stray files (message_a_b.xml) look like messages.
const namePrefix = "Message_"

// maxNameCodes bounds the '_'-separated parts of a name: each split is a
// reading to look at (readings), and 1C's codes are short.
const maxNameCodes = 16

// ParseName parses a message file base name: "Message_" then FROM_TO or
// PREFIX_FROM_TO (non-empty parts) then ".xml" or ".zip" (extension
// case-insensitive, the "Message_" prefix is not). Codes may hold '_'
// themselves, so a name of more parts is one of these too, split
// otherwise (readings); its plain reading takes the first part as the
// prefix and the second as From, as for three. Names with path separators,
// "..", control characters or invalid UTF-8 are refused so a name can never
// escape a folder. Errors wrap ErrBadName.
func ParseName(base string) (Name, error) {
	bad := func(why string) (Name, error) {
		return Name{}, fmt.Errorf("%w: %s: %s", ErrBadName, quote(base), why)
	}
	if !utf8.ValidString(base) {
		return bad("not valid UTF-8")
	}
	if strings.ContainsAny(base, `/\`) {
		return bad("contains a path separator")
	}
	if strings.Contains(base, "..") {
		return bad(`contains ".."`)
	}
	if strings.IndexFunc(base, IsControl) >= 0 {
		return bad("contains a control character or a text direction mark")
	}
	if !strings.HasPrefix(base, namePrefix) {
		return bad(`does not start with "Message_"`)
	}
	rest := base[len(namePrefix):]
	if len(rest) < 4 {
		return bad("no .xml or .zip extension")
	}
	var n Name
	switch ext := strings.ToLower(rest[len(rest)-4:]); ext {
	case ".xml":
		n.Format = FormatXML
	case ".zip":
		n.Format = FormatZip
	default:
		return bad("extension is not .xml or .zip")
	}
	parts := strings.Split(rest[:len(rest)-4], "_")
	for _, p := range parts {
		if p == "" {
			return bad("empty code")
		}
	}
	switch {
	case len(parts) < 2:
		return bad("want Message_FROM_TO or Message_PREFIX_FROM_TO")
	case len(parts) > maxNameCodes:
		return bad(fmt.Sprintf("more than %d '_'-separated codes", maxNameCodes))
	case len(parts) == 2:
		n.From, n.To = parts[0], parts[1]
	default:
		n.Prefix, n.From, n.To = parts[0], parts[1], strings.Join(parts[2:], "_")
	}
	return n, nil
}

// MayBeFrom says the file may be a message of node. Codes may contain
// '_', so a name of three or more parts reads several ways, each of which
// Check accepts: Message_A_B_C is prefix A from B to C, from A_B to C, or
// from A to B_C; Message_A_B_C_D also from A_B to C_D (two nodes whose
// codes hold '_'), and so on.
// isNode (nil: any code) keeps the readings whose two codes are both nodes,
// when any is. The file may be node's when a reading left is from node and
// none is to node: in a folder or mailbox node's 1C shares, a file
// addressed to node is for its 1C (a node never sends to itself). A pickup
// leaves what cannot be node's alone: another node's file in a shared
// folder or mailbox (1C's mail transport reads and writes one mailbox).
func (n Name) MayBeFrom(node string, isNode func(string) bool) bool {
	from := false
	for _, r := range n.readings(isNode) {
		if r.To == node {
			return false
		}
		from = from || r.From == node
	}
	return from
}

// NamesANode says some reading of the name has a node of isNode at either
// end. A name that has none is nobody's relay knows: a code 1C writes
// otherwise than routing.yaml, or a name read in the wrong encoding.
func (n Name) NamesANode(isNode func(string) bool) bool {
	return slices.ContainsFunc(n.readings(nil), func(r Name) bool { return isNode(r.From) || isNode(r.To) })
}

// Senders are the codes some reading of the name has as its sender.
func (n Name) Senders() []string {
	var out []string
	for _, r := range n.readings(nil) {
		out = append(out, r.From)
	}
	return out
}

// ReadBy is the name as the pickup of node takes it (MayBeFrom): the first
// reading from node left by isNode (node "", a sender not known: the first
// left), as a name of two codes, or n itself when that is its plain
// reading or none is from node. A password-protected zip is routed by it
// and opened with its channel's passwords: with nodes SHOP and 1_SHOP,
// SHOP's Message_SHOP_1_SHOP.zip goes to 1_SHOP (found by review: it went
// From "1" To "SHOP", a dead letter).
func (n Name) ReadBy(node string, isNode func(string) bool) Name {
	for _, r := range n.readings(isNode) {
		if r.From == node || node == "" {
			if r.From == n.From && r.To == n.To {
				return n // the plain reading: prefix kept
			}
			return Name{From: r.From, To: r.To, Format: n.Format}
		}
	}
	return n
}

// readings are the ways the codes split (MayBeFrom): the plain one first,
// as From and To of names without prefix or format. isNode (nil: any code)
// keeps those whose two codes are both nodes, when any is.
//
// The others follow: every split of the codes at a '_' (the last one
// first: Message_A_B_C is A_B's to C before A's to B_C), then every split
// of what follows a prefix of one part, of two parts, and so on (a plan's
// name may hold '_' too).
func (n Name) readings(isNode func(string) bool) []Name {
	all := []Name{{From: n.From, To: n.To}}
	if n.Prefix != "" {
		parts := strings.Split(n.codes(), "_")
		for p := 0; p < len(parts)-1; p++ {
			for i := len(parts) - 1; i > p; i-- {
				// Each split is another pair of codes; only the plain
				// reading comes twice.
				if r := (Name{From: strings.Join(parts[p:i], "_"), To: strings.Join(parts[i:], "_")}); r != all[0] {
					all = append(all, r)
				}
			}
		}
	}
	if isNode == nil {
		return all
	}
	var known []Name
	for _, r := range all {
		if isNode(r.From) && isNode(r.To) {
			known = append(known, r)
		}
	}
	if len(known) == 0 {
		return all
	}
	return known
}

// stem is the name without its extension, as shown in mismatch errors.
func (n Name) stem() string { return namePrefix + n.codes() }

// codes is the name between "Message_" and the extension.
func (n Name) codes() string {
	if n.Prefix != "" {
		return n.Prefix + "_" + n.From + "_" + n.To
	}
	return n.From + "_" + n.To
}

// String formats the name back; it round-trips ParseName (extension in lower case).
func (n Name) String() string {
	return n.stem() + "." + strings.ToLower(string(n.Format))
}

// FileName is the name 1C gives a message from one node to another: "Message_<from>_<to>.<f>".
func FileName(from, to string, f Format) string {
	return namePrefix + from + "_" + to + "." + string(f)
}

// ByName says the header was taken from a file name (DialectName): it has
// no plan and no numbers, so nothing downstream may show or compare them.
func (h Header) ByName() bool { return h.Dialect == DialectName }

// Sealed is the header of a message routed by this file name alone.
func (n Name) Sealed() Header { return Header{Dialect: DialectName, From: n.From, To: n.To} }

// Check compares the name with the header, which is the truth: From and To
// must equal the header's. Because codes may themselves contain '_', a
// name also matches a header whose From_To is its codes joined, whole or
// after a prefix (Message_A_B_C.xml fits From "A_B" To "C", and From "B"
// To "C"): any of its readings. Errors wrap ErrNameMismatch.
func (n Name) Check(h Header) error {
	if n.From == h.From && n.To == h.To {
		return nil
	}
	joined, codes := h.From+"_"+h.To, n.codes()
	if h.From != "" && h.To != "" && (joined == codes || strings.HasSuffix(codes, "_"+joined)) {
		return nil
	}
	hint := ""
	if lookalike(lastCodes(codes, joined), joined) {
		hint = " (they differ only in letters that look alike: a Latin letter where the other has a Cyrillic one, or the other way round)"
	}
	return fmt.Errorf("%w: file name says %s but header says From %s To %s%s",
		ErrNameMismatch, oneLine(n.stem()), quote(h.From), quote(h.To), hint)
}

// latinCyrillic maps the Latin letters that look like Cyrillic ones to
// them: Message_ЦО_OП.xml (a Latin O) against a header's "ОП" showed the
// same text twice and no hint (found walking through the quick start).
var latinCyrillic = strings.NewReplacer(
	"A", "А", "B", "В", "C", "С", "E", "Е", "H", "Н", "K", "К", "M", "М", "O", "О", "P", "Р", "T", "Т", "X", "Х", "Y", "У",
	"a", "а", "c", "с", "e", "е", "o", "о", "p", "р", "x", "х", "y", "у")

// lastCodes is as much of the end of codes as joined is long in runes (a
// name's codes after its prefix), codes whole when not longer: lookalike
// maps rune for rune, so only as many runes can read the same.
func lastCodes(codes, joined string) string {
	r, n := []rune(codes), utf8.RuneCountInString(joined)
	if len(r) <= n {
		return codes
	}
	return string(r[len(r)-n:])
}

// lookalike says a and b differ and read the same once Latin look-alikes
// are taken as Cyrillic.
func lookalike(a, b string) bool {
	return a != b && latinCyrillic.Replace(a) == latinCyrillic.Replace(b)
}

// Limits bound every input. Zero (or negative) fields mean the default.
type Limits struct {
	MaxHeaderBytes int64 // bytes of XML read before the header must be complete; default 1 MiB
	MaxSize        int64 // max file size and max uncompressed XML size; default 16 GiB
	MaxZipEntries  int   // central-directory entries accepted before refusing; default 16 (but exactly one must be an XML message)
	MaxZipRatio    int64 // max uncompressed/compressed ratio of the entry; default 1000
	// MaxTokenBytes bounds one XML token (a text run, a tag with its attributes,
	// a comment): both XML readers (encoding/xml for the header, gosax for
	// the body) hold a whole token in memory, so this is what keeps memory
	// flat on a body with one huge text node; default 64 MiB. A tag is
	// bounded tighter, by the smaller of this and 1 MiB: in the header its
	// attributes cost encoding/xml far more memory than their bytes.
	MaxTokenBytes int64
}

// Default limits.
const (
	defMaxHeaderBytes = 1 << 20
	defMaxSize        = 16 << 30
	defMaxZipEntries  = 16
	defMaxZipRatio    = 1000
	defMaxTokenBytes  = 64 << 20
)

// DefaultLimits returns the limits used for zero fields: generous for real
// 1C messages, tight enough that hostile input cannot exhaust memory or disk.
func DefaultLimits() Limits {
	return Limits{
		MaxHeaderBytes: defMaxHeaderBytes,
		MaxSize:        defMaxSize,
		MaxZipEntries:  defMaxZipEntries,
		MaxZipRatio:    defMaxZipRatio,
		MaxTokenBytes:  defMaxTokenBytes,
	}
}

// WithDefaults is l with its zero or negative fields set to the defaults.
func (l Limits) WithDefaults() Limits { return l.norm() }

// norm fills zero or negative fields with defaults.
func (l Limits) norm() Limits {
	d := DefaultLimits()
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if l.MaxSize <= 0 {
		l.MaxSize = d.MaxSize
	}
	if l.MaxZipEntries <= 0 {
		l.MaxZipEntries = d.MaxZipEntries
	}
	if l.MaxZipRatio <= 0 {
		l.MaxZipRatio = d.MaxZipRatio
	}
	if l.MaxTokenBytes <= 0 {
		l.MaxTokenBytes = d.MaxTokenBytes
	}
	return l
}

// quote renders an untrusted value for an error message: at most 64
// characters, quoted, so the message stays one short line.
func quote(s string) string {
	return strconv.Quote(cut(s, 64))
}

// cut shortens s to max characters and an ellipsis.
func cut(s string, max int) string {
	if utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max]) + "…"
	}
	return s
}

// IsControl reports whether r is a control character or one of Unicode's
// bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE and its kin).
// Codes and file names come from senders and are shown to operators: the
// first kind breaks a line or a table and can reach a terminal, the second
// shows a name reversed ("Message_A_B.xml" as something else) while its
// bytes say otherwise. No 1C code or file name holds either.
func IsControl(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}

// NoControls is s with every IsControl character a space, so that foreign
// text (a server's error, a sender's name) can be shown: a line break,
// tab or form feed in it would break a line or a table's columns, an
// escape sequence reach the terminal, a direction mark show the rest
// reversed.
func NoControls(s string) string {
	return strings.Map(func(r rune) rune {
		if IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// oneLine replaces control characters (newlines included) and cuts the
// text at 200 characters, so that an error message built from foreign text
// stays one short line: it becomes a dead letter's reason, a log line, a
// status line (a name may be a megabyte long).
func oneLine(s string) string { return NoControls(cut(s, 200)) }
