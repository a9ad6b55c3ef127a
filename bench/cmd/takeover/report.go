package main

import (
	"fmt"
	"image/color"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

type report struct {
	started, finished time.Time
	systems, faults   []string
	machine           string
	trials            []trialResult
	idle              []idleLoad
}

// stats summarises the takeovers of one system and fault.
type stats struct {
	n, missed, overlaps int
	min, p50, p90, max  time.Duration
	worstOverlap        time.Duration
}

func (r *report) stats(sys, fault string) (s stats, ok bool) {
	var ds []time.Duration
	for _, t := range r.trials {
		if t.System != sys || t.Fault != fault {
			continue
		}
		s.n++
		if t.Takeover < 0 {
			s.missed++
		} else {
			ds = append(ds, t.Takeover)
		}
		if t.Overlap > 0 {
			s.overlaps++
			if t.Overlap > s.worstOverlap {
				s.worstOverlap = t.Overlap
			}
		}
	}
	if s.n == 0 {
		return s, false
	}
	if len(ds) > 0 {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		q := func(p float64) time.Duration { return ds[int(math.Ceil(p*float64(len(ds))))-1] }
		s.min, s.p50, s.p90, s.max = ds[0], q(0.5), q(0.9), ds[len(ds)-1]
	}
	return s, true
}

func fmtD(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
}

func (r *report) markdown(command, png string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s`  \n", command)
	fmt.Fprintf(&b, "Machine: %s  \n", r.machine)
	fmt.Fprintf(&b, "Run: %s, %v\n\n", r.started.UTC().Format(time.RFC3339), r.finished.Sub(r.started).Round(time.Second))
	for _, fault := range r.faults {
		fmt.Fprintf(&b, "### %s\n\n", fault)
		b.WriteString("| system | N | min | p50 | p90 | max | no takeover | trials with overlap (worst) |\n|---|---|---|---|---|---|---|---|\n")
		for _, sys := range r.systems {
			s, ok := r.stats(sys, fault)
			if !ok {
				continue
			}
			row := []string{sys, fmt.Sprint(s.n)}
			if s.missed == s.n {
				row = append(row, "—", "—", "—", "—")
			} else {
				row = append(row, fmtD(s.min), fmtD(s.p50), fmtD(s.p90), fmtD(s.max))
			}
			ov := "0"
			if s.overlaps > 0 {
				ov = fmt.Sprintf("%d (%s)", s.overlaps, fmtD(s.worstOverlap))
			}
			row = append(row, fmt.Sprint(s.missed), ov)
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}
		b.WriteString("\n")
	}
	if len(r.idle) > 0 {
		b.WriteString("### idle load (three contenders, one leading)\n\n| system | statements/s per contender | connections per contender |\n|---|---|---|\n")
		for _, l := range r.idle {
			fmt.Fprintf(&b, "| %s | %.2f | %.1f |\n", l.System, l.StatementsPerSecond, l.Connections)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "![takeover distributions](%s)\n", png)
	return b.String()
}

// plot draws, for each fault, every trial's takeover per system on a log
// scale.
func (r *report) plot(path string) error {
	const w, h = 12 * vg.Inch, 8 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	rows, cols := 2, 2
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	for i, fault := range r.faults {
		if i >= rows*cols {
			break
		}
		p := plot.New()
		p.Title.Text = "takeover after " + fault
		p.Y.Label.Text = "ms (log)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = ticks125{}
		var names []string
		for si, sys := range r.systems {
			var pts plotter.XYs
			k := 0
			for _, t := range r.trials {
				if t.System == sys && t.Fault == fault && t.Takeover > 0 {
					x := float64(si) + 0.3*(float64(k%7)/6-0.5)
					pts = append(pts, plotter.XY{X: x, Y: float64(t.Takeover) / float64(time.Millisecond)})
					k++
				}
			}
			names = append(names, sys)
			if len(pts) == 0 {
				continue
			}
			sc, err := plotter.NewScatter(pts)
			if err != nil {
				return err
			}
			sc.GlyphStyle.Color = color.RGBA{R: uint8(40 + 50*si), G: 90, B: uint8(200 - 35*si), A: 255}
			sc.GlyphStyle.Radius = vg.Points(2.5)
			p.Add(sc)
		}
		p.NominalX(names...)
		p.X.Min, p.X.Max = -0.5, float64(len(names))-0.5
		c := tiles.At(dc, i/cols, i%cols)
		p.Draw(c)
	}
	return savePNG(img, path)
}

// ticks125 labels 1, 2 and 5 times each power of ten in range.
type ticks125 struct{}

func (ticks125) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(min)) - 1; e <= math.Ceil(math.Log10(max))+1; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < min/1.01 || v > max*1.01 {
				continue
			}
			ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
	}
	return ts
}
