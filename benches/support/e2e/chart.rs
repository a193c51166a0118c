//! SVG charts of the report (plotters, SVG backend only): grouped bars of medians with every
//! repetition as a dot, lines over time, and lines against a rate on a log scale.

use std::path::Path;

use plotters::prelude::*;
pub use plotters::style::RGBColor;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub const WALSHIFT: RGBColor = RGBColor(31, 119, 180);
pub const IN_SERVER: RGBColor = RGBColor(127, 127, 127);
pub const TRIGGER: RGBColor = RGBColor(255, 127, 14);
pub const NONE: RGBColor = RGBColor(44, 160, 44);
pub const RECVLOGICAL: RGBColor = RGBColor(148, 103, 189);
pub const LIMIT: RGBColor = RGBColor(214, 39, 40);

/// One contender across the groups: its samples per group (empty: not measured there).
pub struct Bars {
    pub name: String,
    pub color: RGBColor,
    pub samples: Vec<Vec<f64>>,
}

/// One line over time: its name, colour and (x, y) points.
pub struct Line {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal line: a target.
pub struct Limit {
    pub value: f64,
    pub label: String,
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// Grouped bars (height: `aggregate` of the repetitions, e.g. their median; dots: the
/// repetitions), the height printed on each bar.
pub fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Bars],
    limits: &[Limit],
    aggregate: fn(&[f64]) -> f64,
) -> Res {
    let all = series
        .iter()
        .flat_map(|s| s.samples.iter().flatten().copied())
        .chain(limits.iter().map(|l| l.value))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if all > 0.0 { all * 1.18 } else { 1.0 };
    let n = groups.len().max(1) as f64;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|v| short(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let count = series.len().max(1) as f64;
    let width = 0.7 / count;
    for (si, s) in series.iter().enumerate() {
        let color = s.color;
        let mut first = true;
        for (gi, samples) in s.samples.iter().enumerate() {
            let finite: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
            if finite.is_empty() {
                continue;
            }
            let m = aggregate(&finite);
            let x0 = gi as f64 + 0.15 + si as f64 * width;
            let x1 = x0 + width * 0.92;
            let bar = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, m)],
                color.filled(),
            )))?;
            if first {
                bar.label(s.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
                first = false;
            }
            let xc = (x0 + x1) / 2.0;
            chart.draw_series(
                finite
                    .iter()
                    .map(|v| Circle::new((xc, *v), 3, BLACK.filled())),
            )?;
            chart.draw_series(std::iter::once(Text::new(
                short(m),
                (xc, m + top * 0.01),
                ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))?;
        }
    }
    for limit in limits {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, limit.value), (n, limit.value)],
                LIMIT.stroke_width(2),
            ))?
            .label(limit.label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], LIMIT.stroke_width(2)));
    }
    for (gi, g) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            g.clone(),
            (px, py + 10),
            ("sans-serif", 14)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line per series over time.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Line],
    limits: &[Limit],
) -> Res {
    let points = || series.iter().flat_map(|l| l.points.iter().copied());
    let x_max = points().map(|(x, _)| x).fold(1.0f64, f64::max);
    let y_max = points()
        .map(|(_, y)| y)
        .chain(limits.iter().map(|l| l.value))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_top)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&|v| short(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    draw_lines(
        &mut chart,
        series,
        limits,
        x_max,
        2,
        SeriesLabelPosition::UpperRight,
    )?;
    root.present()?;
    Ok(())
}

/// Lines against a rate, on a logarithmic y axis (latencies from milliseconds to seconds on
/// one chart): one line per series, a dot per point, the limits as horizontal lines.
pub fn log_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Line],
    limits: &[Limit],
) -> Res {
    let points = || series.iter().flat_map(|l| l.points.iter().copied());
    let x_max = points().map(|(x, _)| x).fold(1.0f64, f64::max) * 1.05;
    let ys = || {
        points()
            .map(|(_, y)| y)
            .chain(limits.iter().map(|l| l.value))
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let y_top = ys().fold(1.0f64, f64::max) * 2.0;
    let y_bottom = ys().fold(f64::INFINITY, f64::min).min(y_top / 10.0) / 2.0;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (y_bottom..y_top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    // A zero has no place on a log axis: it is drawn at the bottom.
    let floored: Vec<Line> = series
        .iter()
        .map(|l| Line {
            name: l.name.clone(),
            color: l.color,
            points: l
                .points
                .iter()
                .map(|&(x, y)| (x, y.max(y_bottom)))
                .collect(),
        })
        .collect();
    draw_lines(
        &mut chart,
        &floored,
        limits,
        x_max,
        3,
        SeriesLabelPosition::UpperLeft,
    )?;
    root.present()?;
    Ok(())
}

/// The series of [`lines`] and [`log_lines`] (a line and a dot per point, dots of
/// `dot` pixels), the limits as horizontal lines across `0..x_max`, and the legend.
fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Line],
    limits: &[Limit],
    x_max: f64,
    dot: u32,
    legend: SeriesLabelPosition,
) -> Res
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for Line {
        name,
        color,
        points: pts,
    } in series
    {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart.draw_series(
            pts.iter()
                .map(move |p| Circle::new(*p, dot, color.filled())),
        )?;
    }
    for limit in limits {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, limit.value), (x_max, limit.value)],
                LIMIT.stroke_width(1),
            ))?
            .label(limit.label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], LIMIT.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A value with about three significant digits.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a == 0.0 {
        "0".to_owned()
    } else {
        format!("{v:.2}")
    }
}
