// Package topui is the interactive view of ctagent top: the namespaces of a
// running daemon with the fullest conntrack tables, refreshed, sortable and
// filterable, and the drill-down of one of them (what fills its table). It
// is a bubbletea model; cmd/ctagent runs it when stdout is a terminal.
package topui

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"

	"github.com/ctagent/ctagent/pkg/api"
)

// Sorts are the columns the view sorts by (descending), in the order of
// the keys 1 to 5 and of s, which cycles through them: api.TopSorts. The
// view sorts created and destroyed by their rates.
var Sorts = api.TopSorts

// Options configure a Model.
type Options struct {
	Client   *api.Client
	Server   string        // shown in the title
	Interval time.Duration // between refreshes
	Sort     string        // one of Sorts; "" is entries
	Limit    int           // destinations in the drill-down
	// NetNS opens the drill-down of this namespace (inode or name) first.
	NetNS string
}

// Model is the state of the view. Its zero value is not usable: see New.
type Model struct {
	opt           Options
	ctx           context.Context
	width, height int

	sort      int
	data      *api.NamespacesResponse
	fetched   time.Time
	rates     map[uint32]rate // per-second rates from the last two snapshots
	prev      map[uint32]api.Namespace
	err       error
	filter    string
	filtering bool   // typing the filter
	cursor    int    // index into rows()
	offset    int    // first row shown
	selected  uint32 // the netns under the cursor, kept across refreshes

	drill      bool   // showing the drill-down
	drillNetns string // its namespace
	top        *api.NamespaceTopResponse
}

type rate struct{ created, destroyed float64 }

// namespacesMsg is the answer of a refresh of the table.
type namespacesMsg struct {
	r   *api.NamespacesResponse
	err error
	at  time.Time
}

// topMsg is the answer of a drill-down request.
type topMsg struct {
	netns string
	r     *api.NamespaceTopResponse
	err   error
}

// TickMsg asks for a refresh; the model schedules the next one when the
// answer arrives, so a slow daemon gets one request at a time.
type TickMsg struct{}

// New returns the model; ctx bounds its requests.
func New(ctx context.Context, opt Options) *Model {
	if opt.Interval <= 0 {
		opt.Interval = 2 * time.Second
	}
	if opt.Limit <= 0 {
		opt.Limit = api.DefaultTopLimit
	}
	m := &Model{opt: opt, ctx: ctx, width: 80, height: 24, rates: map[uint32]rate{}}
	if i := slices.Index(Sorts, opt.Sort); i >= 0 {
		m.sort = i
	}
	if opt.NetNS != "" {
		m.drill, m.drillNetns = true, opt.NetNS
	}
	return m
}

// Init fetches the first data.
func (m *Model) Init() tea.Cmd { return m.fetch() }

// fetch is the request of what is shown: the table or the drill-down.
func (m *Model) fetch() tea.Cmd {
	c, ctx := m.opt.Client, m.ctx
	if m.drill {
		netns, limit := m.drillNetns, m.opt.Limit
		return func() tea.Msg {
			r, err := c.NamespaceTop(ctx, netns, limit)
			return topMsg{netns: netns, r: r, err: err}
		}
	}
	return func() tea.Msg {
		r, err := c.Namespaces(ctx)
		return namespacesMsg{r: r, err: err, at: time.Now()}
	}
}

func (m *Model) tick() tea.Cmd {
	return tea.Tick(m.opt.Interval, func(time.Time) tea.Msg { return TickMsg{} })
}

// Update handles keys, the window size and the answers of the daemon.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.clampCursor()
	case TickMsg:
		return m, m.fetch()
	case namespacesMsg:
		m.err = msg.err
		if msg.err == nil {
			m.setData(msg.r, msg.at)
		}
		if !m.drill {
			return m, m.tick()
		}
	case topMsg:
		if m.drill && msg.netns == m.drillNetns {
			m.err = msg.err
			if msg.err == nil {
				m.top = msg.r
			}
			return m, m.tick()
		}
	case tea.KeyMsg:
		return m, m.key(msg)
	}
	return m, nil
}

// setData takes a new snapshot and computes the rates since the last one.
func (m *Model) setData(r *api.NamespacesResponse, at time.Time) {
	if m.data != nil {
		if dt := at.Sub(m.fetched).Seconds(); dt > 0 {
			rates := map[uint32]rate{}
			for _, n := range r.Namespaces {
				if p, ok := m.prev[n.NetNS]; ok && n.Created >= p.Created && n.Destroyed >= p.Destroyed {
					rates[n.NetNS] = rate{float64(n.Created-p.Created) / dt, float64(n.Destroyed-p.Destroyed) / dt}
				}
			}
			m.rates = rates
		}
	}
	m.data, m.fetched = r, at
	m.prev = map[uint32]api.Namespace{}
	for _, n := range r.Namespaces {
		m.prev[n.NetNS] = n
	}
	m.keepSelected()
}

