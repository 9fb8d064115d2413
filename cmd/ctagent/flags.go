package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	"k8s.io/apimachinery/pkg/api/validate/content"

	"github.com/ctagent/ctagent/internal/cliflag"
	"github.com/ctagent/ctagent/pkg/api"
	"github.com/ctagent/ctagent/pkg/logging"
	"github.com/ctagent/ctagent/pkg/metrics"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/netns/kube"
	"github.com/ctagent/ctagent/pkg/server"
	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ebpftracer"
)

// defaultListenAddress is the port of ctagent. The exporter range 9100-9999
// of https://github.com/prometheus/prometheus/wiki/Default-port-allocations
// is fully allocated; 10371 is given to no exporter there (nor to Zabbix
// 10050/10051, amanda 10080-10083 or the Kubernetes node ports
// 10248-10260), and lies clear of the runs that page hands out one by one
// (10001-, 10100-, 10200-). See deploy/README.md.
const defaultListenAddress = ":10371"

// config holds every flag of run, check and events. The flags that
// configure a package are bound to the fields of its Options.
type config struct {
	command string // "run", "check", "events", "version", "list", "top", "uninstall"

	web           *web.FlagConfig // --web.listen-address (repeatable), --web.systemd-socket, --web.config.file
	telemetryPath string
	logLevel      string
	logFormat     string

	// loadModules: load nf_conntrack and nf_conntrack_netlink where they
	// are missing and ctagent may (see awaitConntrack).
	loadModules bool

	tracer  tracer.Options  // without Logger and Namespaces
	metrics metrics.Options // without Tracer, Namespaces, Logger and the version
	netns   netns.Options   // without Logger and Pods

	// kube is without PodLabels and Logger. Only tests set its Client
	// (there is no flag), e.g. to client-go's fake clientset.
	kube kube.Config

	eventsNetns  string          // events: only this namespace (name or inode)
	eventsOutput string          // events: json or text
	eventsFilter api.EventFilter // events: pod, protocols and types; NetNS is eventsNetns

	client clientConfig // list and top
}

// clientConfig holds the flags of the list and top commands, which talk to
// a running daemon.
type clientConfig struct {
	server   string
	httpFile string     // --http.config.file: TLS and auth of the client, as promtool reads it
	filter   api.Filter // list
	output   string     // list: text or json
	once     bool       // top
	netns    string     // top: the drill-down of this namespace
	limit    int        // top: destinations in the drill-down
	sort     string     // top
	interval time.Duration
}

// usageError is a bad command line; main exits with status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// errShown: --help, help or --version printed what was asked; exit 0.
var errShown = errors.New("help or version shown")

