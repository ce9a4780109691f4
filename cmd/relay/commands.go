package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/relay1c/relay/adapters"
	"github.com/relay1c/relay/adapters/dir"
	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/daemon"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/pipeline"
)

// defaultMemoryLimit is the soft memory limit of `relay run` (see runCmd).
const defaultMemoryLimit = 100 << 20

// load reads routing.yaml (-c); one that is not there says how to name it
// (found by a walk through the quick start: a command run in another
// folder said only "no such file").
func (g *globals) load() (*config.Config, error) {
	cfg, err := config.Load(g.config)
	if errors.Is(err, fs.ErrNotExist) {
		if g.configGiven != nil && g.configGiven() {
			return cfg, fmt.Errorf("%w (the path given with -c)", err)
		}
		return cfg, fmt.Errorf("%w (run relay in the folder of routing.yaml, or give its path with -c)", err)
	}
	return cfg, err
}

// loggerAndConfig is what the commands that use endpoints start with.
func (g *globals) loggerAndConfig() (*slog.Logger, *config.Config, error) {
	log, err := g.logger()
	if err != nil {
		return nil, nil, err
	}
	cfg, err := g.load()
	return log, cfg, err
}

// checkedConfig loads routing.yaml with every problem validate reports:
// what does not decode listed with what Problems finds in the rest, so
// that one typo does not hide the next (found by a walk through the quick
// start: relay run reported them a round at a time).
func (g *globals) checkedConfig() (*config.Config, []string, error) {
	cfg, err := g.load()
	var undecoded *config.DecodeError
	if err != nil && !errors.As(err, &undecoded) {
		return nil, nil, err
	}
	var problems []string
	if undecoded != nil {
		problems = append(problems, undecoded.Problems...)
	}
	return cfg, append(problems, cfg.Problems(adapters.New(cfg))...), nil
}

func runCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the relay (embedded NATS unless nats.url is set)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			cfg, problems, err := g.checkedConfig()
			if err != nil {
				return err
			}
			if len(problems) > 0 {
				for i, p := range problems {
					problems[i] = exchange.NoControls(p) // a code pasted with a direction mark
				}
				return fmt.Errorf("%s is not valid (%d problem(s)):\n  %s", g.config, len(problems), strings.Join(problems, "\n  "))
			}
			// Payloads stream through in 128-256 KiB pieces, so the live heap
			// is small but churns fast; without a limit the GC lets RSS grow to
			// twice the peak garbage (~230 MiB for a 1 GiB message). GOMEMLIMIT
			// overrides this soft limit.
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(defaultMemoryLimit)
			}
			r, err := daemon.Start(cmd.Context(), cfg, log, daemon.Options{})
			if err != nil {
				return err
			}
			log.Info("relay started", "config", g.config, "id", cfg.Relay.ID, "listen", cfg.Relay.Listen)
			return r.Run(cmd.Context())
		},
	}
}

func validateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check routing.yaml and print every problem with its path",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, problems, err := g.checkedConfig()
			if err != nil {
				return err
			}
			for _, p := range problems {
				fmt.Fprintln(g.stderr, exchange.NoControls(p)) // a code pasted with a direction mark
			}
			if len(problems) > 0 {
				return fmt.Errorf("%s: %d problem(s)", g.config, len(problems))
			}
			fmt.Fprintf(g.stdout, "%s: OK, %d node(s)\n", g.config, len(cfg.Nodes))
			return nil
		},
	}
}

// nameMismatch says how the message name n contradicts the file, as a
// pickup refuses it: other codes than the header's, or the extension of the
// other format (a zip named .xml reaches the node under a name it cannot
// read). Errors wrap exchange.ErrNameMismatch.
func nameMismatch(n exchange.Name, info exchange.Info) error {
	err := n.Check(info.Header)
	if n.Format == info.Format {
		return err
	}
	ext := fmt.Sprintf("file name says .%s but the file is %s", n.Format, info.Format)
	if err != nil {
		return fmt.Errorf("%w; %s", err, ext)
	}
	return fmt.Errorf("%w: %s", exchange.ErrNameMismatch, ext)
}

