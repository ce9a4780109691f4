package config

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// maxResolvedNodes bounds the nodes one endpoint's aliases may expand to:
// nested aliases ("billion laughs") would otherwise grow without end.
const maxResolvedNodes = 1 << 16

// resolveAliases returns a copy of n that stands on its own: every alias is
// replaced by a copy of its anchor's node, and every merge key (<<) by the
// keys it merges, a key written in the mapping itself winning over a merged
// one and an earlier merged mapping over a later one, as YAML defines it.
// Adapter options are re-encoded alone (DecodeOptions), where an alias
// would lose the anchor it points to. Keys written twice stay twice, so the
// strict decode still refuses them.
func resolveAliases(n *yaml.Node) (*yaml.Node, error) {
	r := resolver{expanding: map[*yaml.Node]bool{}}
	return r.resolve(n)
}

type resolver struct {
	nodes     int
	expanding map[*yaml.Node]bool // anchors being expanded: one inside itself is refused
}

func (r *resolver) resolve(n *yaml.Node) (*yaml.Node, error) {
	if r.nodes++; r.nodes > maxResolvedNodes {
		return nil, fmt.Errorf("line %d: aliases expand to more than %d values", n.Line, maxResolvedNodes)
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return nil, fmt.Errorf("line %d: unknown anchor %q", n.Line, n.Value)
		}
		if r.expanding[n.Alias] {
			return nil, fmt.Errorf("line %d: anchor %q contains itself", n.Line, n.Value)
		}
		r.expanding[n.Alias] = true
		defer delete(r.expanding, n.Alias)
		return r.resolve(n.Alias)
	}
	c := *n
	c.Anchor = ""
	c.Content = nil
	if n.Kind == yaml.MappingNode {
		return r.mapping(n, &c)
	}
	for _, child := range n.Content {
		rc, err := r.resolve(child)
		if err != nil {
			return nil, err
		}
		c.Content = append(c.Content, rc)
	}
	return &c, nil
}

// mapping fills c with n's pairs resolved, the merged ones in place of the
// merge key.
func (r *resolver) mapping(n, c *yaml.Node) (*yaml.Node, error) {
	own := make([]*yaml.Node, len(n.Content))
	written := map[mapKey]bool{}
	merge := -1
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if isMergeKey(k) {
			if merge >= 0 {
				return nil, fmt.Errorf("line %d: a second merge key (<<) in one mapping; give it a list: <<: [*a, *b]", k.Line)
			}
			merge = i
			continue
		}
		rk, err := r.resolve(k)
		if err != nil {
			return nil, err
		}
		rv, err := r.resolve(n.Content[i+1])
		if err != nil {
			return nil, err
		}
		own[i], own[i+1] = rk, rv
		written[keyOf(rk)] = true
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if i != merge {
			c.Content = append(c.Content, own[i], own[i+1])
			continue
		}
		merged, err := r.merged(n.Content[i+1], written)
		if err != nil {
			return nil, err
		}
		c.Content = append(c.Content, merged...)
	}
	return c, nil
}

// merged resolves the value of a merge key, a mapping or a list of them,
// to the pairs it adds: those whose key is not already written.
func (r *resolver) merged(v *yaml.Node, written map[mapKey]bool) ([]*yaml.Node, error) {
	rv, err := r.resolve(v)
	if err != nil {
		return nil, err
	}
	sources := []*yaml.Node{rv}
	if rv.Kind == yaml.SequenceNode {
		sources = rv.Content
	}
	var out []*yaml.Node
	for _, src := range sources {
		if src.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: a merge key (<<) takes a mapping or a list of mappings", v.Line)
		}
		// Taken after the whole source: a key twice in one source stays
		// twice, to be refused like any other.
		var keys []mapKey
		for i := 0; i+1 < len(src.Content); i += 2 {
			k := keyOf(src.Content[i])
			if !written[k] {
				out = append(out, src.Content[i], src.Content[i+1])
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			written[k] = true
		}
	}
	return out, nil
}

// mapKey identifies a mapping key as yaml.v3 compares keys for duplicates:
// a scalar by its value; any other key (rare) only by itself.
type mapKey struct {
	value string
	other *yaml.Node
}

func keyOf(k *yaml.Node) mapKey {
	if k.Kind != yaml.ScalarNode {
		return mapKey{other: k}
	}
	return mapKey{value: k.Value}
}

// isMergeKey is yaml.v3's test for <<: an unquoted << or one tagged !!merge.
func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}
