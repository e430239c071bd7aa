//! The capacity chart (`--chart`): one SVG of four panels sharing the time
//! axis: offered, sent and ingested rate; consumer lag; event-to-queryable
//! latency of every marker with each step's p50/p99 and the SLO; ingest
//! RSS. Step boundaries are marked with the offered rate. Hand-written SVG,
//! so no plotting dependency. Pure.

use std::fmt::Write as _;

use super::report::{Report, Sample};

const W: f64 = 1000.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 56.0;
const PANEL_H: f64 = 160.0;
const GAP: f64 = 56.0;
const RATE_WINDOW_S: f64 = 3.0;

const BLUE: &str = "#1f77b4";
const GREEN: &str = "#2ca02c";
const ORANGE: &str = "#ff7f0e";
const PURPLE: &str = "#9467bd";
const RED: &str = "#d62728";
const GREY: &str = "#7f7f7f";

/// A nice axis maximum at or above `v` and its tick step (1, 2 or 5 × 10^k,
/// about five ticks).
pub(crate) fn nice_axis(v: f64) -> (f64, f64) {
    if !v.is_finite() || v <= 0.0 {
        return (1.0, 0.2);
    }
    let raw = v / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * mag);
    ((v / step - 1e-9).ceil().max(1.0) * step, step)
}