func inspectCmd(g *globals) *cobra.Command {
	var passwordEnv string
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show an exchange message's header, size and sha256 (proves it complete)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var passwords []string
			if passwordEnv != "" {
				pw := os.Getenv(passwordEnv)
				if pw == "" {
					return fmt.Errorf("--zip-password-env: %s is not set", passwordEnv)
				}
				passwords = []string{pw}
			}
			cfg, err := g.inspectConfig(cmd)
			if err != nil {
				return err
			}
			f, fi, err := openFile(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			// As a pickup reads it: a name whose codes hold '_' by
			// routing.yaml's node codes, a password-protected zip with its
			// channel's passwords, or, with none, routed by its file name
			// when that parses. The name is checked here, not by
			// InspectFile, so that a name contradicting the file still
			// shows what the file says.
			n, nameErr := exchange.ParseName(fi.Name())
			read := n
			if cfg != nil && nameErr == nil {
				read = n.ReadBy("", cfg.IsNode)
				if passwordEnv == "" {
					passwords = cfg.ZipPasswords(read.From, read.To)
				}
			}
			lim := exchange.DefaultLimits()
			if cfg != nil {
				lim = cfg.Limits()
			}
			info, err := exchange.InspectWith(f, fi.Size(), lim, passwords)
			if nameErr == nil && len(passwords) == 0 && errors.Is(err, exchange.ErrEncrypted) {
				info, err = exchange.InspectFile(f, fi.Size(), lim, n, read.Sealed(), nil)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			// A name that is no message name claims nothing; a message
			// name that the file contradicts is refused by every pickup.
			nameNote, mismatch := "ok", error(nil)
			if nameErr != nil {
				nameNote = nameErr.Error()
			} else if mismatch = nameMismatch(n, info); mismatch != nil {
				nameNote = mismatch.Error()
			}
			h := info.Header
			rows := [][2]string{{"file", args[0]}, {"name", nameNote}}
			if h.ByName() {
				rows = append(rows,
					[2]string{"format", string(info.Format) + " (password-protected; the zip itself is complete)"},
					[2]string{"dialect", string(h.Dialect) + ": routed by its file name where neither node has a zip password; --zip-password-env reads the header"},
					[2]string{"from", h.From}, [2]string{"to", h.To})
			} else {
				rows = append(rows, [2]string{"format", string(info.Format)})
				if info.Entry != "" {
					rows = append(rows, [2]string{"entry", info.Entry})
				}
				rows = append(rows, [2]string{"dialect", string(h.Dialect)}, [2]string{"plan", h.ExchangePlan},
					[2]string{"from", h.From}, [2]string{"to", h.To},
					[2]string{"message_no", strconv.FormatUint(h.MessageNo, 10)}, [2]string{"received_no", strconv.FormatUint(h.ReceivedNo, 10)})
			}
			rows = append(rows, [2]string{"size", strconv.FormatInt(info.Size, 10)}, [2]string{"sha256", info.SHA256})
			switch {
			case cfg == nil:
			case nameErr != nil:
				rows = append(rows, [2]string{"route", "not a Message_ name: no pickup takes it (relay send lets its header decide)"})
			case mismatch != nil:
				rows = append(rows, [2]string{"route", "the name contradicts the header: a pickup refuses it (a dead letter)"})
			default:
				rows = append(rows, [2]string{"route", routeNote(cfg, h)})
			}
			w := tabwriter.NewWriter(g.stdout, 0, 2, 2, ' ', 0)
			for _, r := range rows {
				// The file name and a zip entry's name are the sender's text.
				fmt.Fprintf(w, "%s\t%s\n", r[0], exchange.NoControls(r[1]))
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if mismatch != nil {
				return fmt.Errorf("%s: %w", args[0], mismatch)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&passwordEnv, "zip-password-env", "", "environment variable holding the archive password of a password-protected zip")
	return cmd
}

// routeNote says what relay, with cfg, makes of a message h: inspect said
// only "name ok" for a file whose sender routing.yaml does not have (a
// pickup passes it over in silence) or whose addressee it does not have
// (a dead letter) (found walking through the quick start).
func routeNote(cfg *config.Config, h exchange.Header) string {
	from := cfg.Nodes[h.From]
	switch {
	case from == nil:
		return fmt.Sprintf("sender %q is not a node of routing.yaml: no pickup takes it (relay send refuses it)", h.From)
	case from.Pickup == nil:
		return fmt.Sprintf("ok, to %s; sender %s has no pickup here: hand it in with relay send", h.To, h.From)
	}
	if reason := pipeline.RouteProblem(cfg, h); reason != "" {
		return reason + ": taken, it becomes a dead letter"
	}
	return fmt.Sprintf("ok: %s's pickup takes it, delivered to %s (%s)", h.From, h.To, cmp.Or(cfg.Nodes[h.To].Mode, config.ModeLatest))
}

// inspectConfig is the routing.yaml inspect reads a file by, nil when
// there is none: the default one may be missing or broken (inspect works
// without it, and says so on stderr when it is broken), one named by
// --config must load.
func (g *globals) inspectConfig(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := g.load()
	switch {
	case err == nil:
		return cfg, nil
	case cmd.Flags().Changed("config"):
		return nil, err
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	}
	// The first problem, not only the heading above the list (found by
	// review: "routing.yaml is not valid:" and no reason).
	lines := strings.Split(err.Error(), "\n")
	why := lines[0]
	if len(lines) > 1 {
		why += " " + strings.TrimSpace(lines[1])
		if len(lines) > 2 {
			why += fmt.Sprintf(" (and %d more)", len(lines)-2)
		}
	}
	fmt.Fprintf(g.stderr, "relay inspect: %s not used (%s); reading by the file name alone\n", g.config, exchange.NoControls(why))
	return nil, nil
}

// client builds an API client from the config's relay.listen and token.
func (g *globals) client() (*api.Client, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, err
	}
	token := ""
	if cfg.Relay.APITokenEnv != "" {
		token = config.APIToken(cfg.Relay.APITokenEnv)
	}
	c := api.NewClient(cfg.Relay.Listen, token)
	if env := cfg.Relay.APITokenEnv; env != "" {
		// The bare 401 named nothing to do (found walking through the
		// quick start).
		c.TokenHint = fmt.Sprintf("set %s, the variable relay.api_token_env names, to the token the relay runs with", env)
	}
	return c, nil
}

func statusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [NODE]",
		Short: "One row per channel: last picked-up, delivered and acknowledged No, pending, age, alerts, last error; with NODE only its channels and endpoints",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			all, err := c.Channels(cmd.Context())
			if err != nil {
				return err
			}
			node := ""
			if len(args) == 1 {
				node = args[0]
			}
			chans := all[:0:0]
			for _, ch := range all {
				if node == "" || ch.From == node || ch.To == node {
					chans = append(chans, ch)
				}
			}
			nodes, err := c.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			if node != "" && !slices.ContainsFunc(nodes, func(n api.NodeView) bool { return n.Code == node }) {
				return fmt.Errorf("no node %q in %s", node, g.config)
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(chans)
			}
			paint := colours(g.stdout)
			// The table is aligned first and painted a row at a time
			// after: colour codes inside its cells would count as width.
			var table bytes.Buffer
			w := tabwriter.NewWriter(&table, 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "PLAN\tCHANNEL\tPICKED\tDELIVERED\tACKED\tPENDING\tAGE\tALERT / LAST ERROR")
			rowColours := []string{""}
			// The overview cuts a channel's note; a node's view shows it
			// whole (found walking through the quick start: what a hold
			// waits for was cut off).
			noteMax := 120
			if node != "" {
				noteMax = math.MaxInt
			}
			for _, ch := range chans {
				note, colour := channelNote(ch)
				if note == "" && ch.HandedTo != "" {
					note = fmt.Sprintf("handed to relay %s up to No %d", ch.HandedTo, ch.HandedNo)
				}
				plan := ch.Plan
				if plan == "" {
					plan = "(by name)" // password-protected zips no password reads: no header, no numbers
				}
				fmt.Fprintf(w, "%s\t%s → %s\t%d\t%d\t%d\t%d\t%s\t%s\n", plan, ch.From, ch.To,
					ch.PickedNo, ch.DeliveredNo, ch.AckedNo, ch.Pending, age(ch.LastDeliveredAt, ch.LastPickupAt), oneLine(note, noteMax))
				rowColours = append(rowColours, colour)
			}
			if len(chans) == 0 {
				fmt.Fprintln(w, "(no channel has carried a message yet)")
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if _, err := io.WriteString(g.stdout, paintRows(table.String(), rowColours, paint)); err != nil {
				return err
			}
			for _, n := range nodes {
				if node != "" && n.Code != node {
					continue
				}
				if !n.Served {
					// Its endpoints are the other relay's: no error here
					// is no proof they work (found by review: "ok").
					if node != "" {
						fmt.Fprintf(g.stdout, "node %s: served by relay %s, whose status shows its endpoints\n", n.Code, n.Relay)
					}
					continue
				}
				for _, e := range []struct{ role, kind, err string }{{"pickup", n.Pickup, n.PickupError}, {"deliver", n.Deliver, n.DeliverError}} {
					switch {
					case e.err != "":
						// Whole for one node; cut in the overview, saying
						// where the rest is (its end, "(and 3 more
						// files)", was lost; found walking through the
						// quick start).
						msg := exchange.NoControls(e.err)
						if node == "" {
							if cut := oneLine(e.err, 160); cut != msg {
								msg = cut + " (relay status " + n.Code + ": the whole error)"
							}
						}
						fmt.Fprintf(g.stdout, "node %s %s: %s\n", n.Code, e.role, paint(red, msg))
					case node != "" && e.kind != "":
						fmt.Fprintf(g.stdout, "node %s %s (%s): %s\n", n.Code, e.role, e.kind, paint(green, "ok"))
					}
				}
			}
			// Dead letters have no row when they never reached a channel
			// (a file refused at pickup): they would go unseen here
			// (found by a walk through the quick start). A list that
			// cannot be read is not the channels' trouble: left out.
			if letters, err := c.DeadLetters(cmd.Context()); err == nil {
				n := 0
				var newest pipeline.DeadLetter
				for _, l := range letters {
					if node == "" || l.Node == node {
						n, newest = n+1, l
					}
				}
				if n > 0 {
					fmt.Fprintf(g.stdout, "%s, the newest: %s (relay dead list)\n", paint(red, fmt.Sprintf("%d dead letter(s)", n)), oneLine(newest.FileName+": "+newest.Reason, 120))
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// paintRows paints the lines of an aligned table, line i in colours[i]
// ("" or past the end: plain).
func paintRows(table string, colours []string, paint func(colour, s string) string) string {
	var b strings.Builder
	for i, line := range strings.SplitAfter(table, "\n") {
		if i < len(colours) && colours[i] != "" {
			line = paint(colours[i], strings.TrimSuffix(line, "\n")) + "\n"
		}
		b.WriteString(line)
	}
	return b.String()
}

// Terminal colours for `relay status`.
const (
	red    = "\x1b[31m"
	yellow = "\x1b[33m"
	green  = "\x1b[32m"
)

// colours returns a painter that colours text when out is a terminal and
// NO_COLOR is not set, and leaves it plain otherwise.
// channelNote is what a status row says of a channel and its colour: its
// alerts (red), a failure (red), else waiting (yellow: queued, or a
// sequential node's next number waiting for it to read the one in its
// folder, the node's pace) or flowing (green).
func channelNote(ch api.ChannelView) (note, colour string) {
	switch {
	case len(ch.Alerts) > 0:
		return strings.Join(ch.Alerts, "; "), red
	case ch.LastError != "" && !ch.WaitsForRead():
		return ch.LastError, red
	case ch.Pending > 0:
		return ch.LastError, yellow
	}
	return ch.LastError, green
}

func colours(out io.Writer) func(colour, s string) string {
	plain := func(_, s string) string { return s }
	f, ok := out.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return plain
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return plain
	}
	return func(colour, s string) string { return colour + s + "\x1b[0m" }
}

// age is the time since the channel last moved.
func age(ts ...time.Time) string {
	var last time.Time
	for _, t := range ts {
		if t.After(last) {
			last = t
		}
	}
	if last.IsZero() {
		return "-"
	}
	return time.Since(last).Round(time.Second).String()
}

// oneLine is s as one table cell of at most max characters.
func oneLine(s string, max int) string {
	s = exchange.NoControls(s)
	if utf8.RuneCountInString(s) > max {
		return string([]rune(s)[:max-1]) + "…"
	}
	return s
}

func deadCmd(g *globals) *cobra.Command {
	// NoArgs: a mistyped subcommand (relay dead retyr 12) is an error, not
	// the help with exit 0 (found by review).
	dead := &cobra.Command{Use: "dead", Short: "List, show, retry or drop dead letters", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters with their reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ls, err := c.DeadLetters(cmd.Context())
			if err != nil {
				return err
			}
			if len(ls) >= pipeline.MaxDeadList {
				defer fmt.Fprintf(g.stderr, "at most the newest %d dead letters are listed: drop the ones dealt with (relay dead drop ID...)\n", pipeline.MaxDeadList)
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ls)
			}
			w := tabwriter.NewWriter(g.stdout, 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tTIME\tNODE\tSTAGE\tFILE\tREASON")
			for _, l := range ls {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", l.Seq, l.Time.Local().Format(time.DateTime), letterNode(l), l.Stage, oneLine(l.FileName, 80), oneLine(l.Reason, 120))
			}
			return w.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	retry := &cobra.Command{
		Use:   "retry ID...",
		Short: "Queue dead letters again (after fixing routing.yaml or the destination)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSeq(g, cmd, args, func(c *api.Client, seq uint64) error {
				id, err := c.RetryDead(cmd.Context(), seq)
				if err == nil {
					fmt.Fprintf(g.stdout, "%d: queued as %s\n", seq, pipeline.ReadableID(id))
				}
				return err
			})
		},
	}
	drop := &cobra.Command{
		Use:   "drop ID...",
		Short: "Delete dead letters and their payloads",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSeq(g, cmd, args, func(c *api.Client, seq uint64) error {
				err := c.DropDead(cmd.Context(), seq)
				if err == nil {
					fmt.Fprintf(g.stdout, "%d: dropped\n", seq)
				}
				return err
			})
		},
	}
	show := &cobra.Command{
		Use:   "show ID...",
		Short: "Everything about dead letters: reason, source, time, the message header, the stored payload",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachSeq(g, cmd, args, func(c *api.Client, seq uint64) error {
				l, err := c.DeadLetter(cmd.Context(), seq)
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(g.stdout, 0, 2, 2, ' ', 0)
				fmt.Fprintf(w, "id\t%d\ntime\t%s\nnode\t%s\nstage\t%s\nreason\t%s\nsource\t%s\nfile\t%s\n",
					l.Seq, l.Time.Local().Format(time.DateTime), letterNode(l), l.Stage, exchange.NoControls(l.Reason), exchange.NoControls(l.Source), exchange.NoControls(l.FileName))
				if h := l.Header; h != nil {
					fmt.Fprintf(w, "header\t%s, %s → %s, No %d, received No %d (%s)\n", h.ExchangePlan, h.From, h.To, h.MessageNo, h.ReceivedNo, h.Dialect)
				}
				if l.MsgID != "" {
					fmt.Fprintf(w, "message id\t%s\n", pipeline.ReadableID(l.MsgID))
				}
				if l.Object != "" {
					fmt.Fprintf(w, "payload\t%d bytes, sha256 %s (kept)\n", l.Size, l.SHA256)
					fmt.Fprintf(w, "retry\t%s\n", retryHint(l))
				} else {
					fmt.Fprintf(w, "payload\tnot kept\n")
				}
				fmt.Fprintln(w)
				return w.Flush()
			})
		},
	}
	dead.AddCommand(list, show, retry, drop)
	return dead
}

