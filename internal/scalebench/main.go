// Command scalebench measures the daemon at scale: for each count N it
// creates N named network namespaces (ctscale-0 ... in /run/netns), each
// with one real conntrack entry (a UDP entry inserted over ctnetlink),
// starts the real daemon (bin/ctagent, --tracer.backend as given) and
// reports the time to /readyz, ctagent_scrape_duration_seconds, the
// latency of a whole /metrics request (median of several), its bytes and
// lines, the daemon's memory (VmHWM, VmRSS), its file descriptors by kind
// and its CPU while idle. It prints JSON and a Markdown table.
//
//	go run ./internal/scalebench -n 10,100,1000
//
// The daemon runs from a plain copy of -bin (see copyBinary). Needs root. Other namespaces of the host are seen by the daemon too; the
// report gives how many it found (ctagent_namespaces).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/ctagent/ctagent/internal/nsfarm"
)

// Result is what one run at N namespaces measured.
type Result struct {
	Namespaces      int            `json:"namespaces"`        // created by the run
	Seen            int            `json:"seen"`              // ctagent_namespaces
	Backend         string         `json:"backend"`           // --tracer.backend
	ReadySeconds    float64        `json:"ready_seconds"`     // from exec to 200 on /readyz
	DumpedSeconds   float64        `json:"dumped_seconds"`    // from exec to every namespace dumped
	ScrapeSeconds   float64        `json:"scrape_seconds"`    // median ctagent_scrape_duration_seconds
	RequestSeconds  float64        `json:"request_seconds"`   // median whole GET /metrics
	RequestMin      float64        `json:"request_min"`       // fastest GET /metrics
	RequestMax      float64        `json:"request_max"`       // slowest GET /metrics
	Bytes           int            `json:"bytes"`             // of one /metrics body
	Lines           int            `json:"lines"`             // of one /metrics body
	SeriesPerNS     float64        `json:"series_per_ns"`     // samples with a netns label / namespaces seen
	VmHWMKiB        int            `json:"vmhwm_kib"`         // peak RSS
	VmRSSKiB        int            `json:"vmrss_kib"`         // RSS after the scrapes
	RssAnonKiB      int            `json:"rssanon_kib"`       // of which anonymous (heap, stacks)
	RssFileKiB      int            `json:"rssfile_kib"`       // of which file pages (the binary's text and data)
	HeapInuse       float64        `json:"heap_inuse_bytes"`  // go_memstats_heap_inuse_bytes
	StackInuse      float64        `json:"stack_inuse_bytes"` // go_memstats_stack_inuse_bytes
	Threads         int            `json:"threads"`           // OS threads
	FDs             int            `json:"fds"`               // open file descriptors
	FDKinds         map[string]int `json:"fd_kinds"`          // by readlink kind
	IdleCPUPercent  float64        `json:"idle_cpu_percent"`  // of one core, over the idle window
	IdleSeconds     float64        `json:"idle_seconds"`
	ScrapesMeasured int            `json:"scrapes"`
}

