// Command relay moves 1C:Enterprise exchange messages between offices.
// See README.md; the subcommands only parse flags and call the packages.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second SIGINT or SIGTERM during a slow stop ends relay at once, as
	// a kill would: nothing is lost by that (the crash tests SIGKILL it).
	go func() { <-ctx.Done(); stop() }()
	if err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		stop()
		os.Exit(1)
	}
}

// globals are the flags every subcommand takes.
// defaultConfig is -c's default: routing.yaml in the working folder.
const defaultConfig = "routing.yaml"

type globals struct {
	config string
	// configGiven says -c was given (also as its default's value).
	configGiven func() bool
	logFormat   string
	logLevel    string
	stdout      io.Writer
	stderr      io.Writer
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "relay",
		Short:         "Move 1C:Enterprise exchange messages between offices over NATS JetStream",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVarP(&g.config, "config", "c", defaultConfig, "routing.yaml to use")
	configFlag := root.PersistentFlags().Lookup("config")
	g.configGiven = func() bool { return configFlag.Changed }
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(runCmd(g), validateCmd(g), inspectCmd(g), statusCmd(g), deadCmd(g), skipCmd(g), checkCmd(g), sendCmd(g), traceCmd(g))
	// cobra's completion command, made now so that a mistyped shell
	// (relay completion bsah) is an error rather than its help on stdout
	// and exit 0, installed as a completion script (found by review).
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Args = cobra.NoArgs // as dead's: runnable, or cobra ignores Args
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	}
	return root
}

func (g *globals) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", g.logFormat)
}
