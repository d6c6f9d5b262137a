//! Charts as PNG: loss curves (training loss per step, validation loss at each evaluation,
//! horizontal lines for baselines, in bits per token), log-log and line charts (benchmarks,
//! fine-tuning accuracy, distillation reports) and grouped bars (MAD).
//!
//! Text is drawn with an embedded DejaVu Sans Mono (Bitstream Vera licence, `assets/`), so
//! plotting needs no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

fn ensure_font() {
    REGISTER.call_once(|| {
        // Registration only fails on a malformed font, and this one is compiled in.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The running mean of `points`' values over the last `w` points (fewer at the start), to
/// draw a noisy per-step curve readably.
pub fn running_mean<T: Copy>(points: &[(T, f64)], w: usize) -> Vec<(T, f64)> {
    let w = w.max(1);
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(w - 1);
            let s: f64 = points[lo..=i].iter().map(|p| p.1).sum();
            (points[i].0, s / (i - lo + 1) as f64)
        })
        .collect()
}

/// A named horizontal reference line (e.g. a Markov baseline), in the plotted unit.
#[derive(Clone, Debug)]
pub struct RefLine {
    pub label: String,
    pub value: f64,
}

/// Draw `train` (step, bits/token) and `val` (step, bits/token) with reference lines to `path`,
/// in two panels: the whole run on the left, and on the right the band around the reference
/// lines where the model and the baselines differ (on DNA a few thousandths of a bit, which
/// the whole run's scale, dominated by the first steps, flattens into one line).
pub fn loss_curve_png(
    path: &Path,
    title: &str,
    train: &[(u64, f64)],
    val: &[(u64, f64)],
    refs: &[RefLine],
) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let max_step = train
        .iter()
        .chain(val)
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(1);
    let ys = train
        .iter()
        .chain(val)
        .map(|p| p.1)
        .chain(refs.iter().map(|r| r.value));
    let whole = finite_range(ys);
    // The zoom: the reference lines and the validation points, with a margin of a quarter of
    // their spread (at least 0.005 bits) so the gap between them fills the panel.
    let near = finite_range(val.iter().map(|p| p.1).chain(refs.iter().map(|r| r.value)));
    let margin = ((near.1 - near.0) * 0.25).max(5e-3);
    let zoom = (near.0 - margin, near.1 + margin);
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(700);
    let pad = ((whole.1 - whole.0) * 0.05).max(1e-3);
    loss_panel(
        &left,
        path,
        "whole run",
        max_step,
        (whole.0 - pad, whole.1 + pad),
        train,
        val,
        refs,
    )?;
    loss_panel(
        &right,
        path,
        "near the baselines",
        max_step,
        zoom,
        train,
        val,
        refs,
    )?;
    root.present().map_err(|e| err(e.to_string()))
}

/// The smallest and largest finite value of `ys` ((0, 1) when there is none).
fn finite_range(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for y in ys.filter(|y| y.is_finite()) {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// One panel of [`loss_curve_png`]: the curves and reference lines over `y` (lines leaving
/// the range are clipped at its edge).
#[allow(clippy::too_many_arguments)]
fn loss_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    path: &Path,
    caption: &str,
    max_step: u64,
    y: (f64, f64),
    train: &[(u64, f64)],
    val: &[(u64, f64)],
    refs: &[RefLine],
) -> Result<()> {
    let err = plot_err(path);
    let clip = |p: &(u64, f64)| (p.0, p.1.clamp(y.0, y.1));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..max_step, y.0..y.1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("bits per token")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(train.iter().map(clip), &BLUE.mix(0.6)))
        .map_err(|e| err(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val.iter().map(clip), RED.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(
            val.iter()
                .map(clip)
                .map(|p| Circle::new(p, 3, RED.filled())),
        )
        .map_err(|e| err(e.to_string()))?;
    let palette = [BLACK, MAGENTA, GREEN, CYAN];
    for (i, r) in refs.iter().enumerate() {
        let c = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(
                vec![(0, r.value), (max_step, r.value)],
                c.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    draw_legend(&mut chart, path)
}

/// Lines `(label, points)` on log–log axes (e.g. latency against context length).
pub fn log_log_png(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let (x0, x1, y0, y1) =
        bounds(series, |p| p.0 > 0.0 && p.1 > 0.0).unwrap_or((1.0, 10.0, 1.0, 10.0));
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 / 1.3..x1 * 1.3).log_scale(),
            (y0 / 2.0..y1 * 2.0).log_scale(),
        )
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let palette = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN];
    for (i, (label, p)) in series.iter().enumerate() {
        let c = palette[i % palette.len()];
        let p: Vec<(f64, f64)> = p
            .iter()
            .copied()
            .filter(|q| q.0 > 0.0 && q.1 > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart
            .draw_series(p.iter().map(|&q| Circle::new(q, 4, c.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    legend_and_present(&root, &mut chart, path)
}

/// Lines `(label, points)` on linear axes; series whose label starts with `fit` are drawn
/// dashed-looking (thin) over the solid originals.
pub fn lines_png(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let (mut x0, mut x1, mut y0, mut y1) =
        bounds(series, |p| p.0.is_finite() && p.1.is_finite()).unwrap_or((0.0, 1.0, 0.0, 0.0));
    if x0 >= x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if y0 >= y1 {
        (y0, y1) = (y0 - 1.0, y0 + 1.0);
    }
    let pad = (y1 - y0) * 0.05;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let palette = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN];
    let mut colour = 0;
    for (label, p) in series {
        let fit = label.starts_with("fit");
        let c = palette[colour % palette.len()];
        if !fit {
            colour += 1;
        }
        let style = if fit {
            BLACK.stroke_width(1)
        } else {
            c.mix(0.7).stroke_width(3)
        };
        chart
            .draw_series(LineSeries::new(p.iter().copied(), style))
            .map_err(|e| err(e.to_string()))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], if fit { BLACK } else { c })
            });
    }
    legend_and_present(&root, &mut chart, path)
}

/// Draw the series legend (top right, over a translucent box) and write the file.
fn legend_and_present<'a, DB, CT>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &mut ChartContext<'a, DB, CT>,
    path: &Path,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    draw_legend(chart, path)?;
    root.present().map_err(|e| plot_err(path)(e.to_string()))
}