// skipCmd is the operator's way past a gap of a sequential channel that
// will not fill: without it, the channel waits for good.
func skipCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "skip PLAN FROM TO NO",
		Short: "Let a sequential channel go on without the numbers up to NO it waits for (a gap that will never fill)",
		Long: "A sequential channel holds its messages while a number before them is missing. When that number will never come " +
			"(its file was written over in the sender's outbox before relay took it), `relay skip` lets the channel go on without " +
			"the numbers up to NO; `relay status` shows the command to give. The held message is delivered within 30 s. " +
			"What the skipped messages carried has to be sent again from the sender's 1C.",
		Args: cobra.ExactArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			no, err := strconv.ParseUint(args[3], 10, 64)
			if err != nil || no == 0 {
				return fmt.Errorf("NO %q: want a message number (a positive number)", args[3])
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ch, err := c.Skip(cmd.Context(), args[0], args[1], args[2], no)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: %s → %s goes on past No %d (delivered up to No %d); what waits behind it goes within 30 s, unless another number before it is missing too (relay status shows it)\n",
				ch.Plan, ch.From, ch.To, no, ch.DeliveredNo)
			return nil
		},
	}
}

func eachSeq(g *globals, cmd *cobra.Command, args []string, fn func(*api.Client, uint64) error) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	failed := 0
	for _, a := range args {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil || seq == 0 {
			// Said as the operator would (found by a walk through the
			// quick start: strconv's words came out).
			err = errors.New("not a dead letter's id (the number in the first column of relay dead list)")
		} else {
			err = fn(c, seq)
		}
		if err != nil {
			fmt.Fprintf(g.stderr, "%s: %v\n", a, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d failed", failed, len(args))
	}
	return nil
}

func checkCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "check [NODE...]",
		Short: "Connect to every endpoint, list, write and delete a probe file; one line per node",
		RunE: func(cmd *cobra.Command, args []string) error {
			log, cfg, err := g.loggerAndConfig()
			if err != nil {
				return err
			}
			nodes := args
			if len(nodes) == 0 {
				// This relay's own nodes: another relay's endpoints may be
				// out of reach from here, and a dir check would make their
				// folders on this machine (found by review).
				for _, n := range cfg.NodeNames() {
					if cfg.Serves(cfg.Nodes[n]) {
						nodes = append(nodes, n)
					}
				}
			}
			for _, n := range nodes {
				if cfg.Nodes[n] == nil {
					return fmt.Errorf("no node %q in %s", n, g.config)
				}
			}
			reg := adapters.New(cfg)
			lines := make([]string, len(nodes))
			failed := make([]bool, len(nodes))
			var wg sync.WaitGroup
			// A few nodes at once: a relay of hundreds of nodes on one FTP
			// server would open hundreds of connections (its per-address
			// limit refuses them: false failures).
			slots := make(chan struct{}, checkParallel)
			for i, name := range nodes {
				wg.Go(func() {
					slots <- struct{}{}
					defer func() { <-slots }()
					n := cfg.Nodes[name]
					var probs []string
					for _, ep := range []struct {
						role string
						e    *config.Endpoint
					}{{"pickup", n.Pickup}, {"deliver", n.Deliver}} {
						if ep.e == nil {
							continue
						}
						ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
						err := reg.Check(ctx, name, ep.role, ep.e, log)
						cancel()
						if err != nil {
							probs = append(probs, fmt.Sprintf("%s %s: %v", ep.role, ep.e.Kind, err))
						}
					}
					if len(probs) == 0 {
						lines[i] = name + "\tOK"
						return
					}
					failed[i] = true
					lines[i] = name + "\tFAIL\t" + strings.Join(probs, "; ")
				})
			}
			wg.Wait()
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			bad := 0
			for i, l := range lines {
				fmt.Fprintln(tw, l)
				if failed[i] {
					bad++
				}
			}
			tw.Flush()
			if bad > 0 {
				return fmt.Errorf("%d of %d node(s) failed the check", bad, len(nodes))
			}
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "time limit per endpoint")
	return c
}

func sendCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "send FILE...",
		Short: "Hand message files to the running relay (as if its sender had left them), through its API",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			failed := 0
			for _, path := range args {
				err := func() error {
					f, st, err := openFile(cmd.Context(), path)
					if err != nil {
						return err
					}
					defer f.Close()
					// A file not named as 1C names messages (a copy under
					// another name) goes without its name: the header
					// decides it (found walking through the quick start:
					// the relay refused the name).
					name := filepath.Base(path)
					if !folder.IsMessageName(name) {
						name = ""
					}
					rep, err := c.Push(cmd.Context(), name, f, st.Size())
					if err != nil {
						return err
					}
					id := pipeline.ReadableID(rep.ID)
					switch rep.Outcome {
					case pipeline.OutcomeStoredBefore:
						fmt.Fprintf(g.stdout, "%s: stored before as %s: %s\n", path, id, rep.Detail)
					case pipeline.OutcomeDropped:
						fmt.Fprintf(g.stdout, "%s: not queued (%s): %s\n", path, id, rep.Detail)
					case pipeline.OutcomeDead:
						return fmt.Errorf("dead letter (%s): %s", id, rep.Detail)
					default:
						fmt.Fprintf(g.stdout, "%s: stored as %s\n", path, id)
					}
					return nil
				}()
				if err != nil {
					fmt.Fprintf(g.stderr, "%s: %v\n", path, err)
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d file(s) not sent", failed, len(args))
			}
			return nil
		},
	}
}

