//! End-to-end tests of the API server: a real server on a free loopback port over a SQLite store
//! in a temporary directory, called through the real client and raw HTTP, and fake agents
//! speaking the protocol (the harness is `endstate-testkit`'s).

#![allow(clippy::unwrap_used)]

mod actions;
mod agents;
mod api;
mod describe;
mod history;
mod monitoring;
mod options;
mod sources;
mod systems;
mod timeline;
mod why;

pub(crate) use endstate_testkit::agent as fake_agent;
pub(crate) use endstate_testkit::fixtures::{CACHE_COMPONENT, SYSTEMS};
pub(crate) use endstate_testkit::server::{
    TestServer, docs, http, submit_request, wait_for_change, wait_until_waiting,
};
