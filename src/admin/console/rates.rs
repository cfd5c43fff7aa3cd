//! Postings/s and deliveries/s over the last minutes, for the overview's
//! chart: a small ring buffer sampled from the process's own counters
//! (`ledgerline_postings_total`, `ledgerline_deliveries_total{outcome=
//! "delivered"}`, read from the Prometheus recorder), drawn as inline SVG.
//! The rates are this instance's: a standby instance shows zero.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::metrics::Ticks;

/// How often the counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: 5 minutes.
pub const SAMPLES_KEPT: usize = 61;

/// The counters at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub at_s: f64,
    pub postings: f64,
    pub delivered: f64,
}

/// The last [`SAMPLES_KEPT`] samples.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<Sample>>,
}

/// Sums the counters the chart shows from Prometheus text: every series of
/// `ledgerline_postings_total`, and `ledgerline_deliveries_total` with
/// `outcome="delivered"`.
pub fn counters(prometheus_text: &str) -> (f64, f64) {
    let (mut postings, mut delivered) = (0.0, 0.0);
    for line in prometheus_text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "ledgerline_postings_total" => postings += value,
            "ledgerline_deliveries_total" if labels.contains("outcome=\"delivered\"") => {
                delivered += value
            }
            _ => {}
        }
    }
    (postings, delivered)
}

impl Rates {
    /// Adds a sample, dropping the oldest beyond [`SAMPLES_KEPT`].
    pub fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == SAMPLES_KEPT {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Per interval between samples: (end in seconds since the first
    /// sample, postings/s, deliveries/s).
    pub fn series(&self) -> Vec<(f64, f64, f64)> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let start = q.front().map_or(0.0, |s| s.at_s);
        q.iter()
            .zip(q.iter().skip(1))
            .filter(|(a, b)| b.at_s > a.at_s)
            .map(|(a, b)| {
                let dt = b.at_s - a.at_s;
                (
                    b.at_s - start,
                    ((b.postings - a.postings) / dt).max(0.0),
                    ((b.delivered - a.delivered) / dt).max(0.0),
                )
            })
            .collect()
    }

    /// Samples the counters every [`SAMPLE_INTERVAL`] until `shutdown`.
    pub async fn sample(&self, handle: Option<PrometheusHandle>, shutdown: CancellationToken) {
        let Some(handle) = handle else { return };
        let started = tokio::time::Instant::now();
        let mut ticks = Ticks::new(SAMPLE_INTERVAL, shutdown);
        while ticks.next().await {
            let (postings, delivered) = counters(&handle.render());
            self.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                postings,
                delivered,
            });
        }
    }
}

/// Chart size in SVG user units.
const W: f64 = 600.0;
const H: f64 = 120.0;

/// The series as an SVG line chart (postings/s and deliveries/s), with its
/// peak as the scale. Text only (numbers and fixed words): safe to embed.
pub fn svg(series: &[(f64, f64, f64)]) -> String {
    let span = series.last().map_or(1.0, |p| p.0.max(1.0));
    let peak = series
        .iter()
        .flat_map(|p| [p.1, p.2])
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let points = |pick: fn(&(f64, f64, f64)) -> f64| {
        let mut s = String::new();
        for p in series {
            let x = p.0 / span * W;
            let y = H - pick(p) / peak * H;
            let _ = write!(s, "{x:.1},{y:.1} ");
        }
        s.trim_end().to_owned()
    };
    format!(
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-label="postings and deliveries per second"><line class="axis" x1="0" y1="{H}" x2="{W}" y2="{H}"/><text class="peak" x="2" y="12">{peak:.1}/s</text><polyline class="postings" points="{p}"/><polyline class="deliveries" points="{d}"/></svg>"#,
        h = H + 2.0,
        p = points(|p| p.1),
        d = points(|p| p.2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_postings_and_only_delivered_deliveries() {
        let text = "# TYPE ledgerline_postings_total counter\n\
            ledgerline_postings_total{registry=\"a\"} 10\n\
            ledgerline_postings_total{registry=\"b\"} 5\n\
            ledgerline_deliveries_total{registry=\"a\",outcome=\"delivered\"} 7\n\
            ledgerline_deliveries_total{registry=\"a\",outcome=\"dead\"} 2\n\
            ledgerline_postings_total_other 100\n";
        assert_eq!(counters(text), (15.0, 7.0));
    }

    #[test]
    fn rates_are_differences_per_second_and_the_buffer_is_bounded() {
        let r = Rates::default();
        for i in 0..(SAMPLES_KEPT + 10) {
            let t = i as f64 * 5.0;
            r.push(Sample {
                at_s: t,
                postings: t * 4.0,
                delivered: t * 2.0,
            });
        }
        let s = r.series();
        assert_eq!(s.len(), SAMPLES_KEPT - 1);
        assert!(s.iter().all(|p| p.1 == 4.0 && p.2 == 2.0));
        assert_eq!(s[0].0, 5.0);
        let svg = svg(&s);
        assert!(svg.contains("4.0/s") && svg.contains("class=\"postings\""));
        // At half the peak: y = H/2.
        assert!(svg.contains(",60.0"), "{svg}");
    }
}
