//! Spec v1: parses, validates and normalises the YAML documents that declare an end state into a
//! [`DesiredState`]. Pure: no IO (reading a directory is `endstate_client::spec_dir`).
//!
//! # Using it
//!
//! ```
//! use endstate_spec::{SourceFile, load};
//!
//! let yaml = "apiVersion: endstate/v1\nkind: System\nname: shop\nowners: [team-shop]\n";
//! let file = SourceFile::from_bytes("specs/shop.yaml", yaml.as_bytes()).expect("small UTF-8 text");
//! let loaded = load(&[file], &[]);
//! assert!(!loaded.has_errors());
//! assert!(loaded.desired.expect("valid").systems.contains_key("shop"));
//! ```
//!
//! [`load`] reports *every* problem it finds, each with its file, line and column, what was found
//! and what was expected, sorted by position:
//!
//! ```text
//! specs/shop.yaml:12:5: error[unknown-field]: found field `replica`; expected one of `apiVersion`, `kind`, ...
//! ```
//!
//! A document with a problem does not hide the problems of the other documents (even a YAML syntax
//! error only stops its own document, since every `---` starts afresh). Within one document, every
//! unknown top-level field is reported, but a wrong type stops the typed parse at its first
//! occurrence; the checks of the document's values run only when it parsed.
//!
//! # The format
//!
//! A spec is a directory of `*.yaml` / `*.yml` files; each file holds one or more documents
//! separated by `---` lines. Every document is a mapping that starts with:
//!
//! | field | meaning |
//! |---|---|
//! | `apiVersion` | always `endstate/v1` |
//! | `kind` | `System`, `Component`, `Check`, `Action` or `Policy` |
//! | `name` | lowercase letters, digits, `-`, `_`, `.`; starts with a letter or digit; at most 63 characters |
//!
//! followed by the fields of its kind, flat (no `spec:` level). Unknown fields are errors.
//! Booleans are only `true` and `false` (`yes`, `no`, `on`, `off` are errors, not booleans).
//! Durations are strings of `<integer><unit>` parts, largest unit first, with the units `ms`, `s`,
//! `m`, `h` and `d`: `500ms`, `30s`, `1h30m`. Numbers that should be strings (versions) must be
//! quoted only when they would lose something (`"1.10"` is safe either way; quoting is always fine).
//! Names are unique per kind; component names are unique per system and referred to as `name` from
//! the same system or `system/name` from anywhere.
//!
//! A selector (`placement.selector`, `targets.selector`, `applies_to.selector`) is a mapping of label
//! keys to a value (`role: web`) or a list of accepted values (`zone: [a, b]`); every key must match.
//! An empty selector matches everything.
//!
//! ## `System`
//!
//! ```yaml
//! apiVersion: endstate/v1
//! kind: System
//! name: shop
//! description: The web shop customers buy from.      # optional, default ""
//! owners: [team-shop]                                 # optional, default []
//! escalation:                                         # optional
//!   contact: shop-oncall                              # required in escalation
//!   pager: pagerduty:P123ABC                          # optional
//!   phone: "+41 44 000 00 00"                         # optional
//!   email: shop-oncall@example.com                    # optional
//!   url: https://wiki.example.com/shop/escalation     # optional
//! links:                                              # optional; url must be http(s)
//!   - title: Dashboard
//!     url: https://grafana.example.com/d/shop
//! labels: { tier: production }                        # optional, matched by policy selectors
//! subsystems: [payments, catalog]                     # optional; systems this one aggregates
//! ```
//!
//! Subsystems are many-to-many (no parent pointer); a cycle (`a -> b -> a`) is an error.
//!
//! ## `Component`
//!
//! ```yaml
//! apiVersion: endstate/v1
//! kind: Component
//! name: api
//! system: shop                        # required: a declared system
//! description: JSON API behind the web front end.
//! artifact:                           # required: version plus exactly one of path / url
//!   version: "2.4.1"
//!   url: https://artifacts.example.com/shop-api-2.4.1.tar.gz   # http(s); requires sha256
//!   sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!   # path: /opt/artifacts/shop-api-2.4.1                      # or a path on the host
//! command: bin/shop-api               # required
//! args: ["--listen", "0.0.0.0:{{ ports.http }}"]
//! env: { RUST_LOG: info, SHOP_HOST: "{{ instance.host }}" }
//! config_files:
//!   - path: etc/shop-api.toml         # relative to the instance directory or absolute, no `..`
//!     template: |
//!       zone = "{{ host.labels.zone }}"
//!       index = {{ instance.index }}
//! run_as: { user: shop, group: shop }   # optional: the agent (root) starts it as this user; default: the agent's user
//! ports:
//!   - name: http                      # used by health, checks and {{ ports.http }}
//!     number: 8080                    # optional: without it the agent picks a free port
//!     exclusive: true                 # optional, default false: one instance per host holds it
//! health:                             # optional; exactly one of http / tcp / exec
//!   http: { port: http, path: /healthz }   # port: a declared port name; path default "/"
//!   # tcp: { port: http }
//!   # exec: { command: bin/check, args: [] }
//!   interval: 10s                     # default 10s
//!   timeout: 2s                       # default 2s, at most interval
//!   healthy_threshold: 1              # default 1
//!   unhealthy_threshold: 3            # default 3
//! placement:                          # required
//!   selector: { role: web, zone: [a, b] }   # default {}: every host
//!   count: { total: 6 }               # required: { per_host: N } or { total: N }, N >= 1
//!   spread_by: zone                   # optional host label to spread over
//! rollout:                            # optional; every field has a default
//!   canary: 1                         # default 1 (0: no canary); at most a `total` count
//!   batch: { percent: 25 }            # default { size: 1 }; or { size: N }; percent 1..=100
//!   max_unavailable: 2                # default 1; 0 only if new instances start before old ones stop
//!   one_domain_at_a_time: zone        # optional failure-domain host label
//!   pause: 30s                        # optional pause between batches
//!   min_healthy_time: 10s             # default 10s
//!   on_failure: rollback              # default halt; or rollback
//! gates:                              # optional metric gates, checked while a change rolls out
//!   - name: error-rate                # unique within the component
//!     prometheus: 'sum(rate(http_errors_total[1m])) / sum(rate(http_requests_total[1m]))'
//!     max: 0.05                       # `max`, `min`, `max_ratio_to_baseline`, or several
//!   - name: canary-errors             # canary against baseline: `{{ version }}` is replaced by
//!     prometheus: 'sum(rate(http_errors_total{version="{{ version }}"}[1m]))'  # each version
//!     max_ratio_to_baseline: 1.5      # new version at most 1.5 x the version in force
//!   - name: plugin-ok                 # a check gate: a Check of this system targeting this
//!     check: web-plugin               # component; how many instances' latest result is not
//!                                     # OK (default bound `max: 0`)
//!   - name: latency
//!     check: web-http
//!     perfdata: time                  # or the largest value of a performance-data label
//!     max: 0.5                        # among their latest results (`max`/`min` required)
//! depends_on: [db, payments/gateway]  # `name` in the same system, or `system/name`
//! ```
//!
//! Template variables (in `command`, `args`, `env` values and `config_files` templates), written
//! `{{ variable }}`: `instance.host`, `instance.index` (0-based), `component.name`,
//! `component.system`, `component.version`, `host.labels.<key>`, and `ports.<name>` for every
//! declared port. Anything else is an error. A dependency cycle (`shop/api -> shop/db -> shop/api`)
//! is an error.
//!
//! ## `Check`
//!
//! ```yaml
//! apiVersion: endstate/v1
//! kind: Check
//! name: shop-api-http
//! system: shop
//! http:                               # exactly one of exec / http / tcp
//!   port: http                        # a port number, or a port name of the target component
//!   path: /healthz                    # with port; default "/"
//!   # url: https://shop.example.com/  # or a full URL instead of port + path
//!   expect_status: 200                # default 200
//!   body_match: ok                    # optional substring
//!   latency_threshold: 500ms          # optional: slower is a warning
//! # exec: { command: /usr/lib/nagios/plugins/check_disk, args: [-w, "20%", -c, "10%"] }
//! # tcp: { host: db.example.com, port: 5432 }   # host default: each target host
//! interval: 30s                       # default 60s
//! timeout: 5s                         # default 10s, at most interval
//! splay: 5s                           # default 0s
//! targets: { component: api }         # required: { component: name | system/name } or { selector: {...} }
//! ```
//!
//! `exec` checks follow the Nagios plugin convention (exit 0 ok, 1 warning, 2 critical, 3 unknown).
//!
//! ## `Action`
//!
//! ```yaml
//! apiVersion: endstate/v1
//! kind: Action
//! name: flush-cache
//! system: shop
//! description: Drop the API's in-memory cache after a catalog fix.
//! parameters:                         # name -> parameter; names use a-z, 0-9, `-`, `_`
//!   scope:
//!     type: enum                      # string | integer | boolean | enum
//!     values: [all, sessions, catalog]   # required for enum, only for enum
//!     default: all                    # must satisfy the parameter's own type and rules
//!   max_age:
//!     type: integer
//!     min: 0                          # min / max only for integer
//!     max: 86400
//!   reason:
//!     type: string
//!     pattern: "^[A-Za-z0-9 ,.-]+$"   # only for string; matched at run time
//!     required: true                  # default false
//! command: [bin/shop-admin, flush, "--scope={{ params.scope }}"]   # argv; required, non-empty
//! shell: false                        # default false; true runs the single element with sh -c, each
//!                                     # {{ params.x }} as "$ENDSTATE_PARAM_X" (the value in that variable, never in the text)
//! targets: { component: api }         # required, as for checks
//! concurrency: 1                      # default 1, at least 1
//! timeout: 2m                         # default 5m
//! allow_during_rollout: false         # default false
//! reentrant: false                    # default false
//! engagement: approval                # direct | approval | escalate; default approval
//! escalate_to: shop-oncall            # required with engagement: escalate
//! rate_limit: { runs: 10, per: 10m }  # the default; more runs in the window are refused
//! ```
//!
//! Template variables in `command`: `params.<name>` for every declared parameter, `instance.host`,
//! `action.name`, `action.system`, `host.labels.<key>`, and with `targets: { component: ... }`
//! `ports.<name>` (the port of that component's instance on the host; a host running several
//! instances of it is not offered the action). A `pattern` must compile as a regular expression
//! (`regex-lite` syntax) and the whole value must match it.
//!
//! ## `Policy`
//!
//! ```yaml
//! apiVersion: endstate/v1
//! kind: Policy
//! name: production-safety
//! applies_to:                         # systems listed plus systems whose labels match; both empty: all
//!   systems: [shop]
//!   selector: { tier: production }
//! rules:
//!   require_owners: true              # default false
//!   require_escalation: true          # default false
//!   allowed_artifact_sources: [https, path]   # path | https | http; default [] (all allowed)
//!   max_batch_percent: 25             # optional, 1..=100; judged against batch.percent
//!   freeze_windows:                   # no wave starts while one is open (the Decider waits)
//!     - cron: "0 18 * * fri"          # minute hour day-of-month month day-of-week, UTC
//!       duration: 62h
//!       reason: Weekend freeze
//!   max_in_flight: { hosts: 5, instances: 10 }  # blast radius: waves are split to fit, and the
//!                                     # Decider checks it before every wave; each at least 1
//! ```
//!
//! The static rules (`require_owners`, `require_escalation`, `allowed_artifact_sources`,
//! `max_batch_percent`) are checked at load time against the covered systems and their own
//! components (not their subsystems'); a violation is a `policy-violation` error. Freeze windows are
//! only validated today: nothing enforces them until the Decider (the rollout gate) lands.
//!
//! # Warnings
//!
//! `load` takes the known hosts. When that list is **not empty**, a placement or target selector
//! that matches none of them is a `selector-matches-no-host` warning. With an empty list (the CLI's
//! offline `validate`, or a server without inventory yet) the check is skipped, since every
//! selector would be flagged. Warnings do not prevent a desired state.

