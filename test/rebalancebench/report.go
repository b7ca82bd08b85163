package rebalancebench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/switchyard/switchyard/test/connfleet"
)

// Phase is one phase's measurements.
type Phase struct {
	Name     string // "off", "on"
	Clients  int
	Backends []string // every backend, in the samples' order
	From, To int      // backends before and after the scale-up
	// Tolerance is the balance target: max/mean <= 1+Tolerance.
	Tolerance float64
	// ScaledAt is when the scaled-up Service was written; Window how long
	// the phase watched after it.
	ScaledAt time.Time
	Window   time.Duration
	Samples  []connfleet.Sample
	// Before are the counts just before the scale-up.
	Before []int
	// ClientResets: connections the clients lost after the scale-up;
	// AgentResets: the agent's switchyard_rebalance_resets_total for the
	// Service (all mechanisms) over the phase.
	ClientResets int64
	AgentResets  float64
	Errs         map[string]int
	Failed, Bad  int
	Answered     int64
	// CPU is the agent's CPU time over the window.
	CPU time.Duration
}

// Settled is how long after the scale-up max/mean <= 1+Tolerance held for
// good (see connfleet.SettledAt), and whether it did.
func (p *Phase) Settled() (time.Duration, bool) {
	var after []connfleet.Sample
	for _, s := range p.Samples {
		if !s.At.Before(p.ScaledAt) {
			after = append(after, s)
		}
	}
	at, ok := connfleet.SettledAt(after, p.Tolerance)
	if !ok {
		return 0, false
	}
	return at.Sub(p.ScaledAt), true
}

// FinalRatio is max/mean of the last sample.
func (p *Phase) FinalRatio() float64 {
	if len(p.Samples) == 0 {
		return 0
	}
	return connfleet.Imbalance(p.Samples[len(p.Samples)-1].Counts)
}

// Minimum is the fewest resets for an exactly even spread; MinimumTol for
// max/mean <= 1+Tolerance.
func (p *Phase) Minimum() int    { return connfleet.MinimumResets(p.Before, 0) }
func (p *Phase) MinimumTol() int { return connfleet.MinimumResets(p.Before, p.Tolerance) }

// CPUPercent is the agent's CPU over the window in % of one core.
func (p *Phase) CPUPercent() float64 {
	if p.Window <= 0 {
		return 0
	}
	return 100 * p.CPU.Seconds() / p.Window.Seconds()
}

// Targets of the issue, for the "on" phase.
const (
	TargetBalance     = 10 * time.Second
	TargetResetsRatio = 1.05
)

// WriteTable prints the phases as a (markdown) table, then each phase's
// minimums and error tally, and the targets for the phase "on".
func WriteTable(w io.Writer, phases []*Phase) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "| phase\t| conns\t| backends\t| time to max/mean <= 1.10\t| max/mean at end\t| resets (agent)\t| resets (clients)\t| minimum\t| resets/minimum\t| failed requests\t| agent CPU\t|")
	fmt.Fprintln(tw, "|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|---\t|")
	for _, p := range phases {
		settle := fmt.Sprintf("never (%s watched)", p.Window.Round(time.Second))
		if d, ok := p.Settled(); ok {
			settle = fmt.Sprintf("%.1f s", d.Seconds())
		}
		ratio := "-"
		if m := p.Minimum(); m > 0 {
			ratio = fmt.Sprintf("%.2f", p.AgentResets/float64(m))
		}
		fmt.Fprintf(tw, "| %s\t| %d\t| %d -> %d\t| %s\t| %.2f\t| %.0f\t| %d\t| %d\t| %s\t| %d\t| %.1f%%\t|\n",
			p.Name, p.Clients, p.From, p.To, settle, p.FinalRatio(), p.AgentResets, p.ClientResets,
			p.Minimum(), ratio, p.Failed+p.Bad, p.CPUPercent())
	}
	tw.Flush()
	for _, p := range phases {
		fmt.Fprintf(w, "%s: before the scale-up %v; minimum resets %d for an even spread, %d for max/mean <= %.2f; %d requests answered; client errors %v\n",
			p.Name, p.Before, p.Minimum(), p.MinimumTol(), 1+p.Tolerance, p.Answered, p.Errs)
	}
	for _, p := range phases {
		if p.Name != "on" {
			continue
		}
		d, ok := p.Settled()
		check := func(met bool) string {
			if met {
				return "met"
			}
			return "NOT met"
		}
		fmt.Fprintf(w, "targets (on): balanced within %v: %s; resets <= %.2f x minimum (%.0f): %s (%.0f); 0 failed requests: %s (%d)\n",
			TargetBalance, check(ok && d <= TargetBalance),
			TargetResetsRatio, TargetResetsRatio*float64(p.Minimum()), check(p.AgentResets <= TargetResetsRatio*float64(p.Minimum())), p.AgentResets,
			check(p.Failed+p.Bad == 0), p.Failed+p.Bad)
	}
}

