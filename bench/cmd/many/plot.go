package main

import (
	"image/color"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// plotCDF draws, for each series, the share of samples (y) that took at
// most x milliseconds, and writes a PNG to path.
func plotCDF(path, title string, series map[string][]time.Duration) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "milliseconds"
	p.Y.Label.Text = "share of samples at most that long"
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top = false
	p.Legend.Left = false
	colors := []color.Color{color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}}
	names := make([]string, 0, len(series))
	for name := range series {
		names = append(names, name)
	}
	slices.Sort(names)
	for i, name := range names {
		ds := slices.Clone(series[name])
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		pts := make(plotter.XYs, len(ds))
		for j, d := range ds {
			pts[j] = plotter.XY{X: float64(d) / float64(time.Millisecond), Y: float64(j+1) / float64(len(ds))}
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = colors[i%len(colors)]
		l.Width = vg.Points(2)
		p.Add(l)
		p.Legend.Add(name, l)
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
