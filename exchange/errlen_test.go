package exchange

import (
	"strings"
	"testing"
)

// TestErrorReasonBounded: every error of this package is meant to be
// a short one-line reason (quote() caps foreign text at 64 characters), as
// it becomes a dead letter's reason, a channel's last error and a log line.
// Element names in the XML errors were not capped: a tag may be 1 MiB, so a
// mismatched end tag or a truncated long-named element gave a reason of
// up to 2 MiB, more than the 1 MiB NATS payload a dead letter must fit in.
func TestErrorReasonBounded(t *testing.T) {
	long := "n" + strings.Repeat("x", 600<<10)
	for name, doc := range map[string]string{
		"mismatched end tag": v8msg(v8fields, "<"+long+"></"+long+"y>"),
		"truncated":          strings.TrimSuffix(v8msg(v8fields, "<"+long+">"), "</v8msg:Body>\n</v8msg:Message>\n"),
		"unknown root":       "<" + long + "/>",
		"element after root": v8msg(v8fields, "") + "<" + long + "/>",
	} {
		_, err := CheckXML(strings.NewReader(doc), Limits{})
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if n := len(err.Error()); n > 4096 {
			t.Errorf("%s: error reason is %d bytes (%.60q...)", name, n, err.Error())
		}
	}
}
