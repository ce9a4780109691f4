package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DecodeError is what in routing.yaml does not decode: unknown keys, keys
// written twice, values of the wrong type or form, a second YAML document.
// Each problem names its path (relay.ack_alert_after: ...) as Problems does.
type DecodeError struct {
	// Problems are the messages, in the order of the file.
	Problems []string
}

// Error lists every problem, one a line.
func (e *DecodeError) Error() string {
	return "routing.yaml is not valid:\n  " + strings.Join(e.Problems, "\n  ")
}

// valueError is a problem with the value n that yaml.v3 collects and
// decodes past (a *yaml.TypeError, any other error stops decoding). Its
// position lets Parse name the value's path.
func valueError(n *yaml.Node, format string, a ...any) error {
	return &yaml.TypeError{Errors: []string{positioned(n, format, a...)}}
}

// positioned is one message of a *yaml.TypeError about the value n.
func positioned(n *yaml.Node, format string, a ...any) string {
	return fmt.Sprintf("line %d column %d: ", n.Line, n.Column) + fmt.Sprintf(format, a...)
}

// place is a key or a value of the document and its path.
type place struct {
	path  string
	key   string // the key's name, for a key
	value string // the scalar's text, for a scalar value
	tag   string // the value's tag (!!str, !!map, ...)
	isKey bool
}

// locator names the path of what yaml.v3 reports by its position: every
// value by line and column (as positioned writes it), every key and value
// by line (as yaml.v3's own messages say).
type locator struct {
	at     map[[2]int]string
	byLine map[int][]place
	// keyLine is the line of each key's path (its first writing).
	keyLine map[string]int
	// lines maps a line of the indexed text to the line of routing.yaml it
	// came from, for an adapter's options re-encoded by DecodeOptions; nil
	// when the text is routing.yaml itself.
	lines map[int]int
}

// line is the line of routing.yaml that line n of the indexed text holds.
func (l *locator) line(n int) int {
	if o, ok := l.lines[n]; ok {
		return o
	}
	return n
}

// mapLines records, for every node of enc (text re-encoded from orig), the
// line of orig it was written on. Both trees have the same shape, since one
// was marshalled from the other.
func mapLines(enc, orig *yaml.Node, into map[int]int) {
	if _, ok := into[enc.Line]; !ok && orig.Line > 0 {
		into[enc.Line] = orig.Line
	}
	if len(enc.Content) != len(orig.Content) {
		return
	}
	for i := range enc.Content {
		mapLines(enc.Content[i], orig.Content[i], into)
	}
}

// locate indexes the first document of data; nil when it does not parse.
func locate(data []byte) *locator {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil
	}
	return locateDoc(&doc)
}

// locateDoc indexes the parsed document doc.
func locateDoc(doc *yaml.Node) *locator {
	l := &locator{at: map[[2]int]string{}, byLine: map[int][]place{}, keyLine: map[string]int{}}
	l.walk(doc, "")
	return l
}

func (l *locator) walk(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			l.value(c, path)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			l.byLine[k.Line] = append(l.byLine[k.Line], place{path: p, key: k.Value, isKey: true})
			if _, ok := l.keyLine[p]; !ok {
				l.keyLine[p] = k.Line
			}
			l.value(v, p)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			l.value(c, fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

// value indexes the value n found at path and what it holds. An alias is
// not followed: what it names is indexed where its anchor is written.
func (l *locator) value(n *yaml.Node, path string) {
	if path != "" {
		l.at[[2]int{n.Line, n.Column}] = path
		pl := place{path: path, tag: n.ShortTag()}
		if n.Kind == yaml.ScalarNode {
			pl.value = n.Value
		}
		l.byLine[n.Line] = append(l.byLine[n.Line], pl)
	}
	l.walk(n, path)
}

var (
	// lineMsg is a message of a *yaml.TypeError: yaml.v3 gives the line,
	// positioned the line and column.
	lineMsg      = regexp.MustCompile(`^line (\d+)(?: column (\d+))?: (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	fieldTwice   = regexp.MustCompile(`^field (\S+) already set in type \S+$`)
	keyTwice     = regexp.MustCompile(`^mapping key (".*") already defined at line (\d+)$`)
	cannotDecode = regexp.MustCompile("^cannot unmarshal (\\S+)(?: `(.*)`)? into .+$")
)

// truncated ends a value yaml.v3 cut short in its message.
const truncated = "..."

// name rewrites one message of a *yaml.TypeError as path: problem (line N).
// A message it cannot place keeps its line.
func (l *locator) name(msg string) string {
	m := lineMsg.FindStringSubmatch(msg)
	if m == nil || l == nil {
		return msg
	}
	line, _ := strconv.Atoi(m[1])
	rest := m[3]
	at := func(path, problem string) string {
		return fmt.Sprintf("%s: %s (line %d)", path, problem, l.line(line))
	}
	if m[2] != "" {
		col, _ := strconv.Atoi(m[2])
		if p, ok := l.at[[2]int{line, col}]; ok {
			return at(p, rest)
		}
		return fmt.Sprintf("line %d: %s", l.line(line), rest)
	}
	if f := unknownField.FindStringSubmatch(rest); f != nil {
		if p := l.key(line, f[1]); p != "" {
			return at(p, "unknown key (field "+f[1]+" not found)")
		}
	}
	if f := fieldTwice.FindStringSubmatch(rest); f != nil {
		if p := l.key(line, f[1]); p != "" {
			return at(p, "written twice")
		}
	}
	if f := keyTwice.FindStringSubmatch(rest); f != nil {
		first, _ := strconv.Atoi(f[2])
		if k, err := strconv.Unquote(f[1]); err == nil {
			if p := l.key(line, k); p != "" {
				return fmt.Sprintf("%s: written twice (lines %d and %d)", p, l.line(first), l.line(line))
			}
		}
	}
	if f := cannotDecode.FindStringSubmatch(rest); f != nil {
		var found []string
		for _, pl := range l.byLine[line] {
			if pl.isKey {
				continue
			}
			text, cut := strings.CutSuffix(f[2], truncated)
			if pl.tag == f[1] && (pl.value == text || (cut && strings.HasPrefix(pl.value, text))) {
				found = append(found, pl.path)
			}
		}
		if len(found) == 1 {
			return at(found[0], rest)
		}
	}
	if p := l.common(line); p != "" {
		return at(p, rest)
	}
	return fmt.Sprintf("line %d: %s", l.line(line), rest)
}

// key is the path of the key named k on line, "" if there is no one such key.
func (l *locator) key(line int, k string) string {
	path := ""
	for _, pl := range l.byLine[line] {
		if pl.isKey && pl.key == k {
			if path != "" {
				return ""
			}
			path = pl.path
		}
	}
	return path
}

// common is the longest path every key and value on line lies under
// (relay for `relay: { id: x, listen: y }`), "" if none.
func (l *locator) common(line int) string {
	var prefix []string
	for i, pl := range l.byLine[line] {
		parts := strings.Split(pl.path, ".")
		if i == 0 {
			prefix = parts
			continue
		}
		n := 0
		for n < len(prefix) && n < len(parts) && prefix[n] == parts[n] {
			n++
		}
		prefix = prefix[:n]
	}
	return strings.Join(prefix, ".")
}