// letterNode names a dead letter's node with its part: a file refused at
// pickup was in the outbox of its node (the sender), any other letter's
// node is the addressee; one column showed both unmarked.
func letterNode(l pipeline.DeadLetter) string {
	if l.Stage == pipeline.StagePickup {
		return "from " + l.Node
	}
	return "to " + l.Node
}

// retryHint says what `relay dead retry` can do for a letter: a file
// refused at pickup is checked again, which heals a routing.yaml that
// lacked its node, never a broken file (dead show offered every letter
// the same retry).
func retryHint(l pipeline.DeadLetter) string {
	switch {
	case l.Stage == pipeline.StagePickup && strings.Contains(l.Reason, exchange.ErrNameMismatch.Error()):
		// Kept under the name it came by: a retry reads the same
		// contradiction (found walking through the quick start: the hint
		// sent the operator to routing.yaml).
		return fmt.Sprintf("its name contradicts its header, and `relay dead retry %d` would read it under the same name: "+
			"its sender must write it anew under the name its header gives, then `relay dead drop %d`", l.Seq, l.Seq)
	case l.Stage == pipeline.StagePickup:
		return fmt.Sprintf("`relay dead retry %d` checks the file again and queues it if it passes now (after routing.yaml was fixed); "+
			"a retry cannot mend a broken file: its sender must write it anew, then `relay dead drop %d`", l.Seq, l.Seq)
	case l.Stage == pipeline.StageRoute:
		return fmt.Sprintf("`relay dead retry %d` queues it again once routing.yaml can route it", l.Seq)
	}
	return fmt.Sprintf("`relay dead retry %d` sends it again (once the destination takes it)", l.Seq)
}

