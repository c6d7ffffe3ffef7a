//! Charts with plotters, each drawn once into SVG (for the HTML page) and
//! once into a PNG. Text uses the bundled DejaVu Sans through plotters'
//! ab_glyph backend, so PNGs are identical across machines.
//!
//! Charts: score vs latency, vs peak memory, vs energy (with the Pareto
//! frontier), score vs parameters and vs file size, per-task grouped
//! bars, and the loss curves of distilled variants. Every point carries a ±1.96·se error bar.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::stats::{pareto_frontier, Z95};
use super::{label_of, model_labels, ok_cells, primary_metric, ModelPoint, ReportError, Run};

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();
const SIZE: (u32, u32) = (720, 460);

fn register_font() {
    REGISTER.call_once(|| {
        // The font is compiled in, so a failure here is a build defect; charts
        // would then fail with plotters' "font unavailable" error.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// One rendered chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem, e.g. `score_vs_latency`.
    pub name: String,
    pub title: String,
    pub svg: String,
    pub png: Vec<u8>,
}

/// A point of a scatter chart.
#[derive(Debug, Clone)]
struct Pt {
    label: String,
    x: f64,
    y: f64,
    se: Option<f64>,
}

struct Scatter {
    title: String,
    x_desc: String,
    y_desc: String,
    points: Vec<Pt>,
    frontier: bool,
}

struct Bars {
    title: String,
    y_desc: String,
    groups: Vec<String>,
    series: Vec<String>,
    /// (group, series) -> (value, se)
    values: BTreeMap<(usize, usize), (f64, Option<f64>)>,
}

/// Curves over steps (distillation losses): each series raw (light) and
/// as a moving average over `window` steps (bold).
struct Lines {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<(String, Vec<f64>)>,
    window: usize,
}

enum Spec {
    Scatter(Scatter),
    Bars(Bars),
    Lines(Lines),
}

fn draw_lines<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, l: &Lines) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let n = l
        .series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let finite = l
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let (ylo, yhi) = padded(lo.min(0.0), hi);
    let mut chart = ChartBuilder::on(&root)
        .caption(&l.title, (FONT, 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(1f64..n as f64, ylo..yhi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.08))
        .x_desc(&l.x_desc)
        .y_desc(&l.y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(err)?;
    for (j, (name, v)) in l.series.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let raw = v.iter().enumerate().map(|(i, y)| ((i + 1) as f64, *y));
        chart
            .draw_series(LineSeries::new(raw, color.mix(0.3).stroke_width(1)))
            .map_err(err)?;
        let w = l.window.max(1);
        let smooth: Vec<(f64, f64)> = (0..v.len())
            .map(|i| {
                let from = i.saturating_sub(w - 1);
                let part = &v[from..=i];
                ((i + 1) as f64, part.iter().sum::<f64>() / part.len() as f64)
            })
            .collect();
        // The label beside the curve's end, not in a legend box.
        if let Some(&(x, y)) = smooth.last() {
            chart
                .draw_series(std::iter::once(Text::new(
                    name.clone(),
                    (x, y),
                    (FONT, 14).into_font().color(&color).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Right,
                            plotters::style::text_anchor::VPos::Bottom,
                        ),
                    ),
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(smooth, color.stroke_width(2)))
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(0.02);
    (lo - 0.08 * span, hi + 0.08 * span)
}

fn draw_scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    s: &Scatter,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    // The x axis is log10 of the value on a linear axis, labelled with the
    // value itself: plotters' log axis labels only powers of ten, too few
    // when the models span less than a decade.
    let lx = |p: &Pt| p.x.log10();
    let (xmin, xmax) = s
        .points
        .iter()
        .map(lx)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let pad = ((xmax - xmin) * 0.12).max(0.08);
    let (xlo, xhi) = (xmin - pad, xmax + pad);
    let lo = s
        .points
        .iter()
        .map(|p| p.y - Z95 * p.se.unwrap_or(0.0))
        .fold(f64::INFINITY, f64::min);
    let hi = s
        .points
        .iter()
        .map(|p| p.y + Z95 * p.se.unwrap_or(0.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let (ylo, yhi) = padded(lo, hi);
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.title, (FONT, 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(xlo..xhi, ylo..yhi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.08))
        .x_desc(&s.x_desc)
        .y_desc(&s.y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .x_labels(6)
        .x_label_formatter(&|v| format_si(10f64.powf(*v)))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(err)?;
    if s.frontier && s.points.len() > 1 {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (lx(p), p.y)).collect();
        let front: Vec<(f64, f64)> = pareto_frontier(&pts).into_iter().map(|i| pts[i]).collect();
        chart
            .draw_series(DashedLineSeries::new(
                front,
                8,
                5,
                BLACK.mix(0.6).stroke_width(2),
            ))
            .map_err(err)?
            .label("Pareto frontier")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
    }
    for (i, p) in s.points.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if let Some(se) = p.se {
            chart
                .draw_series(std::iter::once(ErrorBar::new_vertical(
                    lx(p),
                    p.y - Z95 * se,
                    p.y,
                    p.y + Z95 * se,
                    color.stroke_width(2),
                    10,
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(Circle::new(
                (lx(p), p.y),
                6,
                color.filled(),
            )))
            .map_err(err)?;
        // The name beside the point (no legend of models: in a grid of
        // small charts a legend box hides points). Points in the right
        // third get their name on the left, so it stays inside the chart.
        let right = (lx(p) - xlo) / (xhi - xlo) > 0.66;
        let width = (p.label.chars().count() as f64 * 6.6) as i32;
        let offset = if right { (-10 - width, -18) } else { (10, -18) };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((lx(p), p.y))
                    + Text::new(p.label.clone(), offset, (FONT, 12).into_font()),
            ))
            .map_err(err)?;
    }
    if s.frontier && s.points.len() > 1 {
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(err)
}

fn draw_bars<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, b: &Bars) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let ng = b.groups.len().max(1);
    let ns = b.series.len().max(1);
    let hi = b
        .values
        .values()
        .map(|(v, se)| v + Z95 * se.unwrap_or(0.0))
        .fold(0.0f64, f64::max);
    let lo = b
        .values
        .values()
        .map(|(v, se)| v - Z95 * se.unwrap_or(0.0))
        .fold(0.0f64, f64::min);
    let (ylo, yhi) = padded(lo, hi.max(0.1));
    let ylo = if lo >= 0.0 { 0.0 } else { ylo };
    let groups = b.groups.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption(&b.title, (FONT, 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(ng as f64 - 0.5), ylo..yhi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.08))
        .x_labels(ng + 1)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
                groups[i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc("task")
        .y_desc(&b.y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(err)?;
    let width = 0.8 / ns as f64;
    for (j, name) in b.series.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let mut rects = Vec::new();
        let mut bars = Vec::new();
        for g in 0..ng {
            if let Some(&(v, se)) = b.values.get(&(g, j)) {
                let x0 = g as f64 - 0.4 + j as f64 * width;
                rects.push(Rectangle::new(
                    [(x0, 0.0f64.max(ylo)), (x0 + width * 0.92, v)],
                    color.filled(),
                ));
                if let Some(se) = se {
                    let xc = x0 + width * 0.46;
                    bars.push(ErrorBar::new_vertical(
                        xc,
                        v - Z95 * se,
                        v,
                        v + Z95 * se,
                        BLACK.stroke_width(1),
                        6,
                    ));
                }
            }
        }
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        chart.draw_series(bars).map_err(err)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)
}

/// The legend box, styled alike on every chart.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    pos: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)
}

/// `1234567` → `1.2M`: axis labels that stay short on a log scale.
fn format_si(v: f64) -> String {
    let a = v.abs();
    let (div, suffix) = if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / div;
    if x.abs() >= 100.0 || suffix.is_empty() && (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}{suffix}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}{suffix}")
    } else {
        format!("{x:.2}{suffix}")
    }
}

fn render(name: &str, spec: &Spec) -> Result<Chart, ReportError> {
    register_font();
    let title = match spec {
        Spec::Scatter(s) => s.title.clone(),
        Spec::Bars(b) => b.title.clone(),
        Spec::Lines(l) => l.title.clone(),
    };
    let fail = |e: String| ReportError::Input(format!("chart {name}: {e}"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        match spec {
            Spec::Scatter(s) => draw_scatter(root, s),
            Spec::Bars(b) => draw_bars(root, b),
            Spec::Lines(l) => draw_lines(root, l),
        }
        .map_err(fail)?;
    }
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        match spec {
            Spec::Scatter(s) => draw_scatter(root, s),
            Spec::Bars(b) => draw_bars(root, b),
            Spec::Lines(l) => draw_lines(root, l),
        }
        .map_err(fail)?;
    }
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgb, SIZE.0, SIZE.1, image::ColorType::Rgb8)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(Chart {
        name: name.to_string(),
        title,
        svg,
        png,
    })
}

