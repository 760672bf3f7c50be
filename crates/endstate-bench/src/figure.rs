//! One measured figure and its target.

/// Which way a figure is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Goal {
    /// The figure must be at most the target (latencies, durations).
    AtMost,
    /// The figure must be at least the target (throughputs).
    AtLeast,
}

/// Whether a figure met its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Met,
    Missed,
    /// The figure could not be measured (its detail says why): never a pass.
    NotMeasured,
}

/// A measured figure beside its target.
#[derive(Clone, Debug)]
pub(crate) struct Figure {
    /// What was measured, e.g. "timeline append".
    pub(crate) name: String,
    /// The measured value.
    pub(crate) value: f64,
    /// The unit, e.g. "events/s" or "ms".
    pub(crate) unit: &'static str,
    /// The target from the issue.
    pub(crate) target: f64,
    pub(crate) goal: Goal,
    /// How it was measured (sizes, concurrency), for the reader.
    pub(crate) detail: String,
}

impl Figure {
    /// A figure that could not be measured, with the reason; it counts as missed, never as met.
    pub(crate) fn not_measured(name: String, unit: &'static str, target: f64, goal: Goal, reason: String) -> Figure {
        Figure {
            name,
            value: f64::NAN,
            unit,
            target,
            goal,
            detail: format!("not measured: {reason}"),
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        if self.value.is_nan() {
            return Outcome::NotMeasured;
        }
        let met = match self.goal {
            Goal::AtMost => self.value <= self.target,
            Goal::AtLeast => self.value >= self.target,
        };
        if met { Outcome::Met } else { Outcome::Missed }
    }

    pub(crate) fn line(&self, smoke: bool) -> String {
        let op = match self.goal {
            Goal::AtMost => "<=",
            Goal::AtLeast => ">=",
        };
        let verdict = match (smoke, self.outcome()) {
            (_, Outcome::NotMeasured) => "NOT MEASURED",
            (true, _) => "smoke",
            (false, Outcome::Met) => "MET",
            (false, Outcome::Missed) => "MISSED",
        };
        format!(
            "  {:<48} {:>14.2} {:<10} target {op} {:<10} {:<6} ({})",
            self.name, self.value, self.unit, self.target, verdict, self.detail
        )
    }

    pub(crate) fn to_json(&self, smoke: bool) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "goal": match self.goal { Goal::AtMost => "at_most", Goal::AtLeast => "at_least" },
            "met": if smoke { None } else { Some(self.outcome() == Outcome::Met) },
            "measured": self.outcome() != Outcome::NotMeasured,
            "detail": self.detail,
        })
    }
}
