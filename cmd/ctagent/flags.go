package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"k8s.io/client-go/kubernetes"

	"github.com/ctagent/ctagent/pkg/metrics"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// defaultListenAddress is the port of ctagent. 9695 lies in the range that
// the Prometheus project hands out to exporters (9100-9999) and clashes with
// none of the ports of the Prometheus server (9090), Pushgateway (9091),
// Alertmanager (9093), node_exporter (9100), blackbox_exporter (9115) or
// the other exporters one runs next to a conntrack exporter on a node
// (node_exporter, process-exporter 9256, cAdvisor 8080, kube-proxy 10249,
// kubelet 10250/10255, Cilium 9962-9965, Calico/Felix 9091, ebpf_exporter
// 9435). See deploy/README.md.
const defaultListenAddress = ":9695"

// Label names that --metrics.labels accepts.
var metricLabels = metrics.IdentityLabels

// defaultMetricLabels are the labels on per-namespace series by default.
// Each is a property of the namespace, so none adds series beyond one per
// namespace; comm (of the namespace's lowest PID) can change over its life.
var defaultMetricLabels = metricLabels

// config holds every flag of run, check and events.
type config struct {
	command string // "run", "check", "events", "version"

	listenAddress string
	telemetryPath string
	webConfigFile string

	backend           tracer.Backend
	btfPath           string
	ringbufSize       byteSize
	perfBuffer        bool
	bpfStats          bool
	perfBufferSize    byteSize
	eventBuffer       int
	lifetimeEntries   int
	netlinkBufferSize byteSize

	logLevel  string
	logFormat string

	reconcileInterval   time.Duration
	maxNamespaces       int
	staleAfter          time.Duration
	labels              []string
	kernelStats         bool
	netnsRescanInterval time.Duration
	procRoot            string
	netnsDirs           []string

	kubeconfig string
	nodeName   string
	podLabels  []string
	// kubeClient is set only by tests (there is no flag): the pod informer
	// then uses it, e.g. client-go's fake clientset, instead of a client
	// built from --kubernetes.kubeconfig or the in-cluster service account.
	kubeClient kubernetes.Interface

	eventsNetns string // events: only this namespace (name or inode)
}

// usageError is a bad command line; main exits with status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

const usageHeader = `Usage: ctagent [COMMAND] [FLAGS]

ctagent makes the Linux conntrack table observable per network namespace and
exports it to Prometheus.

Commands:
  run       run the exporter (the default)
  check     validate the flags and the kernel BTF, report which tracer backend
            would attach, and exit (0: a backend attaches, 1: none does)
  events    print conntrack events as JSON lines, one object per event, with
            the network namespace that owns each entry, until interrupted
  version   print the version and exit

Flags:
`

