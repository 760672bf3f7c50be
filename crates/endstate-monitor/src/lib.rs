//! Monitoring logic, pure: no IO, no clock (times come in as milliseconds since the epoch).
//!
//! - [`nagios`] reads what a Nagios-convention plugin said: its status from the exit code (or
//!   how it died), its message, long output and performance data.
//! - [`alerts`] is the alert engine: per (check, target) it keeps the last status and a short
//!   history, opens one alert per failing pair, escalates, resolves, detects flapping, and says
//!   which notifications go out and which are suppressed (a silence, a down host, flapping), each
//!   with its reason.
//!
//! The agent runs the plugins and uses [`nagios`]; the server feeds every result to an
//! [`alerts::Engine`] and acts on its [`alerts::Effect`]s (timeline events, webhooks).

pub mod alerts;
pub mod nagios;