// parseArgs parses the command line (without the program name). Help and
// version go to stdout and return errShown.
func parseArgs(args []string, stdout io.Writer) (*config, error) {
	cfg := &config{}
	app := kingpin.New("ctagent", "Makes the Linux conntrack table observable per network namespace and exports it to Prometheus.")
	shown := false
	app.UsageWriter(stdout).ErrorWriter(io.Discard).Terminate(func(int) { shown = true })
	app.HelpFlag.Short('h')
	app.Version(versionString())
	app.Command("run", "Run the exporter (the default).").Default()
	app.Command("check", "Validate the flags and the kernel BTF, report which tracer backend would attach, and exit (0: a backend attaches, 1: none does).")
	events := app.Command("events", "Print conntrack events, one line per event (JSON, or text like conntrack -E), with the network namespace that owns each entry, until interrupted: from the daemon at --server, or, when no daemon runs there, by tracing itself.")
	events.Flag("output", "Output format: json (JSON lines) or text (like conntrack -E, then the owner).").Short('o').Default("json").EnumVar(&cfg.eventsOutput, "json", "text")
	events.Flag("netns", "Only events of this network namespace: a name in --netns.dirs or an inode number (same as --events.netns).").StringVar(&cfg.eventsNetns)
	events.Flag("pod", "Only events of the namespace of this pod: name or pod_namespace/name.").StringVar(&cfg.eventsFilter.Pod)
	events.Flag("proto", "Only events of these protocols (tcp, udp, icmp, icmpv6, sctp, ...); repeatable or comma-separated.").SetValue(cliflag.List(&cfg.eventsFilter.Protocols))
	events.Flag("type", "Only events of these types ("+strings.Join(api.EventTypes, ", ")+"); repeatable or comma-separated.").SetValue(cliflag.List(&cfg.eventsFilter.Types))
	app.Command("version", "Print the version and exit.")
	app.Command("uninstall", "Remove the pinned eBPF programs and maps under --bpf.pin-path for good, and exit: the programs stop counting once no ctagent runs (stop the agent first). Counters start from zero at the next start.")
	cc := &cfg.client
	list := app.Command("list", "Print the conntrack entries of every network namespace (or of those selected) with their owner, from a running daemon's API, as conntrack -L does (or as JSON lines).")
	top := app.Command("top", "Show the network namespaces with the fullest conntrack tables, from a running daemon's API: an interactive view on a terminal (keys: s or 1-5 sort, / filter, enter what fills the selected table, esc back, q quit), else a plain table.")
	for _, c := range []*kingpin.CmdClause{list, top, events} {
		c.Flag("server", "URL of the ctagent daemon (its --web.listen-address); http://user:pass@host:port for basic auth.").Default(api.DefaultServer).StringVar(&cc.server)
		c.Flag("http.config.file", "HTTP client configuration file in the Prometheus format (as promtool's): tls_config (ca_file, cert_file, key_file, server_name, insecure_skip_verify), basic_auth, authorization (bearer). For a daemon with a --web.config.file.").PlaceHolder("FILE").StringVar(&cc.httpFile)
	}
	list.Flag("netns", "Only this network namespace: an inode number or a name in --netns.dirs.").StringVar(&cc.filter.NetNS)
	list.Flag("pod", "Only the namespace of this pod: name or pod_namespace/name.").StringVar(&cc.filter.Pod)
	list.Flag("proto", "Only these protocols (tcp, udp, icmp, icmpv6, sctp, ...); repeatable or comma-separated.").SetValue(cliflag.List(&cc.filter.Protocols))
	list.Flag("state", "Only TCP entries in this state (e.g. ESTABLISHED, TIME_WAIT).").StringVar(&cc.filter.State)
	list.Flag("unreplied", "Only entries that saw no reply ([UNREPLIED]).").BoolVar(&cc.filter.Unreplied)
	list.Flag("output", "Output format: text (like conntrack -L, then the owner) or json (JSON lines).").Short('o').Default("text").EnumVar(&cc.output, "text", "json")
	top.Flag("once", "Print the table once and exit, instead of refreshing it.").BoolVar(&cc.once)
	top.Flag("sort", "Sort by: "+strings.Join(api.TopSorts, ", ")+" (descending).").Default("entries").EnumVar(&cc.sort, api.TopSorts...)
	top.Flag("netns", "Show what fills the table of this network namespace (an inode number or a name): its top destinations and states by entry count.").StringVar(&cc.netns)
	top.Flag("limit", "Destinations shown by --netns.").Default("10").IntVar(&cc.limit)
	top.Flag("interval", "Refresh interval without --once.").Default("2s").DurationVar(&cc.interval)

	var configCheck, kernelStats bool
	t, m := &cfg.tracer, &cfg.metrics
	flag := app.Flag
	flag("config.check", "Same as the check command.").BoolVar(&configCheck)
	cfg.web = kingpinflag.AddFlags(app, defaultListenAddress)
	flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&cfg.telemetryPath)
	flag("tracer.backend", "Tracer backend: auto, fentry, kprobe or netlink. auto tries them in this order.").Default("auto").StringVar((*string)(&t.Backend))
	flag("bpf.pin-path", "Directory below a bpffs mount where run pins its eBPF programs and maps, so that they keep counting while ctagent is down (restarts and upgrades of the same layout keep every counter); empty: no pinning. The uninstall command removes the pins.").Default(ebpftracer.DefaultPinPath).StringVar(&t.PinPath)
	flag("btf.path", "Kernel BTF file (raw BTF or an ELF file with a .BTF section) for kernels without /sys/kernel/btf/vmlinux.").StringVar(&t.BTFPath)
	flag("conntrack.load-modules", "Load the kernel modules nf_conntrack and nf_conntrack_netlink where they are missing (needs CAP_SYS_MODULE, which the shipped systemd unit and DaemonSet do not grant). Either way, without nf_conntrack ctagent waits for it, not ready, and attaches as soon as it is loaded. On by default.").Default("true").BoolVar(&cfg.loadModules)
	flag("tracer.ringbuf-size", "eBPF ring buffer size, a power-of-two multiple of the page size (e.g. 4MiB); 0: the tracer's default (4MiB).").Default("0").SetValue(cliflag.Bytes(&t.RingBufferSize))
	flag("tracer.perf-buffer", "Use a perf event array instead of the ring buffer even where ring buffers exist.").BoolVar(&t.ForcePerfBuffer)
	flag("tracer.bpf-stats", "Have the kernel account the run count and run time of the eBPF programs while ctagent runs (ctagent_bpf_program_run_*; costs a clock read per program run). On by default.").Default("true").BoolVar(&t.BPFStats)
	flag("tracer.perf-buffer-size", "Perf event buffer size per CPU (e.g. 256KiB); 0: the tracer's default.").Default("0").SetValue(cliflag.Bytes(&t.PerfBufferSize))
	flag("tracer.event-buffer", "Capacity of the in-process event queue; 0: the tracer's default (4096).").Default("0").IntVar(&t.EventBuffer)
	flag("tracer.lifetime-entries", "Live entries, in all namespaces together, whose creation time the eBPF backends keep for ctagent_conntrack_lifetime_seconds (an LRU, preallocated, about 80 bytes each); 0: twice nf_conntrack_max (a per-namespace limit), between 65536 and 1048576.").Default("0").IntVar(&t.LifetimeEntries)
	flag("tracer.netlink-buffer-size", "Receive buffer of each ctnetlink socket (netlink backend, e.g. 8MiB); 0: the tracer's default.").Default("0").SetValue(cliflag.Bytes(&t.NetlinkBufferSize))
	flag("tracer.netlink-stats-interval", "Netlink backend: how often each namespace's kernel conntrack statistics (conntrack -S, the entry count, and the insert failures derived from them) are read in the background; a scrape serves the last read, at most this plus one pass old (ctagent_conntrack_kernel_stats_age_seconds). 0: read them in every scrape (two requests per namespace).").Default("15s").DurationVar(&t.KernelStatsInterval)
	flag("log.level", "Only log messages with the given severity or above: debug, info, warn, error.").Default("info").EnumVar(&cfg.logLevel, logging.Levels...)
	flag("log.format", "Output format of log messages: logfmt or json.").Default("logfmt").EnumVar(&cfg.logFormat, logging.Formats...)
	flag("reconcile.interval", "How often the exported entry counts are reconciled with a dump of each conntrack table.").Default("1m").DurationVar(&m.ReconcileInterval)
	flag("metrics.max-namespaces", `Most network namespaces with series of their own; the rest (the smallest tables) are summed into netns="overflow". 0: no limit.`).Default("1024").IntVar(&m.MaxNamespaces)
	flag("metrics.kernel-stats", "Read each namespace's kernel conntrack statistics (conntrack -S) at scrape time. On by default.").Default("true").BoolVar(&kernelStats)
	flag("metrics.stale-after", "Drop the series of a network namespace this long after it disappeared.").Default("5m").DurationVar(&m.StaleAfter)
	flag("metrics.labels", "Comma-separated identity labels on per-namespace series, from: "+strings.Join(metrics.IdentityLabels, ",")+". The netns label (the inode) is always there.").Default(strings.Join(metrics.IdentityLabels, ",")).SetValue(cliflag.List(&m.Labels))
	flag("netns.rescan-interval", "How often /proc and the netns directories are rescanned for network namespaces.").Default("10s").DurationVar(&m.RescanInterval)
	flag("netns.proc-root", "The host's procfs (e.g. /host/proc in a container without hostPID).").Default("/proc").StringVar(&cfg.netns.ProcRoot)
	flag("netns.dirs", "Comma-separated directories of named network namespaces.").Default("/var/run/netns,/run/netns").SetValue(cliflag.List(&cfg.netns.NetnsDirs))
	flag("kubernetes.kubeconfig", "Kubeconfig file; empty: the in-cluster service account, or no pod names outside a cluster.").StringVar(&cfg.kube.Kubeconfig)
	flag("kubernetes.node-name", "Name of this node, to watch only its pods.").Envar(kube.NodeNameEnv).StringVar(&cfg.kube.NodeName)
	flag("kubernetes.pod-labels", "Comma-separated pod label keys; each becomes the label pod_label_<key> on per-namespace series (characters other than letters, digits and _ become _: app.kubernetes.io/name gives pod_label_app_kubernetes_io_name; keys that give the same label are refused) and is shown by the events command. A key adds a label to every per-namespace series, not more series: choose keys with few values (app, team).").SetValue(cliflag.List(&m.PodLabels))
	flag("events.netns", "events: only print events of this network namespace (a name in --netns.dirs or an inode number).").StringVar(&cfg.eventsNetns)

	command, err := cliflag.Parse(app, args)
	switch {
	case shown:
		return nil, errShown
	case err != nil:
		return nil, &usageError{err}
	}
	cfg.command = command
	if configCheck {
		if command != "run" {
			return nil, usageErrorf("--config.check cannot be combined with the %s command", command)
		}
		cfg.command = "check"
	}
	if t.Backend, err = tracer.ParseBackend(string(t.Backend)); err != nil {
		return nil, usageErrorf("--tracer.backend: %v", err)
	}
	m.DisableKernelStats = !kernelStats
	t.MaxNamespaces = m.MaxNamespaces
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// validate checks the values that flag parsing alone cannot.
func (c *config) validate() error {
	for _, addr := range *c.web.WebListenAddresses {
		if _, port, err := net.SplitHostPort(addr); err != nil {
			return usageErrorf("--web.listen-address: %v", err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return usageErrorf("--web.listen-address: bad port %q in %q", port, addr)
		}
	}
	if !strings.HasPrefix(c.telemetryPath, "/") {
		return usageErrorf("--web.telemetry-path must start with /, got %q", c.telemetryPath)
	}
	if c.telemetryPath == server.HealthPath || c.telemetryPath == server.ReadyPath {
		return usageErrorf("--web.telemetry-path: %s is the health endpoint", c.telemetryPath)
	}
	if err := web.Validate(*c.web.WebConfigFile); err != nil {
		return usageErrorf("--web.config.file: %v", err)
	}
	if c.tracer.BTFPath != "" {
		if err := ebpftracer.ValidateBTF(c.tracer.BTFPath); err != nil {
			return usageErrorf("--btf.path: %v", err)
		}
	}
	page := os.Getpagesize()
	if n := c.tracer.RingBufferSize; n != 0 && (n < page || n%page != 0 || n&(n-1) != 0) {
		return usageErrorf("--tracer.ringbuf-size: %s is not a power-of-two multiple of the page size (%d bytes)", units.Base2Bytes(n), page)
	}
	if n := c.tracer.PerfBufferSize; n > 0 && n < page {
		return usageErrorf("--tracer.perf-buffer-size: %s is smaller than a page (%d bytes)", units.Base2Bytes(n), page)
	}
	if n := c.tracer.NetlinkBufferSize; n > 1<<31-1 {
		return usageErrorf("--tracer.netlink-buffer-size: %s out of range", units.Base2Bytes(n))
	}
	if n := c.tracer.LifetimeEntries; n < 0 || n > 1<<26 {
		return usageErrorf("--tracer.lifetime-entries must be between 0 and %d, got %d", 1<<26, n)
	}
	if c.tracer.EventBuffer < 0 {
		return usageErrorf("--tracer.event-buffer must not be negative")
	}
	if c.tracer.KernelStatsInterval < 0 {
		return usageErrorf("--tracer.netlink-stats-interval must not be negative, got %s", c.tracer.KernelStatsInterval)
	}
	if m := c.metrics; m.ReconcileInterval <= 0 {
		return usageErrorf("--reconcile.interval must be positive, got %s", m.ReconcileInterval)
	} else if m.MaxNamespaces < 0 {
		return usageErrorf("--metrics.max-namespaces must not be negative, got %d", m.MaxNamespaces)
	} else if m.StaleAfter < 0 {
		return usageErrorf("--metrics.stale-after must not be negative, got %s", m.StaleAfter)
	} else if m.RescanInterval <= 0 {
		return usageErrorf("--netns.rescan-interval must be positive, got %s", m.RescanInterval)
	}
	for _, l := range c.metrics.Labels {
		if !slices.Contains(metrics.IdentityLabels, l) {
			return usageErrorf("--metrics.labels: unknown label %q (want some of %s)", l, strings.Join(metrics.IdentityLabels, ","))
		}
	}
	if c.netns.ProcRoot == "" {
		return usageErrorf("--netns.proc-root must not be empty")
	}
	for _, k := range c.metrics.PodLabels {
		if errs := content.IsLabelKey(k); len(errs) > 0 {
			return usageErrorf("--kubernetes.pod-labels: bad label key %q: %s", k, strings.Join(errs, "; "))
		}
	}
	if _, err := metrics.PodLabelNames(c.metrics.PodLabels); err != nil {
		return usageErrorf("--kubernetes.pod-labels: %v", err)
	}
	if c.kube.Kubeconfig != "" {
		if _, err := os.Stat(c.kube.Kubeconfig); err != nil {
			return usageErrorf("--kubernetes.kubeconfig: %v", err)
		}
	}
	if c.command == "list" {
		c.client.filter.State = strings.ToUpper(c.client.filter.State)
		if err := c.client.filter.Check(); err != nil {
			return usageErrorf("--%v", err)
		}
	}
	if c.client.httpFile != "" {
		if _, err := loadHTTPConfig(c.client.httpFile); err != nil {
			return usageErrorf("--http.config.file: %v", err)
		}
	}
	if c.command == "top" && c.client.interval <= 0 {
		return usageErrorf("--interval must be positive, got %s", c.client.interval)
	}
	if c.command == "top" && (c.client.limit < 1 || c.client.limit > api.MaxTopLimit) {
		return usageErrorf("--limit must be between 1 and %d, got %d", api.MaxTopLimit, c.client.limit)
	}
	if strings.HasPrefix(c.telemetryPath, api.PathPrefix) {
		return usageErrorf("--web.telemetry-path: %s is the API's", api.PathPrefix)
	}
	if c.eventsNetns != "" && c.command != "events" {
		return usageErrorf("--events.netns only applies to the events command")
	}
	if c.command == "events" {
		f := &c.eventsFilter
		f.NetNS = c.eventsNetns
		for i, p := range f.Protocols {
			f.Protocols[i] = strings.ToLower(p)
		}
		for i, t := range f.Types {
			f.Types[i] = strings.ToLower(t)
		}
		if err := f.Check(); err != nil {
			return usageErrorf("--%v", err)
		}
	}
	return nil
}
