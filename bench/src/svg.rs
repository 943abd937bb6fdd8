//! `--svg FILE`: a latency-by-percentile plot of the run's histograms, written by hand.
//!
//! Why no plotting crate: the plot is two or three polylines on a log-scaled percentile
//! axis (50 % … 99.999 %), about 100 lines of string formatting; `plotters` would add a
//! dozen crates (font handling among them) to the server binary for that.

use std::fmt::Write as _;

use super::stats::Latency;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// The x axis runs to 99.999 %: log10(1 / (1 − p)) from 0 to 5.
const X_DECADES: f64 = 5.0;

/// One line on the plot.
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Stroke colour.
    pub colour: &'a str,
    /// The histogram (ns).
    pub latency: &'a Latency,
}

/// Renders the plot. Empty histograms are left out.
pub fn render(title: &str, series: &[Series<'_>]) -> String {
    let plotted: Vec<&Series<'_>> = series.iter().filter(|s| s.latency.count() > 0).collect();
    let max_us = plotted
        .iter()
        .map(|s| s.latency.0.max() as f64 / 1000.0)
        .fold(1.0f64, f64::max);
    let y_max = nice_ceiling(max_us);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |q: f64| LEFT + (1.0 / (1.0 - q)).log10().min(X_DECADES) / X_DECADES * plot_w;
    let y_of = |us: f64| TOP + plot_h - (us / y_max).min(1.0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Axes and grid.
    for (label, q) in [
        ("50%", 0.5),
        ("90%", 0.9),
        ("99%", 0.99),
        ("99.9%", 0.999),
        ("99.99%", 0.9999),
        ("99.999%", 0.99999),
    ] {
        let x = x_of(q);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    for k in 0..=5 {
        let v = y_max * k as f64 / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            axis_label(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Lines.
    for (k, series) in plotted.iter().enumerate() {
        let mut points = String::new();
        let steps = 200;
        for i in 0..=steps {
            // Evenly spaced on the log axis.
            let decades = X_DECADES * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-decades);
            let v = series.latency.0.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(points, "{:.1},{:.1} ", x_of(q.min(0.99999)), y_of(v));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            series.colour,
            points.trim_end()
        );
        let ly = TOP + 16.0 + 18.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{} (n = {})</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            series.colour,
            LEFT + 42.0,
            ly + 4.0,
            escape(series.name),
            series.latency.count()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The smallest 1/2/5 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let mut base = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * base >= v {
                return m * base;
            }
        }
        base *= 10.0;
    }
}

fn axis_label(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_a_line_per_non_empty_histogram() {
        let mut a = Latency::default();
        for v in 1..1000 {
            a.record(v * 1000);
        }
        let empty = Latency::default();
        let svg = render(
            "a <test>",
            &[
                Series {
                    name: "ack",
                    colour: "#1f77b4",
                    latency: &a,
                },
                Series {
                    name: "delivery",
                    colour: "#d62728",
                    latency: &empty,
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("a &lt;test&gt;"));
        assert!(svg.contains("ack (n = 999)"));
    }

    #[test]
    fn nice_axis_maximum() {
        assert_eq!(nice_ceiling(0.5), 1.0);
        assert_eq!(nice_ceiling(151.0), 200.0);
        assert_eq!(nice_ceiling(2100.0), 5000.0);
    }
}