fn scatter(
    points: &[ModelPoint],
    title: &str,
    x_desc: &str,
    x: impl Fn(&ModelPoint) -> Option<f64>,
    frontier: bool,
) -> Option<Spec> {
    let pts: Vec<Pt> = points
        .iter()
        .filter_map(|p| {
            x(p).filter(|v| *v > 0.0).map(|xv| Pt {
                label: p.label.clone(),
                x: xv,
                y: p.score,
                se: p.score_se,
            })
        })
        .collect();
    (!pts.is_empty()).then(|| {
        Spec::Scatter(Scatter {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: "mean score over tasks (±1.96 se)".into(),
            points: pts,
            frontier,
        })
    })
}

/// Every chart the data supports (a chart with no points is left out).
pub fn all_charts(runs: &[Run], points: &[ModelPoint]) -> Result<Vec<Chart>, ReportError> {
    let energy_method = points
        .iter()
        .find_map(|p| p.energy_method.clone())
        .unwrap_or_else(|| "n/a".into());
    let currency = points
        .iter()
        .find_map(|p| p.currency.clone())
        .unwrap_or_else(|| "n/a".into());
    let specs = [
        (
            "score_vs_latency",
            scatter(
                points,
                "Score vs latency",
                "mean latency per document (ms, log scale)",
                |p| p.latency_ms,
                true,
            ),
        ),
        (
            "score_vs_memory",
            scatter(
                points,
                "Score vs peak memory",
                "peak RSS (bytes, log scale)",
                |p| p.peak_rss_bytes.map(|b| b as f64),
                true,
            ),
        ),
        (
            "score_vs_energy",
            scatter(
                points,
                "Score vs energy",
                &format!("energy per document (J, {energy_method}, log scale)"),
                |p| p.energy_per_doc_j,
                true,
            ),
        ),
        (
            "score_vs_params",
            scatter(
                points,
                "Score vs parameters",
                "parameters (log scale)",
                |p| p.n_params.map(|n| n as f64),
                true,
            ),
        ),
        (
            "score_vs_file_size",
            scatter(
                points,
                "Score vs model file size",
                "file size (bytes, log scale)",
                |p| p.file_bytes.map(|n| n as f64),
                true,
            ),
        ),
        (
            "score_vs_cost",
            scatter(
                points,
                "Score vs cost (served models with a price)",
                &format!("cost per 1,000 documents ({currency}, log scale)"),
                |p| p.cost_per_1k_docs,
                true,
            ),
        ),
        ("score_by_task", task_bars(runs)),
        ("distill_loss", loss_curves(runs)),
    ];
    specs
        .iter()
        .filter_map(|(name, spec)| spec.as_ref().map(|s| render(name, s)))
        .collect()
}

