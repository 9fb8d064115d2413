package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	promconfig "github.com/prometheus/common/config"
	"golang.org/x/term"

	"github.com/ctagent/ctagent/internal/topui"
	"github.com/ctagent/ctagent/pkg/api"
	"github.com/ctagent/ctagent/pkg/eventjson"
)

// loadHTTPConfig reads and checks an HTTP client configuration file of the
// Prometheus format, as promtool's --http.config.file does (paths in it are
// relative to the file).
func loadHTTPConfig(file string) (*promconfig.HTTPClientConfig, error) {
	hc, _, err := promconfig.LoadHTTPConfigFile(file)
	if err != nil {
		return nil, err
	}
	if err := hc.Validate(); err != nil {
		return nil, err
	}
	return hc, nil
}

// newClient is the API client of the list, top and events commands: with
// the TLS and auth of --http.config.file when given; credentials in the
// --server URL (user:pass@) are sent as basic auth by net/http either way.
func newClient(c clientConfig) (*api.Client, error) {
	var hc *http.Client
	if c.httpFile != "" {
		cfg, err := loadHTTPConfig(c.httpFile)
		if err != nil {
			return nil, &usageError{fmt.Errorf("--http.config.file: %w", err)}
		}
		// No overall timeout: events and entries are streams.
		if hc, err = promconfig.NewClientFromConfig(*cfg, "ctagent"); err != nil {
			return nil, &usageError{fmt.Errorf("--http.config.file: %w", err)}
		}
	}
	c2, err := api.NewClient(c.server, hc)
	if err != nil {
		return nil, &usageError{err}
	}
	return c2, nil
}

// runList prints the entries a running daemon serves, as they arrive.
func runList(ctx context.Context, cfg *config, stdout io.Writer) error {
	c, err := newClient(cfg.client)
	if err != nil {
		return err
	}
	// Memory stays bounded: lines go out in blocks as they arrive.
	out := bufio.NewWriterSize(stdout, 32<<10)
	err = c.Entries(ctx, cfg.client.filter, func(line []byte) error {
		if cfg.client.output == "json" {
			out.Write(line)
			return out.WriteByte('\n')
		}
		var e eventjson.Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("%s: %w", api.EntriesPath, err)
		}
		out.WriteString(api.FormatEntry(e))
		return out.WriteByte('\n')
	})
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if ctx.Err() != nil {
		return nil // interrupted
	}
	return err
}

// runTop shows the interactive view (internal/topui) when stdout is a
// terminal and --once is not given; else it prints the namespaces table
// (or, with --netns, what fills one namespace's table) once (--once), or
// every interval until ctx ends.
func runTop(ctx context.Context, cfg *config, stdout io.Writer) error {
	c, err := newClient(cfg.client)
	if err != nil {
		return err
	}
	cc := cfg.client
	if f, ok := stdout.(*os.File); ok && !cc.once && term.IsTerminal(int(f.Fd())) {
		return topui.Run(ctx, topui.Options{Client: c, Server: cc.server, Interval: cc.interval, Sort: cc.sort, Limit: cc.limit, NetNS: cc.netns})
	}
	for {
		var write func() error
		if cc.netns != "" {
			r, err := c.NamespaceTop(ctx, cc.netns, cc.limit)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			write = func() error { return api.WriteNamespaceTop(stdout, r) }
		} else {
			r, err := c.Namespaces(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			write = func() error { return api.WriteTop(stdout, r, cc.sort) }
		}
		if !cc.once {
			fmt.Fprint(stdout, "\033[H\033[2J") // home, clear screen
		}
		if err := write(); err != nil || cc.once {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cc.interval):
		}
	}
}
