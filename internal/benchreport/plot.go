package main

import (
	"fmt"
	"math"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/ctagent/ctagent/internal/sidebench"
)

// WritePlot draws two panels side by side into a PNG file at path: agent
// CPU seconds per 1M events, and events lost (%), each against the event
// rate reached, one line per configuration (all workload modes together,
// see Points), the rate on a log scale. The runs without an agent are left
// out.
func WritePlot(path string, rep sidebench.Report) error {
	cpu, loss := plot.New(), plot.New()
	cpu.Title.Text = "agent + consumer CPU per 1M events"
	cpu.Y.Label.Text = "CPU seconds"
	loss.Title.Text = fmt.Sprintf("events lost (%s, %s)", rep.Kernel, rep.Release)
	loss.Y.Label.Text = "% of events"
	for _, p := range []*plot.Plot{cpu, loss} {
		p.X.Label.Text = "events/s reached (log scale)"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = logTicks{}
		p.Add(plotter.NewGrid())
	}
	cpu.Y.Min = 0
	// One legend, in the loss plot's empty top right: the lines are in
	// the same order and colours in both.
	loss.Legend.Top = true
	loss.Y.Min, loss.Y.Max = 0, 1
	var cpuLines, lossLines []any
	var configs []string
	series := map[string][2]plotter.XYs{}
	for _, pt := range Points(rep) {
		if noAgent(pt.Config) {
			continue
		}
		s, ok := series[pt.Config]
		if !ok {
			configs = append(configs, pt.Config)
		}
		s[0] = append(s[0], plotter.XY{X: pt.Rate, Y: pt.CPUPer1M})
		s[1] = append(s[1], plotter.XY{X: pt.Rate, Y: pt.LostPct})
		series[pt.Config] = s
		loss.Y.Max = max(loss.Y.Max, pt.LostPct*1.1)
	}
	if len(configs) == 0 {
		return fmt.Errorf("no configuration with an agent")
	}
	for _, c := range configs {
		cpuLines = append(cpuLines, c, series[c][0])
		lossLines = append(lossLines, c, series[c][1])
	}
	if err := plotutil.AddLinePoints(cpu, cpuLines...); err != nil {
		return err
	}
	if err := plotutil.AddLinePoints(loss, lossLines...); err != nil {
		return err
	}
	cpu.Legend = plot.NewLegend()
	img := vgimg.New(28*vg.Centimeter, 12*vg.Centimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	plots := [][]*plot.Plot{{cpu, loss}}
	canvases := plot.Align(plots, tiles, dc)
	cpu.Draw(canvases[0][0])
	loss.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// logTicks marks 1, 2 and 5 times the powers of ten in the range, labelled
// where the range holds few of them.
type logTicks struct{}

// Ticks implements plot.Ticker.
func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for p := math.Pow(10, math.Floor(math.Log10(lo))); p <= hi; p *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := m * p; v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
			}
		}
	}
	return ticks
}
