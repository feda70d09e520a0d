package bench

import (
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A small SVG line-chart writer: enough for latency CDFs and throughput by
// message size, with no dependency.

type series struct {
	name string
	pts  [][2]float64 // x, y in plot units (already transformed)
}

type tick struct {
	v     float64
	label string
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

// lineChart renders series over the given x ticks; y is linear from 0, or
// log10 when logY (then points' y must be > 0).
func lineChart(title, xlabel, ylabel string, xt []tick, logY bool, ss []series) string {
	const W, H, L, R, T, B = 760.0, 440.0, 70.0, 190.0, 40.0, 50.0
	pw, ph := W-L-R, H-T-B
	xmin, xmax := xt[0].v, xt[len(xt)-1].v
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, p := range s.pts {
			y := p[1]
			if logY {
				if y <= 0 {
					continue
				}
				y = math.Log10(y)
			}
			ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
		}
	}
	if math.IsInf(ymin, 0) {
		ymin, ymax = 0, 1
	}
	var yt []tick
	if logY {
		ymin, ymax = math.Floor(ymin), math.Ceil(ymax)
		if ymax == ymin {
			ymax++
		}
		for e := ymin; e <= ymax; e++ {
			yt = append(yt, tick{e, strconv.FormatFloat(math.Pow(10, e), 'g', -1, 64)})
		}
	} else {
		ymin = 0
		step := niceStep(ymax / 5)
		ymax = math.Ceil(ymax/step) * step
		if ymax == 0 {
			ymax = 1
		}
		for v := 0.0; v <= ymax+step/2; v += step {
			yt = append(yt, tick{v, strconv.FormatFloat(v, 'g', -1, 64)})
		}
	}
	px := func(x float64) float64 { return L + (x-xmin)/(xmax-xmin)*pw }
	py := func(y float64) float64 {
		if logY {
			y = math.Log10(y)
		}
		return T + ph - (y-ymin)/(ymax-ymin)*ph
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", L, html.EscapeString(title))
	for _, t := range xt {
		x := px(t.v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n",
			x, T, x, T+ph, x, T+ph+16, html.EscapeString(t.label))
	}
	for _, t := range yt {
		y := T + ph - (t.v-ymin)/(ymax-ymin)*ph
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n",
			L, y, L+pw, y, L-6, y+4, html.EscapeString(t.label))
	}
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", L, T, pw, ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", L+pw/2, H-10, html.EscapeString(xlabel))
	fmt.Fprintf(&b, `<text transform="translate(16,%.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", T+ph/2, html.EscapeString(ylabel))
	for i, s := range ss {
		col := palette[i%len(palette)]
		var pts []string
		for _, p := range s.pts {
			if logY && p[1] <= 0 {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		ly := T + 14 + float64(i)*18
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			L+pw+12, ly-4, L+pw+32, ly-4, col, L+pw+38, ly, html.EscapeString(s.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}

// nines maps a percentile (0..100) to log10(1/(1-q)): 90 → 1, 99 → 2.
func nines(p float64) float64 {
	q := p / 100
	if q >= 0.99999 {
		q = 0.99999
	}
	return math.Log10(1 / (1 - q))
}

var ninesTicks = []tick{{0, "0%"}, {nines(50), "50%"}, {1, "90%"}, {2, "99%"}, {3, "99.9%"}, {4, "99.99%"}, {5, "99.999%"}}

// cdfChart plots percentile (x, in nines) against latency (y, log µs).
func cdfChart(title string, rows []*Row) string {
	var ss []series
	maxX := 3.0
	for _, r := range rows {
		var pts [][2]float64
		for _, p := range r.CDF {
			x := nines(p[1])
			pts = append(pts, [2]float64{x, p[0]})
			maxX = math.Max(maxX, math.Ceil(x))
		}
		ss = append(ss, series{r.Peer, pts})
	}
	var xt []tick
	for _, t := range ninesTicks {
		if t.v <= maxX {
			xt = append(xt, t)
		}
	}
	return lineChart(title, "percentile", "µs (log)", xt, true, ss)
}

// plots writes the charts of the report's tables into dir.
func (r *Report) plots(dir string) error {
	write := func(name, svg string) error { return os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644) }
	if t := r.Table("latency"); t != nil {
		for _, bg := range []string{"idle", "busy"} {
			var rows []*Row
			for _, row := range t.Rows {
				if row.Params["background"] == bg && len(row.CDF) > 0 {
					rows = append(rows, row)
				}
			}
			if len(rows) == 0 {
				continue
			}
			title := fmt.Sprintf("64 B RTT, %s background tunnels (%s)", bg, rows[0].Params["tunnels"])
			if err := write("latency-cdf-"+bg+".svg", cdfChart(title, rows)); err != nil {
				return err
			}
		}
	}
	if t := r.Table("setup"); t != nil && len(t.Rows) > 0 {
		if err := write("setup-latency-cdf.svg", cdfChart("tunnel setup (pairing) latency", t.Rows)); err != nil {
			return err
		}
	}
	if t := r.Table("throughput"); t != nil {
		byK := map[string][]*Row{}
		var ks []string
		for _, row := range t.Rows {
			k := row.Params["tunnels"]
			if _, ok := byK[k]; !ok {
				ks = append(ks, k)
			}
			byK[k] = append(byK[k], row)
		}
		for _, k := range ks {
			var sizes []float64
			seen := map[float64]bool{}
			var order []string
			bypeer := map[string][][2]float64{}
			for _, row := range byK[k] {
				s := row.Values["size_bytes"]
				if !seen[s] {
					seen[s] = true
					sizes = append(sizes, s)
				}
				if _, ok := bypeer[row.Peer]; !ok {
					order = append(order, row.Peer)
				}
				bypeer[row.Peer] = append(bypeer[row.Peer], [2]float64{math.Log2(s), row.Values["mbps"]})
			}
			var xt []tick
			for _, s := range sizes {
				xt = append(xt, tick{math.Log2(s), human(int(s))})
			}
			if len(xt) < 2 {
				xt = append(xt, tick{xt[0].v + 1, ""})
			}
			var ss []series
			for _, p := range order {
				ss = append(ss, series{p, bypeer[p]})
			}
			title := fmt.Sprintf("throughput by message size, %s tunnel(s)", k)
			if err := write("throughput-k"+k+".svg", lineChart(title, "message size", "MB/s", xt, false, ss)); err != nil {
				return err
			}
		}
	}
	return nil
}