// checkParallel is how many nodes relay check looks at at once.
const checkParallel = 8

func traceCmd(g *globals) *cobra.Command {
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "trace MESSAGE-ID|FILE-NAME",
		Short: "Every step of a message: picked up (where, size, sha256), delivery attempts and errors, delivered, dropped or dead, acknowledged by which message",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: want a positive number", limit)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			q := args[0]
			if strings.ContainsRune(q, '/') && folder.IsMessageName(filepath.Base(q)) {
				// A path to the file (exchange/ОП/out/Message_ОП_ЦО.xml):
				// events know it by its name (found walking through the
				// quick start: nothing was found).
				q = filepath.Base(q)
			}
			evs, err := c.TraceLimit(cmd.Context(), q, limit)
			if err != nil {
				return err
			}
			if shown := cmp.Or(limit, pipeline.DefaultTraceLimit); len(evs) >= shown {
				defer fmt.Fprintf(g.stderr, "at most the newest %d steps are shown (--limit for more)\n", shown)
			}
			if asJSON {
				// [] for an unknown id still parses; the exit code says
				// "not found" as the text form's does.
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(evs); err != nil {
					return err
				}
			}
			if len(evs) == 0 {
				return fmt.Errorf("no recorded step of %q (events are kept 7 days)", args[0])
			}
			if asJSON {
				return nil
			}
			w := tabwriter.NewWriter(g.stdout, 0, 2, 2, ' ', 0)
			for _, group := range byMessage(evs) {
				// No tab: a line without one ends the column block, so
				// the steps are not padded to the id's width (~150).
				if e := group[0]; e.MsgID != "" {
					fmt.Fprintf(w, "\n%s  %s No %d\n", pipeline.ReadableID(e.MsgID), e.Channel, e.No)
				} else {
					fmt.Fprintf(w, "\n(no message id: files refused at pickup, skips)\n")
				}
				for _, e := range group {
					detail := e.Detail
					if e.Step == "picked_up" {
						detail = fmt.Sprintf("%s; from %s, %d bytes, sha256 %s", e.Detail, e.Source, e.Size, e.SHA256)
					}
					if e.MsgID == "" && e.File != "" {
						detail = e.File + ": " + detail
					}
					fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Step, e.Node, oneLine(detail, 160))
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 0, fmt.Sprintf("at most this many steps, the newest (default %d)", pipeline.DefaultTraceLimit))
	return cmd
}

// byMessage groups a trace's steps by message, in the order each message
// first appears, each message's steps in their order: a trace of a file
// name holds several messages whose steps interleave in time, and one
// header per run of steps split a message into blocks (found walking
// through the quick start: a message's acknowledgement stood under the
// next message's header). Steps of no message (a file refused at pickup,
// a skip) form one group.
func byMessage(evs []pipeline.Event) [][]pipeline.Event {
	var out [][]pipeline.Event
	at := map[string]int{}
	for _, e := range evs {
		i, ok := at[e.MsgID]
		if !ok {
			i = len(out)
			at[e.MsgID] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], e)
	}
	return out
}

// openFile opens a message file for inspect and send: a regular file only
// (dir.OpenRegular, following a link). A named pipe would block its open
// until a writer came (Ctrl-C does not end that), and a device or a /proc
// file says size 0 and reads on.
func openFile(ctx context.Context, path string) (*os.File, os.FileInfo, error) {
	return dir.OpenRegular(ctx, path, true)
}