/// `1500` → `1.5k`, `50000` → `50k`, `2000000` → `2M`.
pub(crate) fn si(v: f64) -> String {
    let (d, suffix) = match v.abs() {
        a if a >= 1e9 => (1e9, "G"),
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let x = v / d;
    if (x - x.round()).abs() < 1e-9 { format!("{}{suffix}", x.round()) } else { format!("{x:.1}{suffix}") }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

struct Panel {
    top: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.x_max).clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + PANEL_H - (v / self.y_max).clamp(0.0, 1.0) * PANEL_H
    }

    /// Frame, horizontal grid with labels, title, time ticks.
    fn frame(&self, out: &mut String, title: &str, y_step: f64, fmt: &dyn Fn(f64) -> String) {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, self.top, self.top + PANEL_H);
        let _ = writeln!(out, r#"<text x="{x0}" y="{}" font-size="13" font-weight="bold">{}</text>"#, y0 - 8.0, esc(title));
        let mut v = 0.0;
        while v <= self.y_max * (1.0 + 1e-9) {
            let y = self.y(v);
            let _ = writeln!(out, r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e0e0e0"/>"##);
            let _ = writeln!(out, r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#, x0 - 6.0, y + 4.0, fmt(v));
            v += y_step;
        }
        let (_, t_step) = nice_axis(self.x_max);
        let mut t = 0.0;
        while t <= self.x_max * (1.0 + 1e-9) {
            let x = self.x(t);
            let _ = writeln!(out, r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="#000"/>"##, y1 + 4.0);
            let _ = writeln!(out, r#"<text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#, y1 + 16.0, si(t));
            t += t_step;
        }
        let _ = writeln!(out, r##"<rect x="{x0}" y="{y0}" width="{}" height="{PANEL_H}" fill="none" stroke="#000"/>"##, x1 - x0);
    }

    fn polyline(&self, out: &mut String, pts: &[(f64, f64)], color: &str, dashed: bool) {
        if pts.is_empty() {
            return;
        }
        let coords: Vec<String> = pts.iter().map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v))).collect();
        let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(out, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>"#, coords.join(" "));
    }

    fn legend(&self, out: &mut String, items: &[(&str, &str, bool)]) {
        let x = W - RIGHT + 14.0;
        for (i, (label, color, dashed)) in items.iter().enumerate() {
            let y = self.top + 12.0 + i as f64 * 18.0;
            let dash = if *dashed { r#" stroke-dasharray="6,4""# } else { "" };
            let _ = writeln!(out, r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>"#, x + 22.0);
            let _ = writeln!(out, r#"<text x="{}" y="{}" font-size="11">{}</text>"#, x + 28.0, y + 4.0, esc(label));
        }
    }

    fn no_data(&self, out: &mut String) {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" font-size="12" fill="#7f7f7f" text-anchor="middle">no data</text>"##,
            (LEFT + W - RIGHT) / 2.0,
            self.top + PANEL_H / 2.0
        );
    }
}

/// Rate of a counter at each sample, over the window of about
/// [`RATE_WINDOW_S`] before it (flushes make per-sample differences jumpy).
fn rates(samples: &[Sample], f: impl Fn(&Sample) -> Option<u64>) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, u64)> = samples.iter().filter_map(|s| Some((s.t_s, f(s)?))).collect();
    let mut out = Vec::new();
    for i in 1..pts.len() {
        let j = (0..i).rev().find(|&j| pts[i].0 - pts[j].0 >= RATE_WINDOW_S).unwrap_or(0);
        let dt = pts[i].0 - pts[j].0;
        if dt > 0.0 {
            out.push((pts[i].0, pts[i].1.saturating_sub(pts[j].1) as f64 / dt));
        }
    }
    out
}

fn max_of(it: impl Iterator<Item = f64>) -> f64 {
    it.filter(|v| v.is_finite()).fold(0.0, f64::max)
}

/// Renders the chart.
pub fn render(r: &Report) -> String {
    let x_end = max_of(
        r.samples
            .iter()
            .map(|s| s.t_s)
            .chain(r.steps.iter().map(|s| s.end_s))
            .chain(r.markers.iter().filter_map(|m| m.seen_s)),
    );
    let (x_max, _) = nice_axis(x_end);
    let height = TOP + 4.0 * (PANEL_H + GAP);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r##"<rect width="{W}" height="{height}" fill="#fff"/>"##);
    let verdict = match r.max_sustained_rate {
        Some(x) => format!("max sustained {}/s", si(x)),
        None => "no step sustained".to_owned(),
    };
    let title = format!("estate capacity run {}: {verdict}, p99 SLO {} ms", r.run_id, r.settings.slo_ms);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#, esc(&title));
    let _ = writeln!(out, r#"<text x="{LEFT}" y="42" font-size="11">stopped: {}</text>"#, esc(&r.stopped));
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="11" text-anchor="start">time (s)</text>"#, height - 10.0);
    let panel = |i: usize, y_max: f64| Panel { top: TOP + 18.0 + i as f64 * (PANEL_H + GAP), x_max, y_max };

    // 1. Rates.
    let offered: Vec<(f64, f64)> = r.samples.iter().map(|s| (s.t_s, s.offered_rate)).collect();
    let sent = rates(&r.samples, |s| Some(s.sent));
    let ingested = rates(&r.samples, |s| s.events_in);
    let (y_max, step) = nice_axis(max_of(offered.iter().chain(&sent).chain(&ingested).map(|p| p.1).chain(r.steps.iter().map(|s| s.offered_rate))));
    let p = panel(0, y_max);
    p.frame(&mut out, "rate (messages/s)", step, &si);
    for s in &r.steps {
        let x = p.x(s.start_s);
        let bottom = TOP + 18.0 + 4.0 * (PANEL_H + GAP) - GAP;
        let _ = writeln!(out, r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="#bbb" stroke-dasharray="2,3"/>"##, p.top);
        let _ = writeln!(out, r##"<text x="{:.1}" y="{}" font-size="10" fill="#555">{}/s</text>"##, x + 3.0, p.top + 11.0, si(s.offered_rate));
    }
    p.polyline(&mut out, &offered, GREY, true);
    p.polyline(&mut out, &sent, BLUE, false);
    p.polyline(&mut out, &ingested, GREEN, false);
    p.legend(&mut out, &[("offered", GREY, true), ("sent", BLUE, false), ("ingested", GREEN, false)]);
    if offered.is_empty() {
        p.no_data(&mut out);
    }

    // 2. Lag.
    let lag: Vec<(f64, f64)> = r.samples.iter().filter_map(|s| Some((s.t_s, s.lag? as f64))).collect();
    let (y_max, step) = nice_axis(max_of(lag.iter().map(|p| p.1)));
    let p = panel(1, y_max);
    p.frame(&mut out, "consumer lag (messages)", step, &si);
    p.polyline(&mut out, &lag, ORANGE, false);
    p.legend(&mut out, &[("lag", ORANGE, false)]);
    if lag.is_empty() {
        p.no_data(&mut out);
    }

    // 3. Latency.
    let slo = r.settings.slo_ms;
    let (y_max, step) = nice_axis(max_of(r.steps.iter().filter_map(|s| s.latency_p99_ms).chain([slo * 1.25])));
    let p = panel(2, y_max);
    p.frame(&mut out, "event-to-queryable latency (ms)", step, &si);
    for m in &r.markers {
        let color = if m.seen_s.is_some() { BLUE } else { RED };
        let (x, y) = (p.x(m.sent_s), p.y(m.latency_ms(x_end)));
        let _ = writeln!(out, r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.8" fill="{color}" fill-opacity="0.6"/>"#);
    }
    for s in &r.steps {
        for (v, color) in [(s.latency_p50_ms, GREEN), (s.latency_p99_ms, PURPLE)] {
            if let Some(v) = v {
                p.polyline(&mut out, &[(s.start_s, v), (s.end_s, v)], color, false);
            }
        }
    }
    p.polyline(&mut out, &[(0.0, slo), (x_max, slo)], RED, true);
    p.legend(
        &mut out,
        &[("marker", BLUE, false), ("unseen (age)", RED, false), ("step p50", GREEN, false), ("step p99", PURPLE, false), ("SLO", RED, true)],
    );
    if r.markers.is_empty() {
        p.no_data(&mut out);
    }

    // 4. RSS.
    let rss: Vec<(f64, f64)> = r.samples.iter().filter_map(|s| Some((s.t_s, s.rss_bytes? as f64 / (1024.0 * 1024.0)))).collect();
    let (y_max, step) = nice_axis(max_of(rss.iter().map(|p| p.1)));
    let p = panel(3, y_max);
    p.frame(&mut out, "ingest resident memory (MiB)", step, &si);
    p.polyline(&mut out, &rss, PURPLE, false);
    p.legend(&mut out, &[("RSS", PURPLE, false)]);
    if rss.is_empty() {
        p.no_data(&mut out);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::report::tests::report;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(1000.0), (1000.0, 200.0));
        assert_eq!(nice_axis(51_000.0), (60_000.0, 20_000.0));
        assert_eq!(nice_axis(2500.0), (2500.0, 500.0));
        assert_eq!(nice_axis(2600.0), (3000.0, 1000.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(f64::NAN), (1.0, 0.2));
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
        assert_eq!((si(50_000.0), si(1500.0), si(2e6), si(12.0), si(0.5)), ("50k".into(), "1.5k".into(), "2M".into(), "12".into(), "0.5".into()));
    }

    #[test]
    fn the_chart_draws_every_series_and_marker() {
        let r = report();
        let svg = render(&r);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), r.markers.len());
        assert_eq!(svg.matches(&format!(r#"fill="{RED}" fill-opacity"#)).count(), 20, "unseen markers in red");
        // offered, sent, ingested, lag, 2 steps × (p50, p99), SLO, RSS
        assert_eq!(svg.matches("<polyline").count(), 3 + 1 + 4 + 1 + 1);
        for t in ["rate (messages/s)", "consumer lag (messages)", "event-to-queryable latency (ms)", "ingest resident memory (MiB)", "1k/s", "2k/s", "SLO"] {
            assert!(svg.contains(t), "{t} missing");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf") && !svg.contains("no data"));
        // Every coordinate is inside the picture.
        let mut n = 0;
        for attr in [" x=\"", " y=\"", " cx=\"", " cy=\"", " x1=\"", " x2=\"", " y1=\"", " y2=\"", " points=\""] {
            for (i, _) in svg.match_indices(attr) {
                let v = &svg[i + attr.len()..];
                for c in v[..v.find('"').unwrap()].split([' ', ',']) {
                    let c: f64 = c.parse().unwrap();
                    assert!((0.0..=W).contains(&c), "{attr}{c}");
                    n += 1;
                }
            }
        }
        assert!(n > 500, "{n} coordinates");
    }

    #[test]
    fn an_empty_run_still_renders() {
        let mut r = report();
        r.samples.clear();
        r.markers.clear();
        r.steps.clear();
        r.max_sustained_rate = None;
        let svg = render(&r);
        assert_eq!(svg.matches("no data").count(), 4);
        assert!(svg.contains("no step sustained") && !svg.contains("NaN"));
    }
}
