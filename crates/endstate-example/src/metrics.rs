//! In-process counters and their Prometheus text exposition (format 0.0.4), written by hand to keep
//! the service dependency-light.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::faults::Faults;

/// Upper bounds (seconds) of the request duration histogram buckets; `+Inf` is implied.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters shared by all handlers. Relaxed atomics: a scrape may see a request counted in the
/// histogram but not yet in `example_requests_total`, which Prometheus tolerates.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests_ok: AtomicU64,
    requests_error: AtomicU64,
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    health_ok: AtomicU64,
    health_failing: AtomicU64,
    cache_entries: AtomicU64,
    cache_flushes: AtomicU64,
}

/// What `/metrics` reports besides the counters.
pub(crate) struct Info<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) host: &'a str,
    pub(crate) faults: &'a Faults,
    pub(crate) start_time_unix: f64,
    /// Starts recorded in the data directory, this one included; `None` without `--data-dir`.
    pub(crate) starts: Option<u64>,
}

impl Metrics {
    /// Records one traffic request (`/` or `/work`) with its status code and total duration.
    pub(crate) fn observe_request(&self, ok: bool, elapsed: Duration) {
        if ok {
            self.requests_ok.fetch_add(1, Ordering::Relaxed);
            // Every successful answer is "cached"; `POST /admin/flush` drops them.
            self.cache_entries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.requests_error.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn observe_health(&self, ok: bool) {
        let counter = if ok { &self.health_ok } else { &self.health_failing };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops every cached entry and returns how many there were.
    pub(crate) fn flush_cache(&self) -> u64 {
        self.cache_flushes.fetch_add(1, Ordering::Relaxed);
        self.cache_entries.swap(0, Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self, info: &Info<'_>) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(
            out,
            "# HELP example_up Whether the example service is up (always 1 when it answers)."
        );
        let _ = writeln!(out, "# TYPE example_up gauge");
        let _ = writeln!(out, "example_up 1");
        let _ = writeln!(
            out,
            "# HELP example_info Identity of this instance; the value is always 1."
        );
        let _ = writeln!(out, "# TYPE example_info gauge");
        let _ = writeln!(
            out,
            "example_info{{name=\"{}\",version=\"{}\",host=\"{}\"}} 1",
            escape(info.name),
            escape(info.version),
            escape(info.host)
        );
        let _ = writeln!(
            out,
            "# HELP example_start_time_seconds Start time of the process since the Unix epoch."
        );
        let _ = writeln!(out, "# TYPE example_start_time_seconds gauge");
        let _ = writeln!(out, "example_start_time_seconds {:.3}", info.start_time_unix);
        if let Some(starts) = info.starts {
            let _ = writeln!(
                out,
                "# HELP example_starts Starts recorded in the data directory, this one included."
            );
            let _ = writeln!(out, "# TYPE example_starts gauge");
            let _ = writeln!(out, "example_starts {starts}");
        }

        let _ = writeln!(
            out,
            "# HELP example_requests_total Traffic requests (/ and /work) by status code."
        );
        let _ = writeln!(out, "# TYPE example_requests_total counter");
        let _ = writeln!(
            out,
            "example_requests_total{{code=\"200\"}} {}",
            load(&self.requests_ok)
        );
        let _ = writeln!(
            out,
            "example_requests_total{{code=\"500\"}} {}",
            load(&self.requests_error)
        );

        let _ = writeln!(
            out,
            "# HELP example_request_duration_seconds Traffic request duration, injected latency included."
        );
        let _ = writeln!(out, "# TYPE example_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += load(&self.buckets[i]);
            let _ = writeln!(
                out,
                "example_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += load(&self.buckets[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "example_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = load(&self.duration_sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "example_request_duration_seconds_sum {sum:.6}");
        let _ = writeln!(out, "example_request_duration_seconds_count {cumulative}");

        let _ = writeln!(
            out,
            "# HELP example_health_checks_total Answers of /health by status code."
        );
        let _ = writeln!(out, "# TYPE example_health_checks_total counter");
        let _ = writeln!(
            out,
            "example_health_checks_total{{code=\"200\"}} {}",
            load(&self.health_ok)
        );
        let _ = writeln!(
            out,
            "example_health_checks_total{{code=\"503\"}} {}",
            load(&self.health_failing)
        );

        let _ = writeln!(
            out,
            "# HELP example_cache_entries Entries in the in-memory cache (one per successful traffic request)."
        );
        let _ = writeln!(out, "# TYPE example_cache_entries gauge");
        let _ = writeln!(out, "example_cache_entries {}", load(&self.cache_entries));
        let _ = writeln!(out, "# HELP example_cache_flushes_total Calls of POST /admin/flush.");
        let _ = writeln!(out, "# TYPE example_cache_flushes_total counter");
        let _ = writeln!(out, "example_cache_flushes_total {}", load(&self.cache_flushes));

        let faults = info.faults;
        let _ = writeln!(out, "# HELP example_fault_fail_health 1 when /health is made to fail.");
        let _ = writeln!(out, "# TYPE example_fault_fail_health gauge");
        let _ = writeln!(out, "example_fault_fail_health {}", u8::from(faults.fail_health));
        let _ = writeln!(
            out,
            "# HELP example_fault_error_rate Injected probability of a 500 on traffic requests."
        );
        let _ = writeln!(out, "# TYPE example_fault_error_rate gauge");
        let _ = writeln!(out, "example_fault_error_rate {}", faults.error_rate);
        let _ = writeln!(
            out,
            "# HELP example_fault_latency_seconds Injected delay before answering a traffic request."
        );
        let _ = writeln!(out, "# TYPE example_fault_latency_seconds gauge");
        let _ = writeln!(
            out,
            "example_fault_latency_seconds {}",
            faults.latency_ms as f64 / 1000.0
        );
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        let faults = Faults::default();
        m.render(&Info {
            name: "a\"b",
            version: "1.0.0",
            host: "h",
            faults: &faults,
            start_time_unix: 0.0,
            starts: None,
        })
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.observe_request(true, Duration::from_millis(3));
        m.observe_request(false, Duration::from_millis(300));
        m.observe_request(true, Duration::from_secs(20));
        let text = render(&m);
        for line in [
            "example_requests_total{code=\"200\"} 2",
            "example_requests_total{code=\"500\"} 1",
            "example_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "example_request_duration_seconds_bucket{le=\"0.25\"} 1",
            "example_request_duration_seconds_bucket{le=\"0.5\"} 2",
            "example_request_duration_seconds_bucket{le=\"10\"} 2",
            "example_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "example_request_duration_seconds_count 3",
            "example_request_duration_seconds_sum 20.303000",
            "example_info{name=\"a\\\"b\",version=\"1.0.0\",host=\"h\"} 1",
            "example_cache_entries 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(m.flush_cache(), 2);
        assert!(render(&m).lines().any(|l| l == "example_cache_entries 0"));
    }
}
