package scalebench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Scale is one scale's measurements.
type Scale struct {
	Services, Endpoints int
	// Create is how long writing the Services and EndpointSlices added at
	// this scale took (Created of them), not compared.
	Create  time.Duration
	Created int
	// Idle and Churn are the CPU windows; ChurnChanges how many endpoint
	// changes the churn wrote in its window.
	Idle, Churn  time.Duration
	ChurnChanges int
	// Proxies, switchyard first when it ran.
	Proxies []*Proxy
}

// Proxy is one proxy's measurements at one scale.
type Proxy struct {
	Name string
	// Cold is process start to the last Service's endpoints in the
	// kernel; Healthz to /healthz 200 (cross-check; 0: not seen).
	Cold, Healthz time.Duration
	// Latencies of the single changes seen; Missed those not seen in the
	// deadline.
	Latencies []time.Duration
	Missed    int
	// RSS after the cold sync (settled), at the end, and the peak
	// (VmHWM).
	RSSSynced, RSSEnd, RSSPeak uint64
	// CPU over the idle and churn windows.
	CPUIdle, CPUChurn time.Duration
	// CatchUp: churn end to the last churn change in the kernel.
	CatchUp time.Duration
	Err     string
}

// Percentile is the nearest-rank percentile q (0-1] of the latencies.
func (p *Proxy) Percentile(q float64) time.Duration {
	if len(p.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(p.Latencies)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Targets against kube-proxy in nftables mode (the project's goals).
const (
	TargetLatency = 0.2
	TargetCold    = 0.5
	TargetRSS     = 0.5
)

func (s *Scale) proxy(name string) *Proxy {
	for _, p := range s.Proxies {
		if p.Name == name {
			return p
		}
	}
	return nil
}

type row struct {
	name   string
	value  func(*Proxy) float64 // NaN: not measured
	format func(float64) string
	target float64 // ratio to kube-proxy nftables, 0: none
}

func secs(v float64) string { return fmt.Sprintf("%.2f s", v) }
func ms(v float64) string   { return fmt.Sprintf("%.1f ms", v) }
func mib(v float64) string  { return fmt.Sprintf("%.0f MiB", v) }
func pct(v float64) string  { return fmt.Sprintf("%.1f %%", v) }

func (s *Scale) rows() []row {
	dur := func(d time.Duration) float64 { return d.Seconds() }
	nan := math.NaN()
	cpu := func(d, w time.Duration) float64 {
		if w <= 0 {
			return nan
		}
		return 100 * d.Seconds() / w.Seconds()
	}
	return []row{
		{"cold full sync (kernel)", func(p *Proxy) float64 { return dur(p.Cold) }, secs, TargetCold},
		{"cold: /healthz 200 (cross-check)", func(p *Proxy) float64 {
			if p.Healthz == 0 {
				return nan
			}
			return dur(p.Healthz)
		}, secs, 0},
		{"change → kernel p50", func(p *Proxy) float64 { return 1000 * dur(p.Percentile(0.5)) }, ms, TargetLatency},
		{"change → kernel p99", func(p *Proxy) float64 { return 1000 * dur(p.Percentile(0.99)) }, ms, TargetLatency},
		{"RSS after cold sync", func(p *Proxy) float64 { return float64(p.RSSSynced) / (1 << 20) }, mib, TargetRSS},
		{"RSS at end", func(p *Proxy) float64 { return float64(p.RSSEnd) / (1 << 20) }, mib, TargetRSS},
		{"RSS peak (VmHWM)", func(p *Proxy) float64 { return float64(p.RSSPeak) / (1 << 20) }, mib, 0},
		{"CPU idle", func(p *Proxy) float64 { return cpu(p.CPUIdle, s.Idle) }, pct, 0},
		{fmt.Sprintf("CPU churn (%.0f changes/s)", float64(s.ChurnChanges)/max(s.Churn.Seconds(), 1e-9)), func(p *Proxy) float64 { return cpu(p.CPUChurn, s.Churn) }, pct, 0},
		{"after churn: last change in kernel", func(p *Proxy) float64 { return 1000 * dur(p.CatchUp) }, ms, 0},
	}
}

// WriteMarkdown prints one scale's table: absolute values per proxy, the
// ratios switchyard / kube-proxy, and whether each target is met.
func (s *Scale) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "### %d Services × %d endpoints\n\n", s.Services, s.Endpoints)
	fmt.Fprintf(w, "Objects written: %d Services + %d EndpointSlices in %s (%.0f objects/s; not compared).\n\n",
		s.Created, s.Created, s.Create.Round(time.Millisecond), 2*float64(s.Created)/max(s.Create.Seconds(), 1e-9))
	sy, nft, ipt := s.proxy(Switchyard), s.proxy(KPNFT), s.proxy(KPIPT)
	var head []string
	for _, p := range s.Proxies {
		head = append(head, p.Name)
	}
	fmt.Fprintf(w, "| metric | %s | sy / kp-nft | sy / kp-ipt | target (vs kp-nft) |\n", strings.Join(head, " | "))
	fmt.Fprintf(w, "|---|%s---|---|---|\n", strings.Repeat("---|", len(head)))
	for _, r := range s.rows() {
		cells := []string{r.name}
		for _, p := range s.Proxies {
			v := r.value(p)
			if math.IsNaN(v) {
				cells = append(cells, "–")
			} else {
				cells = append(cells, r.format(v))
			}
		}
		ratio := func(o *Proxy) (float64, string) {
			if sy == nil || o == nil {
				return math.NaN(), "–"
			}
			a, b := r.value(sy), r.value(o)
			// Below 0.1 (% of a core, ms, s, MiB) a ratio says nothing.
			if math.IsNaN(a) || math.IsNaN(b) || b < 0.1 {
				return math.NaN(), "–"
			}
			return a / b, fmt.Sprintf("%.2f×", a/b)
		}
		rn, sn := ratio(nft)
		_, si := ratio(ipt)
		target := ""
		if r.target > 0 {
			switch {
			case math.IsNaN(rn):
				target = fmt.Sprintf("≤ %.1f× –", r.target)
			case rn <= r.target:
				target = fmt.Sprintf("≤ %.1f× **met**", r.target)
			default:
				target = fmt.Sprintf("≤ %.1f× **missed**", r.target)
			}
		}
		cells = append(cells, sn, si, target)
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	var notes []string
	for _, p := range s.Proxies {
		if p.Missed > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d of %d changes not seen within the deadline", p.Name, p.Missed, p.Missed+len(p.Latencies)))
		}
		if p.Err != "" {
			notes = append(notes, p.Name+": "+p.Err)
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n%s\n", strings.Join(notes, "; "))
	}
	n := 0
	if sy != nil {
		n = len(sy.Latencies) + sy.Missed
	}
	fmt.Fprintf(w, "\nLatency: %d single changes (p99 is nearest-rank: with fewer than 100 samples, the largest or next to it).\n\n", n)
}

// proxyColors are the proxies' colours in the chart.
var proxyColors = map[string]color.Color{
	Switchyard: color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255},
	KPNFT:      color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 255},
	KPIPT:      color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 255},
}