// WritePlot writes a PNG of the connections per backend over time, one
// panel per phase, time 0 the scale-up; dashed lines mark the balance
// limit ((1+tol) x mean) and, where there is one, when it was reached for
// good.
func WritePlot(path string, phases []*Phase) error {
	rows := make([][]*plot.Plot, len(phases))
	xmin, xmax := 0.0, 0.0
	for i, ph := range phases {
		p, err := phasePlot(ph)
		if err != nil {
			return fmt.Errorf("plot %s: %w", ph.Name, err)
		}
		rows[i] = []*plot.Plot{p}
		xmin, xmax = min(xmin, p.X.Min), max(xmax, p.X.Max)
	}
	for _, r := range rows { // one time axis for all panels, a tick every 5 s
		r[0].X.Min, r[0].X.Max = xmin, xmax
		r[0].X.Tick.Marker = secondTicks{}
	}
	img := vgimg.New(vg.Points(720), vg.Points(300*float64(len(phases))))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(phases), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align(rows, tiles, dc)
	for i := range rows {
		rows[i][0].Draw(canvases[i][0])
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
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

func phasePlot(ph *Phase) (*plot.Plot, error) {
	p := plot.New()
	title := fmt.Sprintf("rebalancing %s: %d connections, %d -> %d backends", ph.Name, ph.Clients, ph.From, ph.To)
	if d, ok := ph.Settled(); ok {
		title += fmt.Sprintf(", max/mean <= %.2f from %.1f s", 1+ph.Tolerance, d.Seconds())
	} else {
		title += fmt.Sprintf(", max/mean %.2f at the end", ph.FinalRatio())
	}
	p.Title.Text = title
	p.X.Label.Text = "seconds since the scale-up"
	p.Y.Label.Text = "connections"
	p.Y.Min = 0
	p.Legend.Top = true
	ymax := 0.0
	for i, be := range ph.Backends {
		xys := make(plotter.XYs, 0, len(ph.Samples))
		for _, s := range ph.Samples {
			xys = append(xys, plotter.XY{X: s.At.Sub(ph.ScaledAt).Seconds(), Y: float64(s.Counts[i])})
			ymax = max(ymax, float64(s.Counts[i]))
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(be, l)
	}
	if len(ph.Samples) == 0 {
		return p, nil
	}
	first, last := ph.Samples[0].At.Sub(ph.ScaledAt).Seconds(), ph.Samples[len(ph.Samples)-1].At.Sub(ph.ScaledAt).Seconds()
	limit := (1 + ph.Tolerance) * float64(ph.Clients) / float64(ph.To)
	if err := hline(p, first, last, limit, fmt.Sprintf("%.2f x mean on %d", 1+ph.Tolerance, ph.To)); err != nil {
		return nil, err
	}
	// Room above the lines for the legend.
	p.Y.Max = 1.4 * max(ymax, limit)
	vlines := []float64{0}
	if d, ok := ph.Settled(); ok {
		vlines = append(vlines, d.Seconds())
	}
	for _, x := range vlines {
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: max(ymax, limit) * 1.05}})
		if err != nil {
			return nil, err
		}
		l.Color = color.Gray{Y: 120}
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(3)}
		p.Add(l)
	}
	return p, nil
}

func hline(p *plot.Plot, x0, x1, y float64, label string) error {
	l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: y}, {X: x1, Y: y}})
	if err != nil {
		return err
	}
	l.Color = color.Black
	l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	p.Add(l)
	p.Legend.Add(strings.TrimSpace(label), l)
	return nil
}

// secondTicks marks every second, labelled every 5.
type secondTicks struct{}

func (secondTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for s := math.Ceil(lo); s <= hi && len(ts) < 1000; s++ {
		t := plot.Tick{Value: s}
		if int(s)%5 == 0 {
			t.Label = strconv.Itoa(int(s))
		}
		ts = append(ts, t)
	}
	return ts
}