mod diagnostic;
mod doc;
mod duration;
mod model;
mod parse;
mod source;
mod template;
mod validate;

use endstate_types::Labels;

pub use diagnostic::{Diagnostic, Severity};
pub use duration::Duration;
pub use model::{
    Action, AppliesTo, Artifact, ArtifactSource, Batch, Check, CheckProbe, Component, ConfigFile, Count, DesiredState,
    Engagement, Escalation, FreezeWindow, Gate, Health, HttpTarget, Link, MaxInFlight, OnFailure, ParamValue,
    Parameter, ParameterType, Placement, Policy, Port, PortRef, Probe, RateLimit, Rollout, Rules, RunAs, SourceCommit,
    SourceKind, StaticHost, System, Targets,
};
pub use source::{MAX_FILE_BYTES, SourceFile};

/// A host the spec is placed on (for the "selector matches no known host" warning, and the
/// planner's placement basis, stored with a plan).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// The host's name.
    pub name: String,
    /// The host's labels.
    pub labels: Labels,
}

/// The outcome of [`load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The normalised desired state; `Some` only when there is no error (warnings are fine).
    pub desired: Option<DesiredState>,
    /// Every problem found, sorted by file, line and column.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parses and validates a whole spec (every file of a spec directory) into a desired state.
///
/// `hosts` is the known inventory; see the crate docs for when it produces warnings.
/// Files are processed in path order, so "first declared" in duplicate-name errors does not depend on
/// the order of `files`. Never panics, whatever the input.
pub fn load(files: &[SourceFile], hosts: &[HostInfo]) -> Loaded {
    ParsedSpec::parse(files.to_vec()).validate(hosts)
}