// WritePNG draws four panels against the number of Services (log-log):
// cold full sync, change → kernel p99, RSS after the cold sync, CPU under
// churn; one line per proxy.
func WritePNG(path string, scales []*Scale) error {
	if len(scales) == 0 {
		return fmt.Errorf("no scales")
	}
	type panel struct {
		title, unit string
		value       func(*Scale, *Proxy) float64
	}
	panels := []panel{
		{"Cold full sync (process start → kernel)", "seconds", func(_ *Scale, p *Proxy) float64 { return p.Cold.Seconds() }},
		{"One EndpointSlice change → kernel, p99", "milliseconds", func(_ *Scale, p *Proxy) float64 { return 1000 * p.Percentile(0.99).Seconds() }},
		{"RSS after the cold sync", "MiB", func(_ *Scale, p *Proxy) float64 { return float64(p.RSSSynced) / (1 << 20) }},
		{"CPU under churn", "% of one core", func(s *Scale, p *Proxy) float64 {
			if s.Churn <= 0 {
				return 0
			}
			return 100 * p.CPUChurn.Seconds() / s.Churn.Seconds()
		}},
	}
	var names []string
	for _, s := range scales {
		for _, p := range s.Proxies {
			if !slices.Contains(names, p.Name) {
				names = append(names, p.Name)
			}
		}
	}
	const cols = 2
	rows := (len(panels) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, pn := range panels {
		pl := plot.New()
		pl.Title.Text = pn.title
		pl.X.Label.Text = "Services (× 5 endpoints)"
		pl.Y.Label.Text = pn.unit
		pl.X.Scale, pl.Y.Scale = plot.LogScale{}, plot.LogScale{}
		pl.X.Tick.Marker = scaleTicks(scales)
		pl.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		pl.Legend.Top, pl.Legend.Left = true, true
		ymin, ymax := math.Inf(1), math.Inf(-1)
		for _, name := range names {
			var xys plotter.XYs
			for _, s := range scales {
				if p := s.proxy(name); p != nil {
					if v := pn.value(s, p); v > 0 {
						xys = append(xys, plotter.XY{X: float64(s.Services), Y: v})
						ymin, ymax = math.Min(ymin, v), math.Max(ymax, v)
					}
				}
			}
			if len(xys) == 0 {
				continue
			}
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return err
			}
			c := proxyColors[name]
			l.Color, l.Width = c, vg.Points(2)
			pts.Color, pts.Shape = c, draw.CircleGlyph{}
			pl.Add(l, pts)
			pl.Legend.Add(name, l, pts)
		}
		if !math.IsInf(ymin, 1) {
			pl.Y.Min, pl.Y.Max = ymin/2, ymax*3
		}
		lo, hi := float64(scales[0].Services), float64(scales[len(scales)-1].Services)
		pl.X.Min, pl.X.Max = lo/1.5, hi*1.5
		grid[i/cols][i%cols] = pl
	}
	img := vgimg.New(vg.Points(960), vg.Points(380*float64(rows)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: 6 * vg.Millimeter, PadY: 6 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j, pl := range grid[i] {
			if pl != nil {
				pl.Draw(canvases[i][j])
			}
		}
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

// scaleTicks labels the x axis at the measured scales.
type scaleTicks []*Scale

func (st scaleTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, s := range st {
		label := fmt.Sprint(s.Services)
		if s.Services%1000 == 0 {
			label = fmt.Sprintf("%dk", s.Services/1000)
		}
		ts = append(ts, plot.Tick{Value: float64(s.Services), Label: label})
	}
	return ts
}
