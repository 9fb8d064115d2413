package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// jsonEvent is one line of ctagent events.
type jsonEvent struct {
	Time         time.Time         `json:"time"`
	Type         string            `json:"type"`
	NetNS        uint32            `json:"netns"`
	NetNSName    string            `json:"netns_name,omitempty"`
	Host         bool              `json:"host_netns,omitempty"`
	Pod          string            `json:"pod,omitempty"`
	PodNamespace string            `json:"pod_namespace,omitempty"`
	PodLabels    map[string]string `json:"pod_labels,omitempty"`
	Container    string            `json:"container,omitempty"`
	PID          int               `json:"pid,omitempty"`
	Comm         string            `json:"comm,omitempty"`
	Family       string            `json:"family"`
	Protocol     string            `json:"protocol"`
	Original     jsonTuple         `json:"original"`
	Reply        *jsonTuple        `json:"reply,omitempty"`
	Zone         uint16            `json:"zone,omitempty"`
	Mark         uint32            `json:"mark,omitempty"`
	Status       []string          `json:"status,omitempty"`
	TCPState     string            `json:"tcp_state,omitempty"`
	Lifetime     *float64          `json:"lifetime_seconds,omitempty"`
	Reason       string            `json:"reason,omitempty"`
	Error        int32             `json:"error,omitempty"`
	Cookie       uint64            `json:"cookie,omitempty"`
}

type jsonTuple struct {
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	SrcPort  uint16 `json:"sport,omitempty"`
	DstPort  uint16 `json:"dport,omitempty"`
	ICMPID   *int   `json:"icmp_id,omitempty"`
	ICMPType *int   `json:"icmp_type,omitempty"`
	ICMPCode *int   `json:"icmp_code,omitempty"`
}

// runEvents streams the tracer's events as JSON lines until ctx is done.
func runEvents(ctx context.Context, cfg *config, stdout io.Writer, log *zap.Logger) error {
	pods, stopPods, err := startPodSource(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stopPods()
	r := newResolver(cfg, pods, log)
	if err := r.Refresh(); err != nil {
		log.Warn("Scanning network namespaces", zap.Error(err))
	}
	var keep func(netns.Namespace) bool
	if cfg.eventsNetns != "" {
		keep = func(ns netns.Namespace) bool { return matchNetns(r, ns.Inode, cfg.eventsNetns) }
		if !slices.ContainsFunc(r.Namespaces(), keep) {
			log.Warn("No such network namespace yet; waiting for it", zap.String("netns", cfg.eventsNetns))
		}
	}
	opts := tracerOptions(cfg, log)
	opts.Namespaces = tracerNamespaces(r, cfg.netns.ProcRoot, log, keep)
	t, err := tracer.Open(ctx, opts)
	if err != nil {
		return err
	}
	defer closeTracer(t, log)
	t.Info().Log(log, cfg.tracer.Backend)

	w := bufio.NewWriterSize(stdout, 64<<10)
	defer w.Flush()
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	events := t.Events()
	for {
		select {
		case <-ctx.Done():
			log.Info("Stopped")
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if keep != nil && !matchNetns(r, ev.NetNS, cfg.eventsNetns) {
				break
			}
			id, _ := r.Lookup(ev.NetNS)
			if err := enc.Encode(toJSONEvent(ev, id)); err != nil {
				return err
			}
			if len(events) == 0 { // flush when idle, batch when busy
				if err := w.Flush(); err != nil {
					return err
				}
			}
		}
	}
}

// matchNetns reports whether the namespace inode is the one --events.netns
// names, by inode number or by name.
func matchNetns(r *netns.Resolver, inode uint32, want string) bool {
	if strconv.FormatUint(uint64(inode), 10) == want {
		return true
	}
	id, ok := r.Lookup(inode)
	return ok && id.Name == want
}

func toJSONEvent(ev tracer.Event, id netns.Identity) jsonEvent {
	j := jsonEvent{
		Time:         ev.Time,
		Type:         ev.Type.String(),
		NetNS:        ev.NetNS,
		NetNSName:    id.Name,
		Host:         id.Host,
		Pod:          id.Pod,
		PodNamespace: id.PodNamespace,
		PodLabels:    id.PodLabels,
		Container:    id.ContainerID,
		PID:          id.PID,
		Comm:         id.Comm,
		Family:       tracer.FamilyName(ev.Family),
		Protocol:     tracer.ProtocolName(ev.Protocol),
		Original:     toJSONTuple(ev.Original, ev.Protocol),
		Zone:         ev.Zone,
		Mark:         ev.Mark,
		Status:       statusNames(ev.Status),
		Cookie:       ev.Cookie,
	}
	if ev.Reply.Src.IsValid() {
		rt := toJSONTuple(ev.Reply, ev.Protocol)
		j.Reply = &rt
	}
	if ev.Protocol == unix.IPPROTO_TCP {
		j.TCPState = tcpStateName(ev.TCPState)
	}
	if ev.LifetimeKnown {
		s := ev.Lifetime.Seconds()
		j.Lifetime = &s
	}
	if ev.Type == tracer.EventFailed {
		j.Reason, j.Error = ev.Reason.String(), ev.Error
	}
	return j
}

func toJSONTuple(t tracer.Tuple, proto uint8) jsonTuple {
	j := jsonTuple{Src: addrString(t.Src), Dst: addrString(t.Dst)}
	if proto == unix.IPPROTO_ICMP || proto == unix.IPPROTO_ICMPV6 {
		id, typ, code := int(t.SrcPort), int(t.ICMPType()), int(t.ICMPCode())
		j.ICMPID, j.ICMPType, j.ICMPCode = &id, &typ, &code
		return j
	}
	j.SrcPort, j.DstPort = t.SrcPort, t.DstPort
	return j
}

func addrString(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// tcpStateNames are enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
var tcpStateNames = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
	"CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func tcpStateName(s uint8) string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return strconv.Itoa(int(s))
}

// statusBits are enum ip_conntrack_status (include/uapi/linux/netfilter/nf_conntrack_common.h).
var statusBits = []string{"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
	"SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE",
	"NAT_CLASH", "HELPER", "OFFLOAD", "HW_OFFLOAD"}

func statusNames(s uint32) []string {
	var out []string
	for i, n := range statusBits {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if rest := s &^ (1<<len(statusBits) - 1); rest != 0 {
		out = append(out, "0x"+strconv.FormatUint(uint64(rest), 16))
	}
	return out
}