func main() {
	var (
		counts  = flag.String("n", "10,100,1000", "comma-separated namespace counts")
		bin     = flag.String("bin", "bin/ctagent", "daemon binary (built with `make build`)")
		backend = flag.String("backend", "netlink", "--tracer.backend of the daemon")
		scrapes = flag.Int("scrapes", 7, "whole /metrics requests per count (the median is reported)")
		idle    = flag.Duration("idle", 70*time.Second, "window without requests over which idle CPU is measured (longer than --reconcile.interval, 1m by default, to include one reconciliation)")
		jsonOut = flag.String("json", "", "also write the JSON results to this file")
		mdOut   = flag.String("md", "", "also write the Markdown table to this file")
		extra   = flag.String("args", "", "extra daemon arguments, space-separated")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	copied, cleanup, err := copyBinary(*bin)
	if err != nil {
		fatalf("%v", err)
	}
	atExit = cleanup
	defer cleanup()
	*bin = copied
	var results []Result
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fatalf("bad count %q", s)
		}
		r, err := runOne(ctx, n, *bin, *backend, *scrapes, *idle, strings.Fields(*extra))
		if err != nil {
			fatalf("%d namespaces: %v", n, err)
		}
		results = append(results, r)
		fmt.Fprintf(os.Stderr, "scalebench: %d namespaces: ready %.2fs, scrape %.3fs, request %.3fs, %d bytes, RSS %d KiB\n",
			n, r.ReadySeconds, r.ScrapeSeconds, r.RequestSeconds, r.Bytes, r.VmRSSKiB)
	}
	js, _ := json.MarshalIndent(results, "", "  ")
	md := markdown(results)
	fmt.Println(string(js))
	fmt.Println()
	fmt.Print(md)
	if *jsonOut != "" {
		if err := os.WriteFile(*jsonOut, append(js, '\n'), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
	if *mdOut != "" {
		if err := os.WriteFile(*mdOut, []byte(md), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
}

// copyBinary copies the daemon binary to a temporary directory with plain
// writes, and returns the copy's path. The Go linker writes its output
// through mmap, and on some kernels (here 6.18, with large page-cache
// folios) the page cache then maps more of it per fault: `ctagent version`
// alone peaked at 43.6 MiB RSS from the linker's file, 32.7 MiB from a
// copy. An installed binary (a package, a container image) is a copy.
func copyBinary(bin string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "scalebench-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	src, err := os.Open(bin)
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("daemon binary: %w", err)
	}
	defer src.Close()
	path := filepath.Join(dir, filepath.Base(bin))
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err == nil {
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("copy daemon binary: %w", err)
	}
	return path, cleanup, nil
}

// atExit runs before fatalf exits: the copy's removal.
var atExit = func() {}

func fatalf(format string, args ...any) {
	atExit()
	fmt.Fprintf(os.Stderr, "scalebench: "+format+"\n", args...)
	os.Exit(1)
}

// markdown renders the results as a table, one row per figure.
func markdown(rs []Result) string {
	var b strings.Builder
	b.WriteString("| figure |")
	for _, r := range rs {
		fmt.Fprintf(&b, " %d netns |", r.Namespaces)
	}
	b.WriteString("\n| --- |" + strings.Repeat(" --- |", len(rs)) + "\n")
	row := func(name string, f func(Result) string) {
		b.WriteString("| " + name + " |")
		for _, r := range rs {
			b.WriteString(" " + f(r) + " |")
		}
		b.WriteString("\n")
	}
	row("namespaces seen by the daemon", func(r Result) string { return strconv.Itoa(r.Seen) })
	row("time to /readyz", func(r Result) string { return fmt.Sprintf("%.2f s", r.ReadySeconds) })
	row("time until every namespace is dumped (±0.5 s)", func(r Result) string { return fmt.Sprintf("%.2f s", r.DumpedSeconds) })
	row("ctagent_scrape_duration_seconds (median)", func(r Result) string { return fmt.Sprintf("%.4f s", r.ScrapeSeconds) })
	row("whole /metrics request (median, min-max)", func(r Result) string {
		return fmt.Sprintf("%.4f s (%.4f-%.4f)", r.RequestSeconds, r.RequestMin, r.RequestMax)
	})
	row("/metrics bytes", func(r Result) string { return strconv.Itoa(r.Bytes) })
	row("/metrics lines", func(r Result) string { return strconv.Itoa(r.Lines) })
	row("samples per namespace", func(r Result) string { return fmt.Sprintf("%.1f", r.SeriesPerNS) })
	row("VmHWM (peak RSS)", func(r Result) string { return fmt.Sprintf("%.1f MiB", float64(r.VmHWMKiB)/1024) })
	row("VmRSS (anonymous + file pages)", func(r Result) string {
		return fmt.Sprintf("%.1f MiB (%.1f + %.1f)", float64(r.VmRSSKiB)/1024, float64(r.RssAnonKiB)/1024, float64(r.RssFileKiB)/1024)
	})
	row("Go heap in use, stacks in use", func(r Result) string {
		return fmt.Sprintf("%.1f MiB, %.1f MiB", r.HeapInuse/(1<<20), r.StackInuse/(1<<20))
	})
	row("threads", func(r Result) string { return strconv.Itoa(r.Threads) })
	row("file descriptors", func(r Result) string {
		kinds := make([]string, 0, len(r.FDKinds))
		for _, k := range slices.Sorted(mapsKeys(r.FDKinds)) {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, r.FDKinds[k]))
		}
		return fmt.Sprintf("%d (%s)", r.FDs, strings.Join(kinds, ", "))
	})
	row("idle CPU (% of a core)", func(r Result) string {
		return fmt.Sprintf("%.2f %% over %.0f s", r.IdleCPUPercent, r.IdleSeconds)
	})
	return b.String()
}

