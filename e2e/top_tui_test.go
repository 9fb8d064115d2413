package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/topui"
	"github.com/ctagent/ctagent/pkg/api"
)

// The interactive ctagent top, driven with the messages a terminal of
// 80x24 sends, against a real daemon and real namespaces: the rows are
// there sorted by entries, s sorts by the creation rate, / filters, enter
// shows the drill-down with the real destination, esc goes back, q and
// ctrl-c quit, and no line is wider than 80 columns.
func TestTopInteractive(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	big, small := addNetns(t), addNetns(t)
	lines := make([]string, 50)
	for i := range lines {
		lines[i] = fmt.Sprintf("-I -s 10.9.0.%d -d 192.0.2.2 -p udp --sport %d --dport 53 -t 600", i+1, 1000+i)
	}
	big.CTLoad(lines)
	insert(t, small, "tcp", 24000)
	lab := newDrillDownLab(t)

	d := startDaemon(t, "--tracer.backend=netlink", "--netns.rescan-interval=1s")
	d.waitReady(30 * time.Second)
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	client, err := api.NewClient("http://"+d.addr, hc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := topui.New(ctx, topui.Options{Client: client, Server: "127.0.0.1:10371", Interval: 2 * time.Second})

	// update hands msg to the model and returns its command, unrun (the
	// timer of the next refresh, a request to the daemon, or quit).
	update := func(msg tea.Msg) tea.Cmd {
		t.Helper()
		_, cmd := m.Update(msg)
		return cmd
	}
	// refresh does what the timer does: ask the daemon, show the answer.
	refresh := func() {
		t.Helper()
		cmd := update(topui.TickMsg{})
		if cmd == nil {
			t.Fatal("no request on a tick")
		}
		update(cmd())
	}
	view := func() string {
		t.Helper()
		v := m.View()
		ls := strings.Split(v, "\n")
		if len(ls) > 24 {
			t.Errorf("%d lines, more than 24:\n%s", len(ls), v)
		}
		for _, l := range ls {
			if w := ansi.StringWidth(l); w > 80 {
				t.Errorf("line %d columns wide: %q", w, l)
			}
		}
		return ansi.Strip(v)
	}
	key := func(s string) tea.Cmd {
		t.Helper()
		switch s {
		case "enter":
			return update(tea.KeyMsg{Type: tea.KeyEnter})
		case "esc":
			return update(tea.KeyMsg{Type: tea.KeyEsc})
		case "down":
			return update(tea.KeyMsg{Type: tea.KeyDown})
		case "ctrl+c":
			return update(tea.KeyMsg{Type: tea.KeyCtrlC})
		}
		return update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)})
	}
	row := func(ns *labnet.NS) string { return fmt.Sprintf("%d %-23s ", ns.Inode, ns.Name) }
	// index is the line of v that shows ns, -1 if none.
	index := func(v string, ns *labnet.NS) int {
		for i, l := range strings.Split(v, "\n") {
			if strings.HasPrefix(l[min(1, len(l)):], row(ns)) {
				return i
			}
		}
		return -1
	}

	update(tea.WindowSizeMsg{Width: 80, Height: 24})
	update(m.Init()())
	var v string
	labnet.Eventually(t, 20*time.Second, func() error {
		refresh()
		v = view()
		for _, ns := range []*labnet.NS{big, small, lab.client} {
			want := fmt.Sprintf("%s%7d ", row(ns), count(ns))
			if !strings.Contains(v, want) {
				return fmt.Errorf("no row %q in\n%s", want, v)
			}
		}
		return nil
	})
	t.Logf("ctagent top, 80x24:\n%s", v)
	if os.Getenv("CTAGENT_TOP_CAPTURE") != "" {
		os.WriteFile(os.Getenv("CTAGENT_TOP_CAPTURE"), []byte(v+"\n"), 0o644)
	}
	if !strings.Contains(v, "up/down select  enter detail  / filter  s or 1-5 sort  q quit") || !strings.Contains(v, "sort entries") {
		t.Errorf("no footer of keys or no sort in the title:\n%s", v)
	}
	if index(v, big) < 0 || index(v, big) > index(v, lab.client) || index(v, lab.client) > index(v, small) {
		t.Errorf("not sorted by entries (%s 50, %s 5, %s 1):\n%s", big.Name, lab.client.Name, small.Name, v)
	}

	// s: sorted by created/s; entries made in small now put it above big.
	key("s")
	for i := range 30 {
		insert(t, small, "udp", 24100+i)
	}
	labnet.Eventually(t, 20*time.Second, func() error {
		refresh()
		v = view()
		if !strings.Contains(v, "sort created") || index(v, small) < 0 || index(v, small) > index(v, big) {
			return fmt.Errorf("%s (30 new entries) not above %s after s:\n%s", small.Name, big.Name, v)
		}
		return nil
	})
	t.Logf("sorted by created/s:\n%s", v)
	key("1")
	if v = view(); !strings.Contains(v, "sort entries") || index(v, big) > index(v, small) {
		t.Errorf("1 does not sort by entries again:\n%s", v)
	}

	// /: filter by name.
	key("/")
	for _, r := range lab.client.Name {
		key(string(r))
	}
	key("enter")
	v = view()
	if index(v, lab.client) < 0 || index(v, big) >= 0 || index(v, small) >= 0 || !strings.Contains(v, "filter: "+lab.client.Name) {
		t.Errorf("filter %q shows other rows or not its own:\n%s", lab.client.Name, v)
	}

	// enter: the drill-down of the selected namespace.
	cmd := key("enter")
	if cmd == nil {
		t.Fatal("enter asks nothing of the daemon")
	}
	update(cmd())
	v = view()
	t.Logf("drill-down, 80x24:\n%s", v)
	if os.Getenv("CTAGENT_TOP_CAPTURE") != "" {
		os.WriteFile(os.Getenv("CTAGENT_TOP_CAPTURE")+".drill", []byte(v+"\n"), 0o644)
	}
	for _, want := range []string{
		fmt.Sprintf("netns %d %s: %d entries", lab.client.Inode, lab.client.Name, count(lab.client)),
		fmt.Sprintf("%-39s tcp       8080         3 ", lab.dst),
		fmt.Sprintf("%-39s udp       5353         2 ", lab.dst),
		"tcp      ESTABLISHED           3 ",
		"esc back  q quit",
	} {
		if !strings.Contains(v, want) {
			t.Errorf("drill-down has no %q:\n%s", want, v)
		}
	}
	// A refresh there asks for the drill-down again.
	refresh()
	if v2 := view(); !strings.Contains(v2, fmt.Sprintf("%-39s tcp       8080         3 ", lab.dst)) {
		t.Errorf("drill-down after a refresh:\n%s", v2)
	}

	// esc: back to the table, still filtered; esc again clears the filter.
	if cmd := key("esc"); cmd != nil {
		update(cmd())
	}
	v = view()
	if !strings.Contains(v, "NETNS") || index(v, lab.client) < 0 || index(v, big) >= 0 {
		t.Errorf("esc does not go back to the filtered table:\n%s", v)
	}
	key("esc")
	if v = view(); index(v, big) < 0 || index(v, small) < 0 {
		t.Errorf("esc does not clear the filter:\n%s", v)
	}

	// A smaller terminal: still no line wider than it.
	update(tea.WindowSizeMsg{Width: 60, Height: 10})
	for _, l := range strings.Split(m.View(), "\n") {
		if w := ansi.StringWidth(l); w > 60 {
			t.Errorf("60x10: line %d columns wide: %q", w, l)
		}
	}
	if n := strings.Count(m.View(), "\n") + 1; n > 10 {
		t.Errorf("60x10: %d lines", n)
	}

	for _, k := range []string{"q", "ctrl+c"} {
		cmd := key(k)
		if cmd == nil {
			t.Fatalf("%s: no command", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%s does not quit", k)
		}
	}
}
