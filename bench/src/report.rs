//! The results file, the printed table and the delivered-vs-offered plot.

use std::fmt::Write as _;

use serde::Serialize;

use crate::search::StepResult;

/// One figure of the table: its name, the median over runs, each run's value, the target.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Short name, e.g. "uplinks/s".
    pub name: String,
    /// Median over the runs that produced a value.
    pub median: Option<f64>,
    /// The value of each run (`None`: that run did not measure it).
    pub runs: Vec<Option<f64>>,
    /// Unit, e.g. "ms".
    pub unit: String,
    /// The issue's target, as text (e.g. "≥ 10000").
    pub target: String,
    /// Whether the median meets the target (`None`: no target or no value).
    pub met: Option<bool>,
}

/// How a target is compared.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// No target.
    None,
    /// At least this.
    AtLeast(f64),
    /// At most this.
    AtMost(f64),
}

impl Figure {
    /// A figure from per-run values, with its median and whether it meets `target`.
    pub fn new(name: &str, unit: &str, runs: Vec<Option<f64>>, target: Target) -> Self {
        let median = crate::stats::median_of(runs.iter().copied());
        let (target_text, met) = match target {
            Target::None => (String::new(), None),
            Target::AtLeast(t) => (format!(">= {}", fmt_num(t)), median.map(|m| m >= t)),
            Target::AtMost(t) => (format!("<= {}", fmt_num(t)), median.map(|m| m <= t)),
        };
        Self {
            name: name.to_owned(),
            median,
            runs,
            unit: unit.to_owned(),
            target: target_text,
            met,
        }
    }
}

/// A number with at most one decimal for small values, none for large ones.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), fmt_num)
}

/// The table printed at the end: figure, median, each run, unit, target, verdict.
pub fn table(figures: &[Figure]) -> String {
    let runs = figures.iter().map(|f| f.runs.len()).max().unwrap_or(0);
    let mut header = vec!["figure".to_owned(), "median".to_owned()];
    header.extend((1..=runs).map(|i| format!("run {i}")));
    header.extend(["unit".to_owned(), "target".to_owned(), "".to_owned()]);
    let mut rows = vec![header];
    for f in figures {
        let mut row = vec![f.name.clone(), opt(f.median)];
        row.extend((0..runs).map(|i| opt(f.runs.get(i).copied().flatten())));
        row.push(f.unit.clone());
        row.push(f.target.clone());
        row.push(
            match f.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            }
            .to_owned(),
        );
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                // Names and units left-aligned, numbers right-aligned.
                if c == 0 || c >= cols - 3 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (cols - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

/// An SVG plot of delivered against offered rate, one series per run, with the ideal
/// diagonal (delivered = offered).
pub fn plot_svg(runs: &[Vec<StepResult>]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 440.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 30.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let max = runs
        .iter()
        .flatten()
        .flat_map(|s| [s.offered, s.delivered_rate])
        .fold(1.0_f64, f64::max);
    let top = nice_ceiling(max);
    let x = |v: f64| L + v / top * (W - L - R);
    let y = |v: f64| H - B - v / top * (H - T - B);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Delivered vs offered uplinks/s (tern, end to end)</text>"#,
        W / 2.0
    );
    for i in 0..=5 {
        let v = top * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            L,
            y(v),
            W - R,
            y(v),
            L - 6.0,
            y(v) + 4.0,
            fmt_num(v),
            x(v),
            T,
            x(v),
            H - B,
            x(v),
            H - B + 16.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{L}" y1="{:.1}" x2="{L}" y2="{T}" stroke="black"/><line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        H - B,
        H - B,
        W - R,
        H - B
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered uplinks/s (each heard by 3 gateways)</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">delivered uplinks/s (MQTT)</text>"#,
        (L + W - R) / 2.0,
        H - 12.0,
        (T + H - B) / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
        x(0.0),
        y(0.0),
        x(top),
        y(top)
    );
    for (i, steps) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted: Vec<&StepResult> = steps.iter().collect();
        sorted.sort_by(|a, b| a.offered.total_cmp(&b.offered));
        let points: Vec<String> = sorted
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.offered), y(s.delivered_rate)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        for s in sorted {
            let fill = if s.verdict == crate::search::Verdict::Sustained {
                color
            } else {
                "white"
            };
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{color}"><title>offered {} delivered {} ({:?})</title></circle>"#,
                x(s.offered),
                y(s.delivered_rate),
                fmt_num(s.offered),
                fmt_num(s.delivered_rate),
                s.verdict
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}">run {}</text>"#,
            L + 10.0,
            T + 16.0 + 16.0 * i as f64,
            i + 1
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" fill="#555">filled: sustained; hollow: dropped, backlog or generator-bound</text>"##,
        L + 10.0,
        T + 16.0 + 16.0 * runs.len() as f64
    );
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2, 5 × 10^k at or above `v`.
pub fn nice_ceiling(v: f64) -> f64 {
    let mut scale = 1.0;
    while scale * 10.0 < v {
        scale *= 10.0;
    }
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * scale)
        .find(|c| *c >= v)
        .unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Verdict;

    #[test]
    fn figures_take_the_median_and_judge_the_target() {
        let f = Figure::new(
            "uplinks/s",
            "1/s",
            vec![Some(900.0), Some(1100.0), Some(1000.0)],
            Target::AtLeast(10_000.0),
        );
        assert_eq!(f.median, Some(1000.0));
        assert_eq!(f.met, Some(false));
        let f = Figure::new("p99", "ms", vec![Some(3.0), None], Target::AtMost(20.0));
        assert_eq!(f.median, Some(3.0));
        assert_eq!(f.met, Some(true));
        let f = Figure::new("rss", "MiB", vec![None], Target::None);
        assert_eq!((f.median, f.met), (None, None));
    }

    #[test]
    fn table_aligns_columns_and_marks_misses() {
        let t = table(&[
            Figure::new(
                "uplinks/s",
                "1/s",
                vec![Some(1500.0), Some(1400.0), Some(1600.0)],
                Target::AtLeast(10_000.0),
            ),
            Figure::new(
                "p99 latency",
                "ms",
                vec![Some(4.0), None, Some(5.0)],
                Target::AtMost(20.0),
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("figure"), "{t}");
        assert!(lines[1].chars().all(|c| c == '-'), "{t}");
        assert!(
            lines[2].contains("1500") && lines[2].ends_with("MISSED"),
            "{t}"
        );
        assert!(
            lines[3].contains("4.00") && lines[3].contains(" - ") && lines[3].ends_with("ok"),
            "{t}"
        );
        // The median column is right-aligned: both values end at the same column.
        let end = |l: &str, v: &str| l.find(v).unwrap() + v.len();
        assert_eq!(end(lines[2], "1500"), end(lines[3], "4.50"), "{t}");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(fmt_num(12345.678), "12346");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(f64::NAN), "-");
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.5), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(1234.0), 2000.0);
        assert_eq!(nice_ceiling(6000.0), 10_000.0);
    }

    #[test]
    fn plot_has_a_point_per_step() {
        let step = |o: f64, d: f64, v: Verdict| StepResult {
            offered: o,
            delivered_rate: d,
            verdict: v,
            ..Default::default()
        };
        let svg = plot_svg(&[vec![
            step(500.0, 500.0, Verdict::Sustained),
            step(1000.0, 800.0, Verdict::Dropped),
        ]]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("offered 1000 delivered 800 (Dropped)"));
    }
}
