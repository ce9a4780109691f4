package config

import "testing"

// TestNullCodeMergedRefused: a node code YAML reads as null that reaches nodes
// through a merge key (<<) is dropped by yaml.v3 as one written directly
// is; nullCodes looked only at the keys written in nodes itself (found by
// review): it reads nodes with its aliases and merges resolved.
func TestNullCodeMergedRefused(t *testing.T) {
	for _, doc := range []string{
		"nodes:\n  A: { deliver: { dir: ./a } }\n  <<: { NULL: { deliver: { dir: ./n } } }\n",
	} {
		c, err := Parse([]byte(doc))
		if err == nil {
			t.Errorf("%q: Parse accepts it; nodes = %d (%v)", doc, len(c.Nodes), keys(c.Nodes))
		}
	}
}

func keys(m map[string]*Node) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