/// A spec parsed but not validated yet: what its documents declare can be read first (who owns
/// what), and more files added, each file parsed once. [`load`] is `parse` then `validate`.
pub struct ParsedSpec {
    files: Vec<SourceFile>,
    docs: Vec<parse::Parsed>,
    diagnostics: Vec<Diagnostic>,
}

impl ParsedSpec {
    /// Parses `files`, in path order.
    pub fn parse(mut files: Vec<SourceFile>) -> ParsedSpec {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut spec = ParsedSpec {
            files: Vec::with_capacity(files.len()),
            docs: Vec::new(),
            diagnostics: Vec::new(),
        };
        for file in files {
            spec.add(file);
        }
        spec
    }

    /// Parses one more file, after those already parsed.
    pub fn add(&mut self, file: SourceFile) {
        let idx = self.files.len();
        if file.text.len() > MAX_FILE_BYTES {
            self.diagnostics.push(source::too_large(&file.path, file.text.len()));
        } else {
            parse::parse_file(idx, &file, &mut self.docs, &mut self.diagnostics);
        }
        self.files.push(file);
    }

    /// Every document's [`Declaration`], in the order parsed: a document that does not parse
    /// declares nothing here ([`ParsedSpec::validate`] reports it).
    pub fn declarations(&self) -> Vec<Declaration> {
        self.docs
            .iter()
            .filter_map(|parsed| {
                let path = self.files.get(parsed.file)?.path.clone();
                // Located at what decides the owner: the name, or the `system` the object belongs to.
                let (kind, name, system) = match &parsed.doc {
                    parse::RawDoc::System(d) => ("System", &d.name, Some(&d.name)),
                    parse::RawDoc::Component(d) => ("Component", &d.name, Some(&d.system)),
                    parse::RawDoc::Check(d) => ("Check", &d.name, Some(&d.system)),
                    parse::RawDoc::Action(d) => ("Action", &d.name, Some(&d.system)),
                    parse::RawDoc::Policy(d) => ("Policy", &d.name, None),
                    parse::RawDoc::Host(d) => ("Host", &d.name, None),
                };
                let pos = parse::spanned_pos(system.unwrap_or(name), parsed.line_offset, parsed.start);
                Some(Declaration {
                    path,
                    line: pos.line,
                    column: pos.column,
                    kind,
                    name: name.value.clone(),
                    system: system.map(|s| s.value.clone()),
                })
            })
            .collect()
    }