func mapsKeys(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// runOne measures the daemon with n namespaces of one entry each.
func runOne(ctx context.Context, n int, bin, backend string, scrapes int, idle time.Duration, extra []string) (Result, error) {
	r := Result{Namespaces: n, Backend: backend}
	farm, err := createNamespaces(n)
	defer func() {
		if err := farm.Delete(); err != nil {
			fmt.Fprintf(os.Stderr, "scalebench: %v\n", err)
		}
	}()
	if err != nil {
		return r, err
	}
	addr, err := freeAddr()
	if err != nil {
		return r, err
	}
	args := append([]string{"--tracer.backend=" + backend, "--web.listen-address=" + addr, "--log.level=warn"}, extra...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return r, fmt.Errorf("start %s: %w", bin, err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	base := "http://" + addr
	for {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		if code, _, _ := get(base + "/readyz"); code == http.StatusOK {
			break
		}
		if time.Since(start) > 5*time.Minute {
			return r, errors.New("not ready after 5 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.ReadySeconds = time.Since(start).Seconds()
	// The daemon may be ready before every namespace is dumped (it dumps
	// the rest in the background): wait until each has its dump's series.
	for {
		_, b, err := get(base + "/metrics")
		if err == nil && bytes.Count(b, []byte("\nctagent_reconcile_last_timestamp_seconds{")) >= n {
			break
		}
		if time.Since(start) > 5*time.Minute {
			return r, errors.New("not every namespace dumped after 5 minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
	r.DumpedSeconds = time.Since(start).Seconds()
	// Let the first event and the rescans after start settle.
	time.Sleep(2 * time.Second)

	var reqs, scr []float64
	var body []byte
	for range scrapes {
		t0 := time.Now()
		code, b, err := get(base + "/metrics")
		d := time.Since(t0).Seconds()
		if err != nil || code != http.StatusOK {
			return r, fmt.Errorf("GET /metrics: %d %v", code, err)
		}
		reqs = append(reqs, d)
		body = b
		if v, ok := metricValue(b, "ctagent_scrape_duration_seconds"); ok {
			scr = append(scr, v)
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.ScrapesMeasured = len(reqs)
	r.RequestSeconds, r.RequestMin, r.RequestMax = median(reqs), slices.Min(reqs), slices.Max(reqs)
	r.ScrapeSeconds = median(scr)
	r.Bytes = len(body)
	r.Lines = bytes.Count(body, []byte("\n"))
	r.HeapInuse, _ = metricValue(body, "go_memstats_heap_inuse_bytes")
	r.StackInuse, _ = metricValue(body, "go_memstats_stack_inuse_bytes")
	if v, ok := metricValue(body, "ctagent_namespaces"); ok {
		r.Seen = int(v)
	}
	withNS := 0
	for line := range bytes.Lines(body) {
		if len(line) > 0 && line[0] != '#' && bytes.Contains(line, []byte(`netns="`)) {
			withNS++
		}
	}
	if r.Seen > 0 {
		r.SeriesPerNS = float64(withNS) / float64(r.Seen)
	}

	pid := cmd.Process.Pid
	proc, err := procfs.NewProc(pid)
	if err != nil {
		return r, err
	}
	if st, err := proc.NewStatus(); err == nil {
		r.VmHWMKiB, r.VmRSSKiB = int(st.VmHWM>>10), int(st.VmRSS>>10)
		r.RssAnonKiB, r.RssFileKiB = int(st.RssAnon>>10), int(st.RssFile>>10)
	}
	if st, err := proc.Stat(); err == nil {
		r.Threads = st.NumThreads
	}
	r.FDKinds = fdKinds(pid)
	for _, c := range r.FDKinds {
		r.FDs += c
	}

	c0, t0 := cpuTicks(proc), time.Now()
	select {
	case <-time.After(idle):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	c1, el := cpuTicks(proc), time.Since(t0).Seconds()
	r.IdleSeconds = el
	r.IdleCPUPercent = float64(c1-c0) / clkTck / el * 100
	return r, nil
}

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on
// every architecture Linux supports today.
const clkTck = 100

// cpuTicks is utime+stime of p in clock ticks; 0 if unreadable.
func cpuTicks(p procfs.Proc) uint64 {
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return uint64(st.UTime + st.STime)
}

// fdKinds counts the daemon's file descriptors by what readlink says:
// socket, pipe, anon_inode:[eventpoll], net namespace, or a path.
func fdKinds(pid int) map[string]int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(l, "socket:"):
			l = "socket"
		case strings.HasPrefix(l, "pipe:"):
			l = "pipe"
		case strings.HasPrefix(l, "net:"):
			l = "netns"
		case strings.HasPrefix(l, "anon_inode:"):
			l = strings.TrimPrefix(l, "anon_inode:")
		}
		out[l]++
	}
	return out
}

// metricValue returns the value of the first sample of name without labels.
func metricValue(body []byte, name string) (float64, bool) {
	for line := range bytes.Lines(body) {
		if rest, ok := bytes.CutPrefix(line, []byte(name+" ")); ok {
			v, err := strconv.ParseFloat(string(bytes.TrimSpace(rest)), 64)
			return v, err == nil
		}
	}
	return 0, false
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	return s[len(s)/2]
}

func get(url string) (int, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// createNamespaces creates n namespaces of one entry each (nsfarm).
func createNamespaces(n int) (*nsfarm.Farm, error) { return nsfarm.Create("ctscale", n) }
