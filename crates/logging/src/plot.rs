//! PNG line charts with `plotters` (bitmap backend).
//!
//! Text goes through plotters' pure-Rust `ab_glyph` renderer with DejaVu Sans, which ships in
//! the binary (the `dejavu` crate), so charts have text on any machine, fonts installed or
//! not, and look the same everywhere. `MVP_PLOT_FONT=FILE.ttf` uses another font;
//! `MVP_PLOT_FONT=none` draws charts without text (no title, axis labels, tick labels or
//! legend; the curves, grid and colours are the same).

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Width and height in pixels used by [`plot_curves`].
pub const DEFAULT_PLOT_SIZE: (u32, u32) = (960, 540);

/// Environment variable naming a `.ttf`/`.otf` font file for plot text; `none` disables text.
pub const PLOT_FONT_ENV: &str = "MVP_PLOT_FONT";

/// Series colours, in order (matplotlib's tab10).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Whether plots get text: true once the font is registered with plotters (false with
/// `MVP_PLOT_FONT=none`). Decided once per process.
pub fn plot_font_available() -> bool {
    static FONT_OK: OnceLock<bool> = OnceLock::new();
    *FONT_OK.get_or_init(|| {
        let Some(bytes) = find_font_bytes() else {
            return false;
        };
        // plotters keeps `&'static` font data; this runs once per process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        ["sans-serif", "serif", "monospace"]
            .iter()
            .all(|family| register_font(family, FontStyle::Normal, bytes).is_ok())
    })
}

/// Bytes of the font to use, or `None` for text-less plots: `MVP_PLOT_FONT`'s file, else the
/// bundled DejaVu Sans.
fn find_font_bytes() -> Option<Vec<u8>> {
    match std::env::var(PLOT_FONT_ENV) {
        Ok(choice) if choice.is_empty() || choice.eq_ignore_ascii_case("none") => None,
        Ok(file) => Some(fs::read(&file).unwrap_or_else(|e| {
            eprintln!("warning: {PLOT_FONT_ENV}={file}: {e}; using the bundled DejaVu Sans");
            dejavu::sans::regular().to_vec()
        })),
        Err(_) => Some(dejavu::sans::regular().to_vec()),
    }
}

/// Writes a PNG line chart of `series` (`(label, points)` pairs, points as `(x, y)`) to
/// `path_png` at [`DEFAULT_PLOT_SIZE`]. See [`plot_curves_with_size`].
pub fn plot_curves(
    path_png: impl AsRef<Path>,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    plot_curves_with_size(path_png, title, series, x_label, y_label, DEFAULT_PLOT_SIZE)
}

/// Writes a PNG line chart of `series` to `path_png`, `size = (width, height)` pixels.
///
/// Series take colours in order (tab10). Non-finite points are left out and break the
/// line; a lone finite point is drawn as a dot. Axis ranges cover all finite points with a
/// small margin. Title, axis labels, tick labels and a legend are drawn when
/// [`plot_font_available`]; otherwise the chart has no text (see the module notes).
pub fn plot_curves_with_size(
    path_png: impl AsRef<Path>,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    x_label: &str,
    y_label: &str,
    size: (u32, u32),
) -> Result<()> {
    let path = path_png.as_ref();
    ensure!(size.0 >= 64 && size.1 >= 64, "plot size {size:?} is too small (minimum 64x64)");
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let with_text = plot_font_available();
    draw(path, title, series, x_label, y_label, size, with_text)
        .map_err(|e| anyhow!("plotting {}: {e}", path.display()))
}

/// Axis range covering `values` with a 5% margin; never empty.
fn axis_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 { 0.05 * span } else { (0.05 * lo.abs()).max(0.5) };
    (lo - pad, hi + pad)
}