func (m *Model) key(k tea.KeyMsg) tea.Cmd {
	if k.Type == tea.KeyCtrlC {
		return tea.Quit
	}
	if m.filtering {
		switch k.Type {
		case tea.KeyEnter:
			m.filtering = false
		case tea.KeyEsc:
			m.filtering, m.filter = false, ""
		case tea.KeyBackspace:
			if r := []rune(m.filter); len(r) > 0 {
				m.filter = string(r[:len(r)-1])
			}
		case tea.KeyRunes, tea.KeySpace:
			m.filter += string(k.Runes)
		}
		m.keepSelected()
		return nil
	}
	switch k.String() {
	case "q":
		return tea.Quit
	case "esc":
		if m.drill {
			m.drill, m.top, m.err = false, nil, nil
			return m.fetch()
		}
		m.filter = ""
		m.keepSelected()
		return nil
	}
	if m.drill {
		return nil
	}
	switch s := k.String(); s {
	case "up", "k":
		m.cursor--
	case "down", "j":
		m.cursor++
	case "pgup":
		m.cursor -= m.pageRows()
	case "pgdown":
		m.cursor += m.pageRows()
	case "home":
		m.cursor = 0
	case "end":
		m.cursor = len(m.rows()) - 1
	case "s":
		m.sort = (m.sort + 1) % len(Sorts)
		m.keepSelected()
		return nil
	case "1", "2", "3", "4", "5":
		m.sort = int(s[0] - '1')
		m.keepSelected()
		return nil
	case "/":
		m.filtering = true
	case "enter":
		rows := m.rows()
		if m.cursor < 0 || m.cursor >= len(rows) {
			return nil
		}
		m.drill, m.drillNetns, m.top, m.err = true, strconv.FormatUint(uint64(rows[m.cursor].NetNS), 10), nil, nil
		return m.fetch()
	}
	m.clampCursor()
	return nil
}

// keepSelected moves the cursor to the selected namespace after a
// refresh, a re-sort or a new filter: the rows move, the cursor stays on
// its namespace (or on the first row when it is gone).
func (m *Model) keepSelected() {
	m.cursor = max(0, slices.IndexFunc(m.rows(), func(n api.Namespace) bool { return n.NetNS == m.selected }))
	m.clampCursor()
}

// clampCursor keeps the cursor on a row and in view, and remembers its
// namespace.
func (m *Model) clampCursor() {
	rows := m.rows()
	m.cursor = max(0, min(m.cursor, len(rows)-1))
	if m.cursor < m.offset {
		m.offset = m.cursor
	}
	if page := m.pageRows(); m.cursor >= m.offset+page {
		m.offset = m.cursor - page + 1
	}
	m.offset = max(0, min(m.offset, len(rows)-1))
	if m.cursor < len(rows) {
		m.selected = rows[m.cursor].NetNS
	}
}

// pageRows is how many table rows fit: the height without the title,
// the column header, the status line and the footer.
func (m *Model) pageRows() int { return max(1, m.height-4) }

// sortKey is the value of n in the sort column.
func (m *Model) sortKey(n api.Namespace) float64 {
	switch Sorts[m.sort] {
	case "created":
		if r, ok := m.rates[n.NetNS]; ok {
			return r.created
		}
		return 0
	case "destroyed":
		if r, ok := m.rates[n.NetNS]; ok {
			return r.destroyed
		}
		return 0
	case "failed":
		return float64(n.Failed)
	case "drops":
		if n.Drops != nil {
			return float64(*n.Drops)
		}
		return 0
	}
	if n.Entries != nil {
		return float64(*n.Entries)
	}
	return -1
}

// rows are the namespaces that pass the filter, sorted.
func (m *Model) rows() []api.Namespace {
	if m.data == nil {
		return nil
	}
	f := strings.ToLower(m.filter)
	var out []api.Namespace
	for _, n := range m.data.Namespaces {
		if f == "" || matches(n, f) {
			out = append(out, n)
		}
	}
	slices.SortStableFunc(out, func(a, b api.Namespace) int {
		return cmp.Or(cmp.Compare(m.sortKey(b), m.sortKey(a)), cmp.Compare(a.NetNS, b.NetNS))
	})
	return out
}

// matches reports whether the lower-case text f is in n's inode, owner,
// netns name, pod, container or command.
func matches(n api.Namespace, f string) bool {
	for _, s := range []string{strconv.FormatUint(uint64(n.NetNS), 10), api.Owner(n), n.NetNSName, n.Pod, n.PodNamespace, n.Container, n.Comm} {
		if s != "" && strings.Contains(strings.ToLower(s), f) {
			return true
		}
	}
	return false
}

// reverse shows the selected row in reverse video (SGR 7): a plain escape,
// not a lipgloss style, whose renderer asks the terminal for its colours
// first and waits for an answer that some terminals never send.
func reverse(s string) string { return ansi.SGR(ansi.ReverseAttr) + s + ansi.ResetStyle }

