// Package dir picks exchange messages up from a local folder and delivers them
// into one: the shape of a 1C node that exchanges through a shared folder.
package dir

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// PickupConfig is `pickup: { dir: ... }`: a path, or a mapping with options.
type PickupConfig struct {
	// Path is the folder the node writes its outgoing messages to.
	Path string `yaml:"path"`
	// Settle is how long size and mtime must stay unchanged before a file is read (default 2s).
	Settle config.Duration `yaml:"settle"`
	// PollInterval is the rescan period behind fsnotify, the safety net for missed events (default 10s).
	PollInterval config.Duration `yaml:"poll_interval"`
	// IncompleteTimeout is how long a stable but incomplete file (truncated XML,
	// a zip without central directory) is waited for before it is dead-lettered (default 10m).
	IncompleteTimeout config.Duration `yaml:"incomplete_timeout"`
	// IsNode tells routing.yaml's node codes (set by relay, not read from
	// the file): see folder.Options.IsNode.
	IsNode func(code string) bool `yaml:"-"`
	// Limits bound the reading of a picked-up message (set by relay from
	// routing.yaml's relay section; zero: the exchange defaults).
	Limits exchange.Limits `yaml:"-"`
}

// DeliverConfig is `deliver: { dir: ... }`: a path, or a mapping with options.
type DeliverConfig struct {
	// Path is the folder the node reads its incoming messages from.
	Path string `yaml:"path"`
}

// Defaults for PickupConfig.
const (
	DefaultSettle            = 2 * time.Second
	DefaultPollInterval      = 10 * time.Second
	DefaultIncompleteTimeout = 10 * time.Minute
)

func (c *PickupConfig) setDefaults() {
	if c.Settle == 0 {
		c.Settle = config.Duration(DefaultSettle)
	}
	if c.PollInterval == 0 {
		c.PollInterval = config.Duration(DefaultPollInterval)
	}
	if c.IncompleteTimeout == 0 {
		c.IncompleteTimeout = config.Duration(DefaultIncompleteTimeout)
	}
}

// Validate reports every problem of the options.
func (c *PickupConfig) Validate() []error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path: missing"))
	}
	if c.PollInterval.Std() < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("poll_interval: %s is below 100ms", c.PollInterval.Std()))
	}
	if c.IncompleteTimeout.Std() < c.Settle.Std() {
		errs = append(errs, errors.New("incomplete_timeout: must not be shorter than settle"))
	}
	return errs
}

// CheckAfter reports an after: move: into the pickup folder itself, where
// every file moved would be taken again at once, in a loop (found by
// review: one file stored 15,000 times in 1.5 s).
func (c *PickupConfig) CheckAfter(after config.After) []error {
	if after.Action != config.AfterMove || c.Path == "" {
		return nil
	}
	to := after.Folder
	if !filepath.IsAbs(to) {
		to = filepath.Join(c.Path, to)
	}
	a, errA := filepath.Abs(to)
	b, errB := filepath.Abs(c.Path)
	if errA == nil && errB == nil && a == b {
		return []error{fmt.Errorf("after: move:%s is the pickup folder itself: every file moved would be taken again", after.Folder)}
	}
	return nil
}

// Validate reports every problem of the options.
func (c *DeliverConfig) Validate() []error {
	if c.Path == "" {
		return []error{errors.New("path: missing")}
	}
	return nil
}

// DecodePickup reads the value under `dir:` of a pickup.
func DecodePickup(n *yaml.Node) (PickupConfig, error) {
	var c PickupConfig
	if err := decode(n, &c.Path, &c); err != nil {
		return c, err
	}
	c.setDefaults()
	return c, nil
}

// DecodeDeliver reads the value under `dir:` of a deliver.
func DecodeDeliver(n *yaml.Node) (DeliverConfig, error) {
	var c DeliverConfig
	err := decode(n, &c.Path, &c)
	return c, err
}

// decode accepts the short form (a path scalar) or a strict mapping.
func decode(n *yaml.Node, path *string, into any) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*path = n.Value
		return nil
	case yaml.MappingNode:
		return config.DecodeOptions(n, into)
	}
	return fmt.Errorf("line %d: want a path or a mapping with path:", n.Line)
}