/// Short tick text: `0`, `0.25`, `10000`, `-1.5e6`, `2.0e-4`. Values within rounding
/// noise of zero for an axis spanning `span` print as `0`.
fn tick_label(v: f64, span: f64) -> String {
    if v.abs() <= span.abs() * 1e-9 {
        return "0".to_string();
    }
    if v.abs() >= 1e6 || v.abs() < 1e-3 {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Runs of consecutive finite points.
fn finite_segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    points.split(|(x, y)| !(x.is_finite() && y.is_finite())).filter(|s| !s.is_empty()).map(<[_]>::to_vec).collect()
}

fn draw(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    x_label: &str,
    y_label: &str,
    size: (u32, u32),
    with_text: bool,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let finite =
        || series.iter().flat_map(|(_, pts)| pts.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x0, x1) = axis_range(finite().map(|p| p.0));
    let (y0, y1) = axis_range(finite().map(|p| p.1));

    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if with_text {
        builder.caption(title, ("sans-serif", 24)).x_label_area_size(48).y_label_area_size(72);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
    let x_tick = |v: &f64| tick_label(*v, x1 - x0);
    let y_tick = |v: &f64| tick_label(*v, y1 - y0);
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235)).bold_line_style(RGBColor(205, 205, 205));
    if with_text {
        mesh.x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .x_label_formatter(&x_tick)
            .y_label_formatter(&y_tick);
    }
    mesh.draw()?;

    for (i, (label, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = color.stroke_width(2);
        let mut labelled = false;
        for segment in finite_segments(points) {
            let drawn = if segment.len() == 1 {
                chart.draw_series(std::iter::once(Circle::new(segment[0], 3, color.filled())))?
            } else {
                chart.draw_series(LineSeries::new(segment, style))?
            };
            if with_text && !labelled {
                drawn
                    .label(*label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                labelled = true;
            }
        }
    }
    if with_text && series.iter().any(|(_, pts)| !finite_segments(pts).is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Writes a PNG bar chart with a logarithmic value axis: one group of bars per category,
/// one bar per series (`(label, values)`, one value per category; non-finite or non-positive
/// values are left out). For benchmark figures that span orders of magnitude.
pub fn plot_bars_log(
    path_png: impl AsRef<Path>,
    title: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
    y_label: &str,
) -> Result<()> {
    let path = path_png.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    draw_bars(path, title, categories, series, y_label, plot_font_available())
        .map_err(|e| anyhow!("plotting {}: {e}", path.display()))
}

fn draw_bars(
    path: &Path,
    title: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
    y_label: &str,
    with_text: bool,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let values = || series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite() && *v > 0.0);
    let lo = values().fold(f64::INFINITY, f64::min);
    let hi = values().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo <= hi { (lo / 2.0, hi * 2.0) } else { (0.1, 10.0) };
    let root = BitMapBackend::new(path, DEFAULT_PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if with_text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(64).y_label_area_size(72);
    }
    let n = categories.len().max(1);
    let mut chart = builder.build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())?;
    let names = categories.to_vec();
    let x_tick = move |v: &f64| {
        let i = v.floor() as usize;
        if (v - i as f64 - 0.5).abs() < 1e-6 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().light_line_style(RGBColor(235, 235, 235)).bold_line_style(RGBColor(205, 205, 205));
    if with_text {
        mesh.y_desc(y_label)
            .label_style(("sans-serif", 13))
            .x_labels(2 * n + 1)
            .x_label_formatter(&x_tick)
            .y_label_formatter(&|v: &f64| tick_label(*v, *v));
    }
    mesh.draw()?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, (label, vals)) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let bars = vals.iter().enumerate().filter(|(_, v)| v.is_finite() && **v > 0.0).map(|(i, &v)| {
            let x0 = i as f64 + 0.1 + s as f64 * width;
            Rectangle::new([(x0, lo), (x0 + width * 0.95, v)], color.filled())
        });
        let drawn = chart.draw_series(bars)?;
        if with_text {
            drawn.label(*label).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        }
    }
    if with_text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_range_is_never_empty() {
        assert_eq!(axis_range(std::iter::empty()), (0.0, 1.0));
        let (lo, hi) = axis_range([3.0, 3.0].into_iter());
        assert!(lo < 3.0 && hi > 3.0);
        assert_eq!(axis_range([0.0, 10.0].into_iter()), (-0.5, 10.5));
    }

    #[test]
    fn tick_labels_are_short() {
        let got: Vec<String> = [0.0, -0.0, 0.25, 100000.0, -1.5e6, 2e-4, -2.2e-16, 3.1000001]
            .iter()
            .map(|&v| tick_label(v, 1.0))
            .collect();
        assert_eq!(got, ["0", "0", "0.25", "100000", "-1.5e6", "2.0e-4", "0", "3.1"]);
        assert_eq!(tick_label(2e-12, 1e-11), "2.0e-12");
    }

    #[test]
    fn non_finite_points_split_a_series_into_segments() {
        let pts = [(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0), (f64::INFINITY, 0.0)];
        assert_eq!(finite_segments(&pts), vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
    }
}
