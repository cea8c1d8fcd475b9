//! Line charts drawn on the server as SVG, so the dashboard needs no
//! script, no library and no network to show them: a few polylines over a
//! grid, with the scale's top and the time span as text. Every character
//! put into the picture is one of ours (numbers and fixed labels), escaped
//! all the same; colours come from the page's stylesheet by class (the
//! content security policy forbids inline styles).

use std::fmt::Write as _;

/// The drawing's size in its own units; it scales to the page's width.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 150.0;
/// Room for the scale's labels: left, top and bottom.
const LEFT: f64 = 44.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 18.0;

/// One line: its class (`ok`, `failed`, `p50`, `p95`) and its values, one
/// per interval; `None` leaves a gap.
pub(super) struct Series {
    pub(super) class: &'static str,
    pub(super) values: Vec<Option<f64>>,
}

/// A span of intervals `from..to` that shows `text` when pointed at (a
/// native tooltip: an SVG `<title>`, no script).
pub(super) struct Tip {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) text: String,
}

/// A chart of `series` (all the same length), `unit` after the scale's
/// top; `ticks` label intervals under the time axis (the first starts at
/// the left, the last ends at the right), `tips` spans of them.
pub(super) fn svg(
    label: &str,
    series: &[Series],
    unit: &str,
    ticks: &[(usize, String)],
    tips: &[Tip],
) -> String {
    let top = nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .fold(0.0_f64, |a, &b| a.max(b)),
    );
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n.max(1) as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        escape(label)
    );
    // Grid: the top, the middle and the base.
    for (frac, text) in [(1.0, format_value(top)), (0.5, format_value(top / 2.0))] {
        let gy = y(top * frac);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\"/>\
             <text class=\"scale\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - 4.0,
            LEFT - 4.0,
            gy + 4.0,
            escape(&format!("{text}{unit}")),
        );
    }
    let base = y(0.0);
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\"/>\
         <text class=\"scale\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>",
        WIDTH - 4.0,
        LEFT - 4.0,
        base + 4.0,
    );
    for (k, (i, text)) in ticks.iter().enumerate() {
        let (tx, anchor) = match k {
            0 => (LEFT, "start"),
            k if k + 1 == ticks.len() => (WIDTH - 4.0, "end"),
            _ => (x(*i), "middle"),
        };
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{tx:.1}\" y1=\"{base:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\"/>\
             <text class=\"scale\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            base + 3.0,
            HEIGHT - 3.0,
            escape(text),
        );
    }
    for s in series {
        // One path; a gap starts a new stroke. A lone point is drawn as a
        // dot, which a path of one point would not show.
        let mut d = String::new();
        let mut run = 0;
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => {
                    let cmd = if run == 0 { 'M' } else { 'L' };
                    let _ = write!(d, "{cmd}{:.1} {:.1}", x(i), y(*v));
                    run += 1;
                }
                None => run = 0,
            }
        }
        for (i, v) in s.values.iter().enumerate() {
            let alone =
                |j: Option<usize>| j.and_then(|j| s.values.get(j)).is_none_or(Option::is_none);
            if let Some(v) = v {
                if alone(i.checked_sub(1)) && alone(Some(i + 1)) {
                    let _ = write!(
                        out,
                        "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\"/>",
                        s.class,
                        x(i),
                        y(*v)
                    );
                }
            }
        }
        if !d.is_empty() {
            let _ = write!(out, "<path class=\"{}\" d=\"{d}\"/>", s.class);
        }
    }
    // Last, so that they are on top to be pointed at.
    let step = plot_w / n.max(1) as f64;
    for tip in tips {
        let _ = write!(
            out,
            "<rect class=\"tip\" x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{plot_h:.1}\"><title>{}</title></rect>",
            LEFT + step * tip.from as f64,
            step * (tip.to - tip.from) as f64,
            escape(&tip.text),
        );
    }
    out.push_str("</svg>");
    out
}

/// The scale's top: at least `max`, a 1, 2 or 5 times a power of ten.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&top| top >= max)
        .unwrap_or(10.0 * power)
}

/// A scale label: 1.5k, 20, 0.5.
fn format_value(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v >= 1_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_series_with_gaps_and_lone_points() {
        let ok = Series {
            class: "ok",
            values: vec![Some(1.0), Some(3.0), None, Some(2.0), None],
        };
        let failed = Series {
            class: "failed",
            values: vec![None; 5],
        };
        let ticks = [(0, "10 min ago".to_owned()), (4, "now".to_owned())];
        let tips = [Tip {
            from: 0,
            to: 2,
            text: "2 & <3>".into(),
        }];
        let picture = svg("jobs", &[ok, failed], "/s", &ticks, &tips);
        assert!(picture.starts_with("<svg class=\"chart\""), "{picture}");
        assert!(picture.ends_with("</svg>"));
        // One stroke of two points, and a dot for the lone one.
        let path = picture.split("<path class=\"ok\" d=\"").nth(1).unwrap();
        let d = path.split('"').next().unwrap();
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        assert_eq!(picture.matches("<circle class=\"ok\"").count(), 1);
        // No stroke for a series without values.
        assert!(!picture.contains("class=\"failed\""));
        // The scale's top is 5 (over the largest value, 3), labelled.
        assert!(picture.contains(">5/s<"), "{picture}");
        assert!(picture.contains(">10 min ago<") && picture.contains(">now<"));
        // The tip covers its two intervals, its text escaped.
        assert!(
            picture.contains("<title>2 &amp; &lt;3&gt;</title></rect>"),
            "{picture}"
        );
    }

    #[test]
    fn the_scale_rounds_up_to_one_two_or_five() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(2000.0), 2000.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(format_value(1500.0), "1.5k");
        assert_eq!(format_value(2_000_000.0), "2M");
        assert_eq!(format_value(0.25), "0.25");
    }

    #[test]
    fn labels_are_escaped() {
        let ticks = [(0, "\"x\"".to_owned()), (1, "<y>".to_owned())];
        let picture = svg("<a&b>", &[], "", &ticks, &[]);
        assert!(!picture.contains("<a&b>") && !picture.contains("<y>"));
        assert!(picture.contains("&lt;a&amp;b&gt;"));
    }
}
