//! Snapshot progress on a terminal.
//!
//! Sources already count `tidemark_snapshot_rows_total` and set
//! `tidemark_snapshot_rows_estimated` per table; when stderr is a terminal
//! this task renders those two families as one progress line, redrawn in
//! place, so an operator watching an initial copy sees how far it got.
//! Reading the recorder keeps the connectors free of any UI code.

use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;
use tidemark_core::metrics as m;
use tidemark_core::CancellationToken;

/// Rows read and estimated per `pipeline/table`.
type Progress = BTreeMap<String, (f64, f64)>;

/// Starts the progress line if stderr is a terminal.
pub fn spawn(handle: PrometheusHandle, shutdown: CancellationToken) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    tokio::spawn(async move {
        let mut last = Progress::new();
        let mut drawn = false;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = parse(&handle.render());
            if now != last {
                if let Some(line) = render_line(&now) {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                    drawn = true;
                }
                last = now;
            } else if drawn {
                // Nothing moved for a tick: finish the line so logs start on a fresh one.
                let _ = writeln!(std::io::stderr());
                drawn = false;
            }
        }
    });
}

/// Extracts the snapshot families from the Prometheus text rendering.
fn parse(text: &str) -> Progress {
    let mut out = Progress::new();
    for line in text.lines() {
        let (is_rows, rest) = if let Some(r) = line.strip_prefix(m::SNAPSHOT_ROWS_ESTIMATED) {
            (false, r)
        } else if let Some(r) = line.strip_prefix(m::SNAPSHOT_ROWS) {
            (true, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.rsplit_once("} ")) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let entry = out
            .entry(format!("{}/{}", label(m::L_PIPELINE), label(m::L_TABLE)))
            .or_insert((0.0, 0.0));
        if is_rows {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    out
}

/// `snapshot 12,345 / 50,000 rows (24%) [public.orders 9,000/40,000 …]`, or None before any
/// snapshot started.
fn render_line(p: &Progress) -> Option<String> {
    // Families are registered at zero at start-up: no snapshot has started until one moves.
    if p.values()
        .all(|&(rows, estimated)| rows == 0.0 && estimated == 0.0)
    {
        return None;
    }
    let rows: f64 = p.values().map(|v| v.0).sum();
    let estimated: f64 = p.values().map(|v| v.0.max(v.1)).sum();
    let pct = if estimated > 0.0 {
        (100.0 * rows / estimated).min(100.0)
    } else {
        100.0
    };
    let width = 30usize;
    let filled = ((pct / 100.0) * width as f64).round() as usize;
    let active: Vec<String> = p
        .iter()
        .filter(|(_, (r, e))| r < e)
        .take(2)
        .map(|(t, (r, e))| format!("{t} {r:.0}/{e:.0}"))
        .collect();
    Some(format!(
        "snapshot [{}{}] {pct:>3.0}%  {rows:.0}/{estimated:.0} rows  {}",
        "#".repeat(filled),
        "-".repeat(width - filled.min(width)),
        active.join("  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let text = "# TYPE x counter\n\
            tidemark_snapshot_rows_total{pipeline=\"shop\",table=\"public.orders\"} 250\n\
            tidemark_snapshot_rows_estimated{pipeline=\"shop\",table=\"public.orders\"} 1000\n\
            tidemark_snapshot_rows_total{pipeline=\"shop\",table=\"public.items\"} 750\n";
        let p = parse(text);
        assert_eq!(p["shop/public.orders"], (250.0, 1000.0));
        assert_eq!(p["shop/public.items"], (750.0, 0.0));
        let line = render_line(&p).unwrap();
        assert!(line.contains("57%"), "{line}");
        assert!(line.contains("shop/public.orders 250/1000"), "{line}");
        assert!(render_line(&Progress::new()).is_none());
    }
}
