//! Small multiples drawn by hand: one panel per workload, a bar per server.

use std::fmt::Write as _;

use super::{Cell, Group, RunRecord, Spread, num, si};

/// One chart panel: a title, a unit and a bar (median, min, max) per server.
pub(super) struct Panel {
    title: String,
    unit: String,
    bars: Vec<(String, Option<Spread>)>,
}

pub(super) fn panels(
    groups: &[&Group],
    records: &[RunRecord],
    value: impl Fn(&Cell<'_>) -> Option<Spread> + Copy,
    unit: impl Fn(&Group) -> String,
) -> Vec<Panel> {
    groups
        .iter()
        .map(|g| Panel {
            title: g.id.clone(),
            unit: unit(g),
            bars: g
                .servers
                .iter()
                .map(|srv| (srv.clone(), value(&Cell::new(records, &g.id, srv))))
                .collect(),
        })
        .collect()
}

const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Small multiples: each panel has its own y scale (workloads differ by
/// orders of magnitude), bars in server order with the median printed.
pub(super) fn svg(title: &str, panels: &[Panel]) -> String {
    // Every server that appears in a panel, in order of appearance: one color each.
    let mut servers: Vec<String> = Vec::new();
    for p in panels {
        for (name, _) in &p.bars {
            if !servers.contains(name) {
                servers.push(name.clone());
            }
        }
    }
    let cols = 4usize;
    let (pw, ph) = (250.0, 210.0);
    let top = 70.0;
    let rows = panels.len().div_ceil(cols).max(1);
    let width = pw * cols as f64 + 20.0;
    let height = top + ph * rows as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Legend.
    let mut lx = 10.0;
    for (i, name) in servers.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="36" width="12" height="12" fill="{color}"/>"#
        );
        let _ = writeln!(s, r#"<text x="{}" y="46">{}</text>"#, lx + 16.0, esc(name));
        lx += 30.0 + 7.0 * name.len() as f64;
    }
    for (pi, p) in panels.iter().enumerate() {
        let x0 = 10.0 + pw * (pi % cols) as f64;
        let y0 = top + ph * (pi / cols) as f64;
        let (plot_top, plot_h) = (y0 + 22.0, ph - 60.0);
        let base_y = plot_top + plot_h;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{} <tspan font-weight="normal" fill="#555">({})</tspan></text>"##,
            x0 + 5.0,
            y0 + 12.0,
            esc(&p.title),
            esc(&p.unit)
        );
        let max = p
            .bars
            .iter()
            .filter_map(|(_, b)| b.as_ref())
            .map(|b| b.max)
            .fold(0.0f64, f64::max);
        let scale = if max > 0.0 {
            plot_h / (max * 1.12)
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{base_y}" x2="{}" y2="{base_y}" stroke="#333"/>"##,
            x0 + 5.0,
            x0 + pw - 15.0
        );
        let n = p.bars.len().max(1) as f64;
        let slot = (pw - 30.0) / n;
        let bw = r1((slot * 0.7).min(40.0));
        for (i, (name, b)) in p.bars.iter().enumerate() {
            let cx = r1(x0 + 10.0 + slot * (i as f64 + 0.5));
            let ci = servers.iter().position(|s| s == name).unwrap_or(0);
            let color = COLORS[ci % COLORS.len()];
            let Some(b) = b else {
                let _ = writeln!(
                    s,
                    r#"<text x="{cx}" y="{}" text-anchor="middle">n/a</text>"#,
                    base_y - 4.0
                );
                continue;
            };
            let h = r1(b.median * scale);
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{bw}" height="{h}" fill="{color}"><title>{}: {}</title></rect>"#,
                r1(cx - bw / 2.0),
                r1(base_y - h),
                esc(name),
                b.median
            );
            if b.max > b.min {
                let (ya, yb) = (r1(base_y - b.min * scale), r1(base_y - b.max * scale));
                let _ = writeln!(
                    s,
                    r##"<path d="M{cx} {ya} V{yb} M{} {ya} H{} M{} {yb} H{}" stroke="#222" fill="none"/>"##,
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0
                );
            }
            let label = if b.median >= 1000.0 {
                si(b.median)
            } else {
                num(b.median)
            };
            let _ = writeln!(
                s,
                r#"<text x="{cx}" y="{}" text-anchor="middle">{label}</text>"#,
                r1(base_y - b.max.max(b.median) * scale - 4.0)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Rounds an SVG coordinate to 0.1 px (shorter files, same picture).
fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_well_formed_enough() {
        let panels = vec![Panel {
            title: "w".into(),
            unit: "µs".into(),
            bars: vec![
                ("a".into(), Spread::of(vec![1.0, 2.0])),
                ("b<".into(), None),
            ],
        }];
        let s = svg("t", &panels);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("b&lt;") && s.contains("n/a"));
    }
}
