//! The server's Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//!
//! Names follow `endstate_<area>_<name>_<unit>[_total]`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub(crate) state: String,
}

/// A Git source's webhook call and what became of it (`accepted`, `bad_signature`,
/// `unsigned`, `replayed`, `no_secret`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HookLabels {
    pub(crate) source: String,
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CheckLabels {
    pub(crate) check: String,
    pub(crate) target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PerfLabels {
    pub(crate) check: String,
    pub(crate) target: String,
    pub(crate) label: String,
    pub(crate) unit: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub(crate) revisions_submitted: Counter,
    pub(crate) revisions_refused: Counter,
    pub(crate) change_transitions: Family<StateLabels, Counter>,
    pub(crate) open_changes: Gauge,
    /// The last status of every check on every target: 0 ok, 1 warning, 2 critical, 3 unknown.
    pub(crate) check_status: Family<CheckLabels, Gauge>,
    /// The last performance data of every check on every target, as the plugin gave it.
    pub(crate) check_perfdata: Family<PerfLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Calls of Git sources' webhooks, by source and outcome.
    pub(crate) source_hooks: Family<HookLabels, Counter>,
}

fn request_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            request_histogram as fn() -> Histogram,
        );
        let revisions_submitted = Counter::default();
        let revisions_refused = Counter::default();
        let change_transitions = Family::<StateLabels, Counter>::default();
        let open_changes = Gauge::default();
        registry.register("endstate_api_requests", "HTTP requests served", requests.clone());
        registry.register(
            "endstate_api_request_seconds",
            "HTTP request latency",
            request_seconds.clone(),
        );
        registry.register(
            "endstate_revisions_submitted",
            "Revisions accepted and stored",
            revisions_submitted.clone(),
        );
        registry.register(
            "endstate_revisions_refused",
            "Revisions refused by validation or policy",
            revisions_refused.clone(),
        );
        registry.register(
            "endstate_change_transitions",
            "Change state transitions, by new state",
            change_transitions.clone(),
        );
        registry.register(
            "endstate_changes_open",
            "Changes not yet terminal",
            open_changes.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            "endstate_build_info",
            "The server's build: always 1, the version as a label",
            build_info,
        );
        let check_status = Family::<CheckLabels, Gauge>::default();
        let check_perfdata = Family::<PerfLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "endstate_check_status",
            "The last status of a check on a target (0 ok, 1 warning, 2 critical, 3 unknown)",
            check_status.clone(),
        );
        registry.register(
            "endstate_check_perfdata",
            "The last performance data of a check on a target, in the plugin's unit",
            check_perfdata.clone(),
        );
        let source_hooks = Family::<HookLabels, Counter>::default();
        registry.register(
            "endstate_source_hooks",
            "Calls of Git sources' webhooks, by source and outcome (refused ones never fetch)",
            source_hooks.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            source_hooks,
            check_status,
            check_perfdata,
            requests,
            request_seconds,
            revisions_submitted,
            revisions_refused,
            change_transitions,
            open_changes,
        }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(%error, "Metrics encoding failed.");
        }
        out
    }
}