/// The legend of `chart`'s labelled series, on a white box.
fn draw_legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, path: &Path) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_err(path)(e.to_string()))
}

/// The error for a failed plot of `path`.
fn plot_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Format {
        file: path.to_path_buf(),
        msg: format!("plotting failed: {e}"),
    }
}

/// The box `(x0, x1, y0, y1)` around the points of `series` that pass `keep`; `None` if
/// there are none.
fn bounds(
    series: &[(String, Vec<(f64, f64)>)],
    keep: impl Fn(&(f64, f64)) -> bool,
) -> Option<(f64, f64, f64, f64)> {
    series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|p| keep(p))
        .fold(None, |b, p| {
            let (x0, x1, y0, y1) = b.unwrap_or((p.0, p.0, p.1, p.1));
            Some((x0.min(p.0), x1.max(p.0), y0.min(p.1), y1.max(p.1)))
        })
}

/// Grouped bars: for each group (x category, e.g. a MAD task) one bar per series (e.g. an
/// architecture), values in `[0, 1]` (accuracies).
pub fn grouped_bars_png(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    ensure_font();
    let err = plot_err(path);
    let n = groups.len().max(1);
    let k = series.len().max(1);
    let width = (160 + 110 * n).max(700) as u32;
    // The legend goes in a band below the plot, not over it: bars reach 1.0 in every group.
    let cols = ((width as usize - 80) / 300).max(1);
    let legend_h = 16 + 22 * k.div_ceil(cols) as u32;
    let root = BitMapBackend::new(path, (width, 540 + legend_h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (plot_area, legend_area) = root.split_vertically(540);
    let names = groups.to_vec();
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n as f64, 0.0..1.1f64)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&|x: &f64| {
            // Label only the group centres.
            let c = x - x.floor();
            if (c - 0.5).abs() < 1e-6 {
                names.get(x.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let palette = [
        RED,
        BLUE,
        GREEN,
        MAGENTA,
        BLACK,
        CYAN,
        RGBColor(255, 140, 0),
    ];
    let bw = 0.8 / k as f64;
    for (si, (label, vals)) in series.iter().enumerate() {
        let c = palette[si % palette.len()];
        chart
            .draw_series(
                vals.iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(gi, &v)| {
                        let x0 = gi as f64 + 0.1 + si as f64 * bw;
                        Rectangle::new([(x0, 0.0), (x0 + bw * 0.9, v)], c.mix(0.75).filled())
                    }),
            )
            .map_err(|e| err(e.to_string()))?;
        let (x, y) = (80 + 300 * (si % cols) as i32, 8 + 22 * (si / cols) as i32);
        legend_area
            .draw(&Rectangle::new([(x, y + 2), (x + 14, y + 14)], c.filled()))
            .map_err(|e| err(e.to_string()))?;
        legend_area
            .draw(&Text::new(label.clone(), (x + 20, y), ("sans-serif", 14)))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}