// View draws the screen: no line is wider than the window, and it has at
// most its height of lines.
func (m *Model) View() string {
	var lines []string
	if m.drill {
		lines = m.drillView()
	} else {
		lines = m.tableView()
	}
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, m.width, "")
	}
	return strings.Join(lines, "\n")
}

// The columns: the owner takes what the others leave.
const (
	rowFormat   = "%s%-10s %-*s %7s %6s %7s %7s %6s %6s"
	fixedWidth  = 1 + 10 + 1 + 1 + 7 + 1 + 6 + 1 + 7 + 1 + 7 + 1 + 6 + 1 + 6
	minOwnerCol = 8
)

func (m *Model) tableView() []string {
	title := "ctagent top " + m.opt.Server
	rows := m.rows()
	if m.data != nil {
		limit := "?"
		if m.data.Limit > 0 {
			limit = strconv.FormatUint(m.data.Limit, 10)
		}
		title = fmt.Sprintf("%s  %d/%d netns  limit %s  sort %s", title, len(rows), len(m.data.Namespaces), limit, Sorts[m.sort])
	}
	owner := max(minOwnerCol, m.width-fixedWidth)
	header := fmt.Sprintf(rowFormat, " ", "NETNS", owner, "OWNER", "ENTRIES", "FILL", "NEW/s", "DEL/s", "FAILED", "DROPS")
	lines := []string{title, header}
	end := min(len(rows), m.offset+m.pageRows())
	for i := m.offset; i < end; i++ {
		n := rows[i]
		mark := " "
		if i == m.cursor {
			mark = ">"
		}
		entries, fill, created, destroyed, drops := "-", "-", "-", "-", "-"
		if n.Entries != nil {
			entries = api.Count(float64(max(*n.Entries, 0)), 7)
		}
		if n.FillRatio != nil {
			fill = strconv.FormatFloat(*n.FillRatio*100, 'f', 1, 64) + "%"
		}
		if r, ok := m.rates[n.NetNS]; ok {
			created, destroyed = api.Count(r.created, 7), api.Count(r.destroyed, 7)
		}
		if n.Drops != nil {
			drops = api.Count(float64(*n.Drops), 6)
		}
		line := fmt.Sprintf(rowFormat, mark, strconv.FormatUint(uint64(n.NetNS), 10), owner, clip(api.Owner(n), owner),
			entries, fill, created, destroyed, api.Count(float64(n.Failed), 6), drops)
		if i == m.cursor {
			line = reverse(ansi.Truncate(line, m.width, ""))
		}
		lines = append(lines, line)
	}
	for len(lines) < m.height-2 {
		lines = append(lines, "")
	}
	lines = append(lines, m.status(), m.footer())
	return lines
}

func (m *Model) drillView() []string {
	title := "ctagent top " + m.opt.Server + "  netns " + m.drillNetns
	lines := []string{title}
	if m.top != nil {
		body := api.FormatNamespaceTop(m.top)
		lines = append(lines, body...)
	} else if m.err == nil {
		lines = append(lines, "dumping the table...")
	}
	if len(lines) > m.height-2 {
		lines = lines[:max(1, m.height-2)]
	}
	for len(lines) < m.height-2 {
		lines = append(lines, "")
	}
	return append(lines, m.status(), m.footer())
}

// status is the filter being typed, or the last error.
func (m *Model) status() string {
	switch {
	case m.filtering:
		return "filter: " + m.filter + "_"
	case m.err != nil:
		return "error: " + m.err.Error()
	case m.filter != "":
		return "filter: " + m.filter + " (esc clears)"
	}
	return ""
}

func (m *Model) footer() string {
	if m.drill {
		return "esc back  q quit  refresh " + m.opt.Interval.String()
	}
	if m.filtering {
		return "type to filter  enter done  esc clear"
	}
	return "up/down select  enter detail  / filter  s or 1-5 sort  q quit"
}

// clip shortens s to width cells, ending in "~" when cut.
func clip(s string, width int) string {
	if ansi.StringWidth(s) <= width {
		return s
	}
	return ansi.Truncate(s, width, "~")
}

// Run shows the view on the terminal until q, ctrl-c or ctx ends. The
// caller's ctx carries SIGINT and SIGTERM: bubbletea's own handler of
// them is off, since with both a signal can deadlock its shutdown (its
// handler sends to the event loop that ctx already ended; bubbletea
// v1.3.10, tea.go handleSignals).
func Run(ctx context.Context, opt Options) error {
	p := tea.NewProgram(New(ctx, opt), tea.WithAltScreen(), tea.WithContext(ctx), tea.WithoutSignalHandler())
	_, err := p.Run()
	if ctx.Err() != nil {
		return nil // interrupted
	}
	return err
}