// parseArgs parses the command line (without the program name). Help
// requests return flag.ErrHelp after printing the usage to stdout.
func parseArgs(args []string, stdout io.Writer) (*config, error) {
	cfg := &config{command: "run"}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "run", "check", "events", "version":
			cfg.command, args = args[0], args[1:]
		case "help":
			args = []string{"--help"}
		default:
			return nil, usageErrorf("unknown command %q (want run, check, events or version)", args[0])
		}
	}

	fs := flag.NewFlagSet("ctagent", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by main
	var (
		showVersion bool
		configCheck bool
		backend     = string(tracer.BackendAuto)
		labels      = strings.Join(defaultMetricLabels, ",")
		podLabels   string
		netnsDirs   = "/var/run/netns,/run/netns"
	)
	fs.BoolVar(&showVersion, "version", false, "Print the version and exit.")
	fs.BoolVar(&configCheck, "config.check", false, "Same as the check command.")
	fs.StringVar(&cfg.listenAddress, "web.listen-address", defaultListenAddress, "Address to listen on for the web interface and telemetry.")
	fs.StringVar(&cfg.telemetryPath, "web.telemetry-path", "/metrics", "Path under which to expose metrics.")
	fs.StringVar(&cfg.webConfigFile, "web.config.file", "", "Path to a configuration file that can enable TLS or authentication (exporter-toolkit web-config format).")
	fs.StringVar(&backend, "tracer.backend", backend, "Tracer backend: auto, fentry, kprobe or netlink. auto tries them in this order.")
	fs.StringVar(&cfg.btfPath, "btf.path", "", "Kernel BTF file (raw BTF or an ELF file with a .BTF section) for kernels without /sys/kernel/btf/vmlinux.")
	fs.Var(&cfg.ringbufSize, "tracer.ringbuf-size", "eBPF ring buffer size, a power-of-two multiple of the page size (e.g. 4MiB); 0: the tracer's default (4MiB).")
	fs.BoolVar(&cfg.perfBuffer, "tracer.perf-buffer", false, "Use a perf event array instead of the ring buffer even where ring buffers exist.")
	fs.BoolVar(&cfg.bpfStats, "tracer.bpf-stats", true, "Have the kernel account the run count and run time of the eBPF programs while ctagent runs (ctagent_bpf_program_run_*; costs a clock read per program run).")
	fs.Var(&cfg.perfBufferSize, "tracer.perf-buffer-size", "Perf event buffer size per CPU (e.g. 256KiB); 0: the tracer's default.")
	fs.IntVar(&cfg.eventBuffer, "tracer.event-buffer", 0, "Capacity of the in-process event queue; 0: the tracer's default (4096).")
	fs.IntVar(&cfg.lifetimeEntries, "tracer.lifetime-entries", 0, "Live entries, in all namespaces together, whose creation time the eBPF backends keep for ctagent_conntrack_lifetime_seconds (an LRU, preallocated, about 80 bytes each); 0: twice nf_conntrack_max (a per-namespace limit), between 65536 and 1048576.")
	fs.Var(&cfg.netlinkBufferSize, "tracer.netlink-buffer-size", "Receive buffer of each ctnetlink socket (netlink backend, e.g. 8MiB); 0: the tracer's default.")
	fs.StringVar(&cfg.logLevel, "log.level", "info", "Only log messages with the given severity or above: debug, info, warn, error.")
	fs.StringVar(&cfg.logFormat, "log.format", "logfmt", "Output format of log messages: logfmt or json.")
	fs.DurationVar(&cfg.reconcileInterval, "reconcile.interval", time.Minute, "How often the exported entry counts are reconciled with a dump of each conntrack table.")
	fs.IntVar(&cfg.maxNamespaces, "metrics.max-namespaces", 1024, "Most network namespaces with series of their own; the rest (the smallest tables) are summed into netns=\"overflow\". 0: no limit.")
	fs.BoolVar(&cfg.kernelStats, "metrics.kernel-stats", true, "Read each namespace's kernel conntrack statistics (conntrack -S) at scrape time.")
	fs.DurationVar(&cfg.staleAfter, "metrics.stale-after", 5*time.Minute, "Drop the series of a network namespace this long after it disappeared.")
	fs.StringVar(&labels, "metrics.labels", labels, "Comma-separated identity labels on per-namespace series, from: "+strings.Join(metricLabels, ",")+". The netns label (the inode) is always there.")
	fs.DurationVar(&cfg.netnsRescanInterval, "netns.rescan-interval", 10*time.Second, "How often /proc and the netns directories are rescanned for network namespaces.")
	fs.StringVar(&cfg.procRoot, "netns.proc-root", "/proc", "The host's procfs (e.g. /host/proc in a container without hostPID).")
	fs.StringVar(&netnsDirs, "netns.dirs", netnsDirs, "Comma-separated directories of named network namespaces.")
	fs.StringVar(&cfg.kubeconfig, "kubernetes.kubeconfig", "", "Kubeconfig file; empty: the in-cluster service account, or no pod names outside a cluster.")
	fs.StringVar(&cfg.nodeName, "kubernetes.node-name", os.Getenv("NODE_NAME"), "Name of this node, to watch only its pods (default $NODE_NAME).")
	fs.StringVar(&podLabels, "kubernetes.pod-labels", "", "Comma-separated pod label keys; each becomes the label pod_label_<key> on per-namespace series (characters other than letters, digits and _ become _: app.kubernetes.io/name gives pod_label_app_kubernetes_io_name; keys that give the same label are refused) and is shown by the events command. A key adds a label to every per-namespace series, not more series: choose keys with few values (app, team).")
	fs.StringVar(&cfg.eventsNetns, "events.netns", "", "events: only print events of this network namespace (a name in --netns.dirs or an inode number).")

	fs.Usage = func() {} // help goes to stdout below; errors go to stderr once, from main
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs)
			return nil, err
		}
		// The flag package names flags with one dash; ours are documented
		// with two.
		msg := strings.Replace(err.Error(), "defined: -", "defined: --", 1)
		msg = strings.Replace(msg, " for flag -", " for flag --", 1)
		return nil, &usageError{errors.New(msg)}
	}
	if fs.NArg() > 0 {
		return nil, usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	if showVersion {
		cfg.command = "version"
		return cfg, nil
	}
	if cfg.command == "version" {
		return cfg, nil
	}
	if configCheck {
		if cfg.command != "run" {
			return nil, usageErrorf("--config.check cannot be combined with the %s command", cfg.command)
		}
		cfg.command = "check"
	}

	b, err := tracer.ParseBackend(backend)
	if err != nil {
		return nil, usageErrorf("--tracer.backend: %v", err)
	}
	cfg.backend = b
	cfg.labels = splitList(labels)
	for _, l := range cfg.labels {
		if !slices.Contains(metricLabels, l) {
			return nil, usageErrorf("--metrics.labels: unknown label %q (want some of %s)", l, strings.Join(metricLabels, ","))
		}
	}
	cfg.podLabels = splitList(podLabels)
	cfg.netnsDirs = splitList(netnsDirs)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// validate checks the values that flag parsing alone cannot.
func (c *config) validate() error {
	if _, port, err := net.SplitHostPort(c.listenAddress); err != nil {
		return usageErrorf("--web.listen-address: %v", err)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usageErrorf("--web.listen-address: bad port %q in %q", port, c.listenAddress)
	}
	if !strings.HasPrefix(c.telemetryPath, "/") {
		return usageErrorf("--web.telemetry-path must start with /, got %q", c.telemetryPath)
	}
	if c.telemetryPath == "/healthz" || c.telemetryPath == "/readyz" {
		return usageErrorf("--web.telemetry-path: %s is the health endpoint", c.telemetryPath)
	}
	if c.webConfigFile != "" {
		if err := web.Validate(c.webConfigFile); err != nil {
			return usageErrorf("--web.config.file: %v", err)
		}
	}
	if c.btfPath != "" {
		if err := tracer.ValidateBTF(c.btfPath); err != nil {
			return usageErrorf("--btf.path: %v", err)
		}
	}
	if n := int64(c.ringbufSize); n != 0 {
		page := int64(os.Getpagesize())
		if n < page || n%page != 0 || n&(n-1) != 0 {
			return usageErrorf("--tracer.ringbuf-size: %s is not a power-of-two multiple of the page size (%d bytes)", c.ringbufSize, page)
		}
	}
	if n := int64(c.perfBufferSize); n < 0 || (n > 0 && n < int64(os.Getpagesize())) {
		return usageErrorf("--tracer.perf-buffer-size: %s is smaller than a page (%d bytes)", c.perfBufferSize, os.Getpagesize())
	}
	if c.lifetimeEntries < 0 || c.lifetimeEntries > 1<<26 {
		return usageErrorf("--tracer.lifetime-entries must be between 0 and %d, got %d", 1<<26, c.lifetimeEntries)
	}
	if c.eventBuffer < 0 {
		return usageErrorf("--tracer.event-buffer must not be negative")
	}
	if n := int64(c.netlinkBufferSize); n < 0 || n > 1<<31-1 {
		return usageErrorf("--tracer.netlink-buffer-size: %s out of range", c.netlinkBufferSize)
	}
	if !slices.Contains(logLevels, c.logLevel) {
		return usageErrorf("--log.level: unknown level %q (want %s)", c.logLevel, strings.Join(logLevels, ", "))
	}
	if !slices.Contains(logFormats, c.logFormat) {
		return usageErrorf("--log.format: unknown format %q (want %s)", c.logFormat, strings.Join(logFormats, ", "))
	}
	if c.reconcileInterval <= 0 {
		return usageErrorf("--reconcile.interval must be positive, got %s", c.reconcileInterval)
	}
	if c.maxNamespaces < 0 {
		return usageErrorf("--metrics.max-namespaces must not be negative, got %d", c.maxNamespaces)
	}
	if c.staleAfter < 0 {
		return usageErrorf("--metrics.stale-after must not be negative, got %s", c.staleAfter)
	}
	if c.netnsRescanInterval <= 0 {
		return usageErrorf("--netns.rescan-interval must be positive, got %s", c.netnsRescanInterval)
	}
	if c.procRoot == "" {
		return usageErrorf("--netns.proc-root must not be empty")
	}
	for _, k := range c.podLabels {
		if err := validLabelKey(k); err != nil {
			return usageErrorf("--kubernetes.pod-labels: %v", err)
		}
	}
	if _, err := metrics.PodLabelNames(c.podLabels); err != nil {
		return usageErrorf("--kubernetes.pod-labels: %v", err)
	}
	if c.kubeconfig != "" {
		if _, err := os.Stat(c.kubeconfig); err != nil {
			return usageErrorf("--kubernetes.kubeconfig: %v", err)
		}
	}
	if c.eventsNetns != "" && c.command != "events" {
		return usageErrorf("--events.netns only applies to the events command")
	}
	return nil
}

// validLabelKey checks a Kubernetes label key: [prefix/]name, name at most
// 63 characters of [A-Za-z0-9._-] starting and ending alphanumeric.
func validLabelKey(k string) error {
	name := k
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		if i == 0 || i > 253 {
			return fmt.Errorf("bad label key %q: bad prefix", k)
		}
		name = k[i+1:]
	}
	if name == "" || len(name) > 63 {
		return fmt.Errorf("bad label key %q: name must be 1 to 63 characters", k)
	}
	alnum := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !alnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("bad label key %q: character %q", k, c)
		}
	}
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return fmt.Errorf("bad label key %q: must start and end with a letter or digit", k)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// byteSize is a flag value in bytes that accepts B, KiB, MiB and GiB
// suffixes (and k/K, m/M, g/G as their shorthands).
type byteSize int64

func (b byteSize) String() string {
	n := int64(b)
	switch {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	mult := int64(1)
	switch strings.TrimSpace(s[len(num):]) {
	case "", "B":
	case "k", "K", "KiB":
		mult = 1 << 10
	case "m", "M", "MiB":
		mult = 1 << 20
	case "g", "G", "GiB":
		mult = 1 << 30
	default:
		return fmt.Errorf("bad size %q (want bytes, or a number with KiB, MiB or GiB)", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return fmt.Errorf("bad size %q", s)
	}
	*b = byteSize(n * mult)
	return nil
}

// printUsage prints the help text with the flags in their --name form.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, usageHeader)
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ == "value" {
			typ = "size"
		}
		if typ != "" {
			line += "=" + strings.ToUpper(typ)
		}
		fmt.Fprintln(w, line)
		switch {
		case typ == "" && f.DefValue == "true":
			usage += fmt.Sprintf(" (default true; --%s=false turns it off)", f.Name)
		case f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s":
			usage += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "      %s\n", usage)
	})
}
