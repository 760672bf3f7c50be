//! Bad specs: every problem reported, with its position, what was found and what was expected.

use super::*;

#[test]
fn yaml_syntax_error() {
    check(
        &[(
            "a.yaml",
            "apiVersion: endstate/v1\nkind: System\nname: shop\nowners: [a, b\n",
        )],
        "
        a.yaml:4:9: error[yaml-syntax]: found invalid YAML: unclosed bracket '['
        ",
    );
}

#[test]
fn wrong_type() {
    check(
        &[("a.yaml", &format!("{BASE}args: 5\n"))],
        "
        a.yaml:12:7: error[wrong-type]: found `5`; expected a list
        ",
    );
}

#[test]
fn unknown_field() {
    check(&[("a.yaml", &format!("{BASE}replica: 3\n"))], "
        a.yaml:12:1: error[unknown-field]: found field `replica`; expected one of `apiVersion`, `kind`, `name`, `system`, `description`, `artifact`, `command`, `args`, `env`, `config_files`, `run_as`, `ports`, `health`, `placement`, `rollout`, `gates`, `depends_on`
        ");
}

#[test]
fn issue_2_every_unknown_top_level_field_of_a_document_is_reported() {
    check(&[("a.yaml", &format!("{BASE}replica: 3\nenabled: yes\n"))], "
        a.yaml:12:1: error[unknown-field]: found field `replica`; expected one of `apiVersion`, `kind`, `name`, `system`, `description`, `artifact`, `command`, `args`, `env`, `config_files`, `run_as`, `ports`, `health`, `placement`, `rollout`, `gates`, `depends_on`
        a.yaml:13:1: error[unknown-field]: found field `enabled`; expected one of `apiVersion`, `kind`, `name`, `system`, `description`, `artifact`, `command`, `args`, `env`, `config_files`, `run_as`, `ports`, `health`, `placement`, `rollout`, `gates`, `depends_on`
        ");
}

#[test]
fn issue_2_a_batch_size_counts_against_max_batch_percent() {
    let policy = "---\napiVersion: endstate/v1\nkind: Policy\nname: p\nrules: { max_batch_percent: 50 }\n";
    check(&[("a.yaml", &format!("{BASE}rollout: {{ batch: {{ size: 2 }} }}\n{policy}"))], "
        a.yaml:12:19: error[policy-violation]: found batch of 2 of 3 instances (67%), above the 50% policy `p` allows; expected at most 50%
        ");
    check(
        &[(
            "a.yaml",
            &format!("{BASE}rollout: {{ batch: {{ size: 1 }} }}\n{policy}"),
        )],
        "",
    );
}

#[test]
fn yes_is_not_a_boolean() {
    check(&[("a.yaml", &format!("{BASE}ports: [{{ name: http, exclusive: yes }}]\n"))], "
        a.yaml:12:34: error[invalid-boolean]: found `yes`, which is not a boolean in spec v1; expected `true` or `false` (`yes`, `no`, `on` and `off` are not booleans)
        ");
}

#[test]
fn bad_kind_and_api_version() {
    check(
        &[("a.yaml", "apiVersion: endstate/v1\nkind: Service\nname: x\n---\napiVersion: v2\nkind: System\nname: y\n---\nname: z\n---\n- a\n")],
        "
        a.yaml:2:7: error[unknown-kind]: found kind `Service`; expected one of `System`, `Component`, `Check`, `Action`, `Policy`, `Host`
        a.yaml:5:13: error[unsupported-api-version]: found apiVersion `v2`; expected `endstate/v1`
        a.yaml:9:1: error[missing-field]: found no `apiVersion`; expected `apiVersion: endstate/v1`
        a.yaml:9:1: error[missing-field]: found no `kind`; expected one of `System`, `Component`, `Check`, `Action`, `Policy`, `Host`
        a.yaml:11:1: error[not-a-mapping]: found a document that is not a mapping; expected a mapping with `apiVersion`, `kind`, `name` and the kind's fields
        ",
    );
}

#[test]
fn dangling_references() {
    check(&[("a.yaml", &format!("{BASE}depends_on: [db, other/x]\n---\napiVersion: endstate/v1\nkind: System\nname: web\nsubsystems: [shop, nope]\n---\napiVersion: endstate/v1\nkind: Component\nname: x\nsystem: ghost\nartifact: {{ version: '1', path: /x }}\ncommand: x\nplacement: {{ count: {{ per_host: 1 }} }}\n"))], "
        a.yaml:12:14: error[dangling-reference]: found dependency `db`, which is not declared; expected a component of system `shop` or `system/component` (`api`)
        a.yaml:12:18: error[dangling-reference]: found dependency `other/x`, which is not declared; expected a component of system `shop` or `system/component` (`api`)
        a.yaml:17:20: error[dangling-reference]: found system `nope`, which is not declared; expected a declared system (`shop`, `web`)
        a.yaml:22:9: error[dangling-reference]: found system `ghost`, which is not declared; expected a declared system (`shop`, `web`)
        ");
}

#[test]
fn dependency_cycle_with_path() {
    let component = |name: &str, deps: &str| {
        format!(
            "---\napiVersion: endstate/v1\nkind: Component\nname: {name}\nsystem: shop\nartifact: {{ version: '1', path: /x }}\ncommand: x\nplacement: {{ count: {{ per_host: 1 }} }}\ndepends_on: [{deps}]\n"
        )
    };
    let input = format!(
        "apiVersion: endstate/v1\nkind: System\nname: shop\n{}{}{}{}",
        component("a", "b"),
        component("b", "c"),
        component("c", "a"),
        component("d", "d")
    );
    check(
        &[("a.yaml", &input)],
        "
        a.yaml:30:14: error[dependency-cycle]: found a dependency cycle: shop/a -> shop/b -> shop/c -> shop/a
        a.yaml:39:14: error[dependency-cycle]: found a dependency cycle: shop/d -> shop/d
        ",
    );
}

#[test]
fn subsystem_cycle_with_path() {
    let system = |name: &str, subs: &str| {
        format!("---\napiVersion: endstate/v1\nkind: System\nname: {name}\nsubsystems: [{subs}]\n")
    };
    check(
        &[(
            "a.yaml",
            &format!("{}{}{}", system("a", "b"), system("b", "c"), system("c", "a")),
        )],
        "
        a.yaml:15:14: error[subsystem-cycle]: found a subsystem cycle: a -> b -> c -> a
        ",
    );
}

#[test]
fn duplicates() {
    check(&[("a.yaml", BASE), ("b.yaml", BASE)], "
        b.yaml:3:7: error[duplicate-name]: found system `shop` a second time; first declared at a.yaml:3:7; expected one system per name
        b.yaml:7:7: error[duplicate-name]: found component `shop/api` a second time; first declared at a.yaml:7:7; expected one component per name
        ");
}

#[test]
fn many_problems_in_one_run() {
    check(
        &[
            ("a.yaml", "apiVersion: endstate/v1\nkind: System\nname: Shop\n---\napiVersion: endstate/v1\nkind: System\nname: ok\nbogus: 1\n"),
            ("b.yaml", "apiVersion: endstate/v1\nkind: System\nname: [\n---\napiVersion: endstate/v1\nkind: System\nname: after-syntax-error\nsubsystems: [missing]\n"),
            ("c.yaml", &format!("{BASE}rollout: {{ canary: 5, batch: {{ percent: 150 }}, max_unavailable: 0 }}\n")),
            ("d.yaml", "apiVersion: endstate/v1\nkind: Component\nname: web\nsystem: shop\nartifact: { version: '1', path: /x }\ncommand: x\nplacement: { count: { total: 1 } }\nrollout: { pause: 30 }\n"),
        ],
        "
        a.yaml:3:7: error[invalid-name]: found system name `Shop`; expected lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit
        a.yaml:8:1: error[unknown-field]: found field `bogus`; expected one of `apiVersion`, `kind`, `name`, `description`, `owners`, `escalation`, `links`, `labels`, `subsystems`, `subsystem_selector`
        b.yaml:3:7: error[wrong-type]: found a list; expected a string
        b.yaml:8:14: error[dangling-reference]: found system `missing`, which is not declared; expected a declared system (`Shop`, `after-syntax-error`, `shop`)
        c.yaml:12:20: error[invalid-rollout]: found canary 5 larger than the total count 3; expected a canary of at most 3
        c.yaml:12:30: error[invalid-rollout]: found a batch of 150 percent; expected a percentage from 1 to 100
        d.yaml:8:19: error[invalid-value]: found `30` without a unit; expected a duration like `500ms`, `30s`, `5m`, `1h30m` or `2d`
        ",
    );
}

#[test]
fn component_field_checks() {
    check(
        &[("a.yaml", "apiVersion: endstate/v1\nkind: System\nname: shop\n---\napiVersion: endstate/v1\nkind: Component\nname: api\nsystem: shop\nartifact: { version: '1', url: ftp://x, sha256: abc }\ncommand: bin/api\nargs: ['{{ ports.grpc }}', '{{ instance.zone }}']\nenv: { 1BAD: x }\nports: [{ name: http }, { name: http }]\nhealth: { http: { port: metrics }, interval: 1s, timeout: 5s }\nplacement: { count: { total: 0 } }\n")],
        "
        a.yaml:9:32: error[invalid-url]: found artifact URL `ftp://x`; expected an `https://` or `http://` URL
        a.yaml:9:49: error[invalid-value]: found sha256 `abc`; expected 64 hexadecimal digits
        a.yaml:11:8: error[unknown-template-variable]: found unknown template variable `ports.grpc`; expected one of `instance.host`, `instance.index`, `component.name`, `component.system`, `component.version`, `host.labels.<key>`, `ports.http`
        a.yaml:11:28: error[unknown-template-variable]: found unknown template variable `instance.zone`; expected one of `instance.host`, `instance.index`, `component.name`, `component.system`, `component.version`, `host.labels.<key>`, `ports.http`
        a.yaml:12:14: error[invalid-name]: found environment variable name `1BAD`; expected letters, digits and `_`, not starting with a digit
        a.yaml:13:25: error[duplicate-name]: found port `http` a second time; expected unique port names
        a.yaml:14:25: error[unknown-port]: found health check port `metrics`, which the component does not declare; expected a port declared in `ports` (`http`)
        a.yaml:14:59: error[invalid-value]: found timeout 5s longer than interval 1s; expected a timeout of at most the interval
        a.yaml:15:21: error[invalid-value]: found a count of 0; expected at least 1 (remove the component to run none)
        ",
    );
}

#[test]
fn an_action_parameter_pattern_must_compile() {
    check(
        &[("a.yaml", "apiVersion: endstate/v1\nkind: System\nname: shop\n---\napiVersion: endstate/v1\nkind: Action\nname: a1\nsystem: shop\nparameters:\n  t: { type: string, pattern: '[A-Z+' }\ncommand: [x, '{{ params.t }}', '{{ ports.http }}']\ntargets: { selector: { role: web } }\n")],
        "
        a.yaml:10:6: error[invalid-parameter]: parameter `t`: found pattern `[A-Z+`, which is not a regular expression: non-empty character class has no closing bracket; expected a regular expression (the whole value must match)
        a.yaml:11:32: error[unknown-template-variable]: found unknown template variable `ports.http`; expected one of `instance.host`, `action.name`, `action.system`, `host.labels.<key>`, `params.t`
        ",
    );
}

#[test]
fn check_action_policy_checks() {
    let input = format!(
        "{BASE}ports: [{{ name: http }}]\n---\napiVersion: endstate/v1\nkind: Check\nname: c1\nsystem: shop\nhttp: {{ port: grpc }}\ntcp: {{ port: 80 }}\ntargets: {{ component: api }}\n---\napiVersion: endstate/v1\nkind: Check\nname: c2\nsystem: shop\ntargets: {{ selector: {{ role: web }}, component: api }}\n---\napiVersion: endstate/v1\nkind: Action\nname: a1\nsystem: shop\nparameters:\n  level: {{ type: enum }}\n  n: {{ type: integer, min: 5, max: 10, default: 11 }}\n  s: {{ type: string, default: 42 }}\ncommand: [x, '{{{{ params.nope }}}}']\nshell: true\ntargets: {{ component: ghost }}\nengagement: escalate\n---\napiVersion: endstate/v1\nkind: Policy\nname: p1\napplies_to: {{ systems: [shop, ghost] }}\nrules:\n  require_owners: true\n  allowed_artifact_sources: [https]\n  max_batch_percent: 0\n  freeze_windows: [{{ cron: '0 25 * *', duration: 0s, reason: '' }}]\n"
    );
    check(&[("a.yaml", &input)], "
        a.yaml:3:7: error[policy-violation]: found system `shop` without owners, which policy `p1` requires; expected at least one entry in `owners`
        a.yaml:9:11: error[policy-violation]: found a path artifact source, which policy `p1` does not allow; expected one of `https`
        a.yaml:18:15: error[unknown-port]: found port `grpc`, which component `shop/api` does not declare; expected a declared port (`http`)
        a.yaml:19:6: error[conflicting-fields]: found more than one of `exec`, `http` and `tcp`; expected exactly one of `exec`, `http` and `tcp`
        a.yaml:24:7: error[missing-field]: found a check with none of `exec`, `http` and `tcp`; expected exactly one of `exec`, `http` and `tcp`
        a.yaml:26:22: error[conflicting-fields]: found both `component` and `selector` in `targets`; expected exactly one of `component` and `selector`
        a.yaml:33:10: error[invalid-parameter]: parameter `level`: found an enum without `values`; expected a non-empty list of `values`
        a.yaml:34:6: error[invalid-parameter]: parameter `n`: found default 11 outside `min`..`max`; expected a default within `min` and `max`
        a.yaml:35:6: error[invalid-parameter]: parameter `s`: found default `42` (an integer); expected a default of its type: a string (quote it)
        a.yaml:36:14: error[unknown-template-variable]: found unknown template variable `params.nope`; expected one of `instance.host`, `action.name`, `action.system`, `host.labels.<key>`, `ports.<name>`, `params.level`, `params.n`, `params.s`
        a.yaml:37:8: error[conflicting-fields]: found `shell: true` with 2 command elements; expected exactly one element, the script given to `sh -c`
        a.yaml:38:23: error[dangling-reference]: found target component `ghost`, which is not declared; expected a component of system `shop` or `system/component` (`api`)
        a.yaml:39:13: error[missing-field]: found `engagement: escalate` without `escalate_to`; expected `escalate_to` naming the team or person
        a.yaml:44:31: error[dangling-reference]: found system `ghost`, which is not declared; expected a declared system (`shop`)
        a.yaml:48:22: error[invalid-value]: found `max_batch_percent: 0`; expected a percentage from 1 to 100
        a.yaml:49:28: error[invalid-cron]: found 4 fields in cron expression `0 25 * *`; expected 5 fields: minute (0-59) hour (0-23) day-of-month (1-31) month (1-12) day-of-week (0-7)
        a.yaml:49:28: error[invalid-value]: found a freeze window without a reason; expected a `reason` shown to whoever it blocks
        a.yaml:49:50: error[invalid-value]: found a freeze window of 0s; expected a positive duration
        ");
}

#[test]
fn a_baseline_gate_must_name_the_version_and_have_a_positive_ratio() {
    let gates = "gates:\n  - name: errors\n    prometheus: 'sum(rate(errors_total[1m]))'\n    max_ratio_to_baseline: 1.5\n  - name: latency\n    prometheus: 'p99{version=\"{{ version }}\"}'\n    max_ratio_to_baseline: 0\n";
    check(&[("a.yaml", &format!("{BASE}{gates}"))], "
        a.yaml:14:17: error[invalid-gate]: found gate `errors` comparing with the baseline, but its query does not name the version; expected `{{ version }}` in the query, e.g. `rate(errors_total{version=\"{{ version }}\"}[1m])`
        a.yaml:16:5: error[invalid-gate]: found max_ratio_to_baseline 0 on gate `latency`; expected a finite number above 0
    ");
}

#[test]
fn a_blast_radius_limit_of_zero_or_nothing_is_refused() {
    let policy = "---\napiVersion: endstate/v1\nkind: Policy\nname: p\nrules:\n  max_in_flight: { hosts: 0 }\n---\napiVersion: endstate/v1\nkind: Policy\nname: q\nrules:\n  max_in_flight: {}\n";
    check(&[("a.yaml", &format!("{BASE}{policy}"))], "
        a.yaml:17:18: error[invalid-value]: found `max_in_flight.hosts: 0`; expected at least 1 (nothing could ever change)
        a.yaml:23:18: error[invalid-value]: found `max_in_flight` without a limit; expected `hosts`, `instances` or both
    ");
}

/// A cycle closed by a selector is reported at the selector, with its path; a selector that
/// matches no other system is a warning.
#[test]
fn subsystem_cycle_through_a_selector() {
    let input = "\
apiVersion: endstate/v1
kind: System
name: storage
labels: { tier: storage }
subsystem_selector: { tier: storage }
---
apiVersion: endstate/v1
kind: System
name: db
labels: { tier: storage }
subsystems: [storage]
---
apiVersion: endstate/v1
kind: System
name: lonely
subsystem_selector: { tier: nothing }
";
    check(
        &[("a.yaml", input)],
        "
        a.yaml:5:21: error[subsystem-cycle]: found a subsystem cycle: db -> storage -> db
        a.yaml:16:21: warning[selector-matches-no-system]: found subsystem selector `tier=nothing`, which matches no other declared system
        ",
    );
}

/// Static hosts: a bad name, a system that is not declared, a duplicate, a fact that is not a scalar.
#[test]
fn bad_static_hosts() {
    let host = |name: &str, extra: &str| format!("---\napiVersion: endstate/v1\nkind: Host\nname: {name}\n{extra}");
    let input = [
        host("Switch", ""),
        host("db-1", "systems: [missing]\n"),
        host("db-1", ""),
        host("fw-1", "facts: { zones: [a, b] }\n"),
    ]
    .concat();
    check(
        &[("a.yaml", &input)],
        "
        a.yaml:4:7: error[invalid-name]: found host name `Switch`; expected lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit
        a.yaml:9:11: error[dangling-reference]: found system `missing`, which is not declared; expected a declared system
        a.yaml:13:7: error[duplicate-name]: found host `db-1` a second time; first declared at a.yaml:8:7; expected one host per name
        a.yaml:18:17: error[wrong-type]: found a list; expected a string
        ",
    );
}

#[test]
fn a_check_gate_names_a_check_of_its_system_that_targets_the_component() {
    let gates = "gates:
  - name: up
    check: up
  - name: both
    check: up
    prometheus: 'x'
  - name: nothing
    max: 1
  - name: ghost
    check: ghost
  - name: hosts
    check: disk
  - name: ratio
    check: up
    max_ratio_to_baseline: 2
  - name: slow
    check: up
    perfdata: time
  - name: stray
    prometheus: 'y'
    perfdata: time
    max: 1
---
apiVersion: endstate/v1
kind: Check
name: up
system: shop
tcp: { port: 80 }
targets: { component: api }
---
apiVersion: endstate/v1
kind: Check
name: disk
system: shop
exec: { command: /usr/lib/nagios/plugins/check_disk }
targets: { selector: { role: db } }
";
    check(&[("a.yaml", &format!("{BASE}{gates}"))], "
        a.yaml:16:12: error[invalid-gate]: found gate `both` with both a query and a check; expected either `prometheus` or `check`
        a.yaml:18:5: error[invalid-gate]: found gate `nothing` measuring nothing; expected `prometheus: <query>` or `check: <check of this system>`
        a.yaml:21:12: error[dangling-reference]: found gate `ghost` on check `ghost`, which is not declared; expected a check of system `shop` targeting `api` (`up`)
        a.yaml:23:12: error[invalid-gate]: found gate `hosts` on check `disk`, which does not target component `shop/api`; expected a check with `targets: { component: api }`
        a.yaml:25:12: error[invalid-gate]: found gate `ratio` comparing a check with the baseline; expected `max` or `min` on a check gate (the baseline is for queries)
        a.yaml:27:5: error[invalid-gate]: found gate `slow` without bounds; expected `max`, `min` or both for a performance-data gate
        a.yaml:30:5: error[invalid-gate]: found gate `stray` with perfdata but no check; expected `perfdata` only beside `check`
    ");
}

#[test]
fn an_exec_check_names_only_variables_its_targets_have() {
    let checks = "ports: [{ name: http }]
---
apiVersion: endstate/v1
kind: Check
name: on-instances
system: shop
exec:
  command: /usr/lib/nagios/plugins/check_http
  args: [-H, '{{ instance.host }}', -p, '{{ ports.http }}', -p, '{{ ports.grpc }}', '{{ instance.index }}']
targets: { component: api }
---
apiVersion: endstate/v1
kind: Check
name: on-hosts
system: shop
exec:
  command: /usr/lib/nagios/plugins/check_tcp
  args: [-H, '{{ instance.host }}', -p, '{{ ports.http }}', '{{ instance.id']
targets: { selector: { role: db } }
";
    check(&[("a.yaml", &format!("{BASE}{checks}"))], "
        a.yaml:19:3: error[unknown-port]: found port `grpc`, which component `shop/api` does not declare; expected a declared port (`http`)
        a.yaml:19:3: error[unknown-template-variable]: found unknown template variable `instance.index` in argument `{{ instance.index }}`; expected one of `instance.host`, `instance.id`, `ports.<name>`
        a.yaml:28:3: error[template-syntax]: found `{{` without a closing `}}` in argument `{{ instance.id`; expected `instance.host` (a check of hosts has no instance or ports)
        a.yaml:28:3: error[unknown-template-variable]: found unknown template variable `ports.http` in argument `{{ ports.http }}`; expected `instance.host` (a check of hosts has no instance or ports)
    ");
}

#[test]
fn a_run_as_name_that_no_account_could_have_is_located() {
    check(
        &[("a.yaml", &format!("{BASE}run_as: {{ user: \"Www Data\", group: web }}\n"))],
        "
        a.yaml:12:17: error[invalid-name]: found user or group name `Www Data`; expected a POSIX account name: lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters
        ",
    );
}
