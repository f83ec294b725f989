//! PNG figures (plotters, with an embedded DejaVu Sans so no system fonts are needed).

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid TrueType font; a failure here would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One line of a figure.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points `(x, y)`.
    pub points: Vec<(f32, f32)>,
}

/// The blog's sine figure: the true curve, the support points, and the model's predictions
/// after several numbers of adaptation steps.
pub fn sine_adaptation(
    path: &Path,
    title: &str,
    truth: &Series,
    support: &[(f32, f32)],
    predictions: &[Series],
) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| Error::Plot(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all = truth.points.iter().chain(predictions.iter().flat_map(|s| s.points.iter())).map(|p| p.1);
    let (lo, hi) =
        all.fold(
            (f32::INFINITY, f32::NEG_INFINITY),
            |(lo, hi), v| {
                if v.is_finite() { (lo.min(v), hi.max(v)) } else { (lo, hi) }
            },
        );
    let (lo, hi) = if lo.is_finite() { (lo - 0.5, hi + 0.5) } else { (-6.0, 6.0) };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(-5.2f32..5.2f32, lo..hi)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("x").y_desc("y").draw().map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(truth.points.iter().copied(), BLACK.stroke_width(3)))
        .map_err(|e| err(&e))?
        .label(truth.label.as_str())
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    let n = predictions.len().max(1);
    for (k, s) in predictions.iter().enumerate() {
        let t = if n == 1 { 1.0 } else { k as f64 / (n - 1) as f64 };
        let color = RGBColor((40.0 + 200.0 * t) as u8, (120.0 - 80.0 * t) as u8, (230.0 - 190.0 * t) as u8);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .draw_series(support.iter().map(|&p| Circle::new(p, 6, RED.filled())))
        .map_err(|e| err(&e))?
        .label("support points")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A line chart of several series over a shared x axis (e.g. accuracy over iterations), y in
/// `[y_min, y_max]`.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    y_range: (f32, f32),
    series: &[Series],
) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| Error::Plot(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f32, f32::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f32..x_max, y_range.0..y_range.1)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(|e| err(&e))?;
    let palette = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
    for (k, s) in series.iter().enumerate() {
        let color = palette[k % palette.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
