package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

// DefaultServer is the address of the local daemon, on its default port.
const DefaultServer = "http://127.0.0.1:10371"

// Client talks to a daemon's API.
type Client struct {
	base *url.URL
	http *http.Client
}

// NewClient returns a client of the daemon at server (an http or https
// URL; a bare host:port means http). hc nil is http.DefaultClient.
func NewClient(server string, hc *http.Client) (*Client, error) {
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--server: want http://host:port or https://host:port, got %q", server)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: u, http: hc}, nil
}

// get requests path with query q; a non-200 answer is an error with the
// API's message.
func (c *Client) get(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	u := c.base.JoinPath(path)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no ctagent daemon answers at %s (is it running? --server sets its address): %w", c.base.Redacted(), err)
		}
		return nil, fmt.Errorf("ctagent daemon at %s: %w", c.base.Redacted(), err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("%s: %s: %s", u.Redacted(), resp.Status, msg)
	}
	return resp, nil
}

// Namespaces fetches /api/v1/namespaces.
func (c *Client) Namespaces(ctx context.Context) (*NamespacesResponse, error) {
	resp, err := c.get(ctx, NamespacesPath, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out NamespacesResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: %w", NamespacesPath, err)
	}
	return &out, nil
}

// Entries streams /api/v1/entries: fn gets each line (without the
// newline, valid until fn returns) as it arrives. An error of fn ends the
// stream and is returned.
func (c *Client) Entries(ctx context.Context, f Filter, fn func(line []byte) error) error {
	return c.lines(ctx, EntriesPath, f.Values(), fn)
}

// Events streams /api/v1/events until ctx ends or the daemon goes away:
// fn gets each line as Entries does. The last line is {"dropped": N} when
// the daemon dropped events this client was too slow for.
func (c *Client) Events(ctx context.Context, f EventFilter, fn func(line []byte) error) error {
	return c.lines(ctx, EventsPath, f.Values(), fn)
}

// lines streams the JSON lines of path.
func (c *Client) lines(ctx context.Context, path string, q url.Values, fn func(line []byte) error) error {
	resp, err := c.get(ctx, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// NamespaceTop fetches /api/v1/namespaces/{netns}/top: what fills the
// table of netns (an inode number or a name), the limit most frequent
// destinations (0: the daemon's default).
func (c *Client) NamespaceTop(ctx context.Context, netns string, limit int) (*NamespaceTopResponse, error) {
	var q url.Values
	if limit > 0 {
		q = url.Values{"limit": {strconv.Itoa(limit)}}
	}
	resp, err := c.get(ctx, strings.Replace(NamespaceTopPath, "{netns}", url.PathEscape(netns), 1), q)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out NamespaceTopResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: %w", NamespaceTopPath, err)
	}
	return &out, nil
}