    /// Validates across documents into a desired state.
    pub fn validate(self, hosts: &[HostInfo]) -> Loaded {
        let ParsedSpec {
            files,
            docs,
            mut diagnostics,
        } = self;
        if files.is_empty() {
            diagnostics.push(
                Diagnostic::error("", diagnostic::Pos::FILE, "no-spec-files", "found no spec file")
                    .expected("at least one `*.yaml` or `*.yml` file"),
            );
        }
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let desired = validate::validate(&paths, docs, hosts, &mut diagnostics);
        diagnostics.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        diagnostics.dedup();
        let has_errors = diagnostics.iter().any(Diagnostic::is_error);
        Loaded {
            desired: (!has_errors).then_some(desired),
            diagnostics,
        }
    }
}

/// What one document declares, located: its kind and name, and the system it belongs to
/// (`System`: itself; `Component`, `Check`, `Action`: its `system`; `Policy`, `Host`: none).
/// The server decides from these who owns what (a Git source owns the systems its documents
/// declare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// The file.
    pub path: String,
    /// 1-based line of what decides the owner: the `system` of a component, check or action,
    /// else the name.
    pub line: u64,
    /// 1-based column of the same.
    pub column: u64,
    /// `System`, `Component`, `Check`, `Action`, `Policy` or `Host`.
    pub kind: &'static str,
    /// The declared name.
    pub name: String,
    /// The system the object belongs to.
    pub system: Option<String>,
}

/// Every document's [`Declaration`], in path order, from parsing alone (no validation): a
/// document that does not parse declares nothing here ([`load`] reports it).
pub fn declarations(files: &[SourceFile]) -> Vec<Declaration> {
    ParsedSpec::parse(files.to_vec()).declarations()
}

/// The JSON Schema (2020-12) of one spec document, generated from the same types the parser reads.
///
/// Editors use it for completion and inline docs (`# yaml-language-server: $schema=...`).
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(doc::AnyDoc);
    schema.insert("title".to_owned(), "endstate spec v1 document".into());
    schema.insert(
        "description".to_owned(),
        "One document of an endstate spec: a System, Component, Check, Action or Policy.".into(),
    );
    schema.to_value()
}
