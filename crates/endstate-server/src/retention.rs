//! Retention of the timeline, per kind: events of a kind older than its retention are deleted in
//! the background, except the newest of each subject before the cut (see
//! [`Store::compact_events`](endstate_store::Store::compact_events)), so compaction never loses
//! the latest state of anything. Each pass that deleted something says so on the timeline
//! (`timeline.compacted`, with the rules and the counts). Kinds without a rule are kept forever.

use std::time::Duration;

use endstate_store::NewEvent;
use tokio::sync::watch;

use crate::{AppState, chain};

/// Events deleted per store call, so the writer is never held for long.
const BATCH: u32 = 10_000;

/// One rule: events of `kind` (exact, or a prefix ending in `.`) are kept for `keep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionRule {
    /// An exact kind (`check.status`) or a prefix ending in `.` (`instance.`).
    pub kind: String,
    /// How long its events are kept.
    pub keep: Duration,
}

impl RetentionRule {
    /// Parses `KIND=DURATION` (`check.status=7d`, `instance.=30d`).
    ///
    /// # Errors
    /// Says which part is wrong: no `=`, an empty or malformed kind, a duration that does not
    /// parse or is shorter than one hour.
    pub fn parse(text: &str) -> Result<RetentionRule, String> {
        let (kind, keep) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not KIND=DURATION (e.g. check.status=7d)"))?;
        let kind = kind.trim();
        let valid = !kind.is_empty()
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!(
                "{kind:?} is not a kind: lowercase letters, digits, `.`, `_` and `-` (a prefix ends in `.`)"
            ));
        }
        let keep = endstate_spec::Duration::parse(keep.trim())
            .map_err(|error| format!("{:?} is not a duration ({error})", keep.trim()))?
            .as_std();
        if keep < Duration::from_secs(3600) {
            return Err(format!("{kind} would be kept {keep:?}; keep a kind at least 1h"));
        }
        Ok(RetentionRule {
            kind: kind.to_string(),
            keep,
        })
    }
}

/// Applies the rules now and then every `every`, until the server stops.
pub(crate) async fn run(state: AppState, rules: Vec<RetentionRule>, every: Duration, mut stop: watch::Receiver<bool>) {
    if rules.is_empty() {
        return;
    }
    loop {
        if let Err(error) = pass(&state, &rules).await {
            tracing::warn!(error = %chain(&error), "Timeline compaction failed; retrying at the next pass.");
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pass over every rule; returns how many events each deleted.
pub(crate) async fn pass(
    state: &AppState,
    rules: &[RetentionRule],
) -> Result<Vec<(String, u64)>, crate::error::ApiError> {
    let now = state.now_ms();
    let mut counts = Vec::new();
    for rule in rules {
        let cut = now - i64::try_from(rule.keep.as_millis()).unwrap_or(i64::MAX);
        let mut deleted = 0u64;
        loop {
            let n = state.store().compact_events(&rule.kind, cut, BATCH).await?;
            deleted += n;
            if n < u64::from(BATCH) {
                break;
            }
            tokio::task::yield_now().await;
        }
        counts.push((rule.kind.clone(), deleted));
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if total > 0 {
        let shown: Vec<String> = counts
            .iter()
            .zip(rules)
            .filter(|((_, n), _)| *n > 0)
            .map(|((kind, n), rule)| {
                format!(
                    "{n} {kind} older than {}",
                    crate::why::ago(i64::try_from(rule.keep.as_millis()).unwrap_or(i64::MAX))
                )
            })
            .collect();
        state
            .store()
            .append_events(vec![NewEvent {
                actor: Some("server".into()),
                ..NewEvent::of(
                    now,
                    &endstate_events::Event::TimelineCompacted(endstate_events::Compacted {
                        deleted: counts
                            .iter()
                            .map(|(kind, n)| endstate_events::KindCount {
                                kind: kind.to_string(),
                                deleted: *n,
                            })
                            .collect(),
                        rules: rules
                            .iter()
                            .map(|r| endstate_events::KeepRule {
                                kind: r.kind.to_string(),
                                keep_s: r.keep.as_secs(),
                            })
                            .collect(),
                    }),
                    format!(
                        "timeline compacted: {} deleted ({}); the latest state of each subject is kept",
                        total,
                        shown.join(", ")
                    ),
                )
            }])
            .await?;
        state.written();
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_reasons() {
        assert_eq!(
            RetentionRule::parse("check.status=7d"),
            Ok(RetentionRule {
                kind: "check.status".into(),
                keep: Duration::from_secs(7 * 86_400),
            })
        );
        assert_eq!(
            RetentionRule::parse("instance.=30d").map(|r| r.kind),
            Ok("instance.".into())
        );
        for (text, needle) in [
            ("check.status", "is not KIND=DURATION"),
            ("=7d", "is not a kind"),
            ("Check=7d", "is not a kind"),
            ("check.status=soon", "is not a duration"),
            ("check.status=5m", "at least 1h"),
        ] {
            let error = RetentionRule::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
