package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/ctagent/ctagent/pkg/api"
	"github.com/ctagent/ctagent/pkg/eventjson"
)

// runList prints the entries a running daemon serves, as they arrive.
func runList(ctx context.Context, cfg *config, stdout io.Writer) error {
	c, err := api.NewClient(cfg.client.server, nil)
	if err != nil {
		return &usageError{err}
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

// runTop prints the namespaces table once (--once), or every interval
// until ctx ends.
func runTop(ctx context.Context, cfg *config, stdout io.Writer) error {
	c, err := api.NewClient(cfg.client.server, nil)
	if err != nil {
		return &usageError{err}
	}
	for {
		r, err := c.Namespaces(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !cfg.client.once {
			fmt.Fprint(stdout, "\033[H\033[2J") // home, clear screen
		}
		if err := api.WriteTop(stdout, r, cfg.client.sort); err != nil || cfg.client.once {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.client.interval):
		}
	}
}