/// The loss curve of every distilled variant in the runs.
fn loss_curves(runs: &[Run]) -> Option<Spec> {
    let mut series = Vec::new();
    for run in runs {
        for (name, m) in &run.record.models {
            for t in m.lineage.iter().flat_map(|l| &l.training) {
                if !t.losses.is_empty() && !series.iter().any(|(n, _)| n == name) {
                    series.push((name.clone(), t.losses.clone()));
                }
            }
        }
    }
    (!series.is_empty()).then(|| {
        Spec::Lines(Lines {
            title: "Distillation loss".into(),
            x_desc: "training step".into(),
            y_desc: "loss (T²·KL + (1−α)·CE; 10-step mean)".into(),
            series,
            window: 10,
        })
    })
}

fn task_bars(runs: &[Run]) -> Option<Spec> {
    let labels = model_labels(runs);
    let mut tasks = BTreeSet::new();
    let mut models = BTreeSet::new();
    let mut cells = BTreeMap::new();
    for (i, c) in ok_cells(runs) {
        let Some(m) = primary_metric(c) else { continue };
        let label = label_of(&labels, i, &c.model);
        tasks.insert(c.task.clone());
        models.insert(label.clone());
        cells.insert((c.task.clone(), label), (m.value, m.stderr));
    }
    if cells.is_empty() {
        return None;
    }
    let groups: Vec<String> = tasks.into_iter().collect();
    let series: Vec<String> = models.into_iter().collect();
    let mut values = BTreeMap::new();
    for (g, t) in groups.iter().enumerate() {
        for (s, m) in series.iter().enumerate() {
            if let Some(v) = cells.get(&(t.clone(), m.clone())) {
                values.insert((g, s), *v);
            }
        }
    }
    Some(Spec::Bars(Bars {
        title: "Score per task".into(),
        y_desc: "score (acc unless the task has none; ±1.96 se)".into(),
        groups,
        series,
        values,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distilled variant's losses become a curve labelled with its name;
    /// a run without one has no such chart.
    #[test]
    fn loss_curves_of_distilled_variants() {
        use crate::record::{Lineage, ModelRecord, RunRecord, TrainingCost};
        let mut record = RunRecord::default();
        let run = |record: &RunRecord| Run {
            dir: std::path::PathBuf::new(),
            record: record.clone(),
        };
        assert!(loss_curves(&[run(&record)]).is_none());
        record.models.insert(
            "healed".into(),
            ModelRecord {
                lineage: Some(Lineage {
                    training: vec![TrainingCost {
                        losses: (0..40).map(|i| 5.0 / (1.0 + i as f64)).collect(),
                        ..TrainingCost::default()
                    }],
                    ..Lineage::default()
                }),
                ..ModelRecord::default()
            },
        );
        let charts = all_charts(&[run(&record)], &[]).expect("charts");
        let c = charts
            .iter()
            .find(|c| c.name == "distill_loss")
            .expect("loss chart");
        assert!(c.svg.contains("healed") && c.svg.contains("training step"));
        assert_eq!(&c.png[..4], b"\x89PNG");
    }

    #[test]
    fn si_labels() {
        assert_eq!(format_si(135_000_000.0), "135M");
        assert_eq!(format_si(1_500.0), "1.50k");
        assert_eq!(format_si(25.0), "25");
        assert_eq!(format_si(2.5), "2.50");
    }
}
