//! Who owns what in a desired state, and a revision composed from its origins.
//!
//! A revision holds the whole desired state. Its objects come from several origins: the API
//! (`endstate apply`, `scale`, the other writers of desired state) and each Git source. A source
//! owns the systems its documents declare (with their components, checks and actions) and the
//! policies and static hosts it declares, recorded in [`DesiredState::owners`]; everything else
//! belongs to the API. Each origin replaces only what it owns:
//! - a source's commit replaces the source's objects and keeps the rest ([`with_source`]); it may
//!   adopt a system the API declared (moving a system to Git needs no teardown), never one
//!   another source owns;
//! - a submission through the API replaces the API's objects and keeps every source's
//!   ([`with_api`]); a document of it declaring an object a source owns is refused, naming the
//!   source ([`owned_elsewhere`]).
//!
//! The files of one origin are validated with stand-ins for the systems of the others
//! ([`stand_ins`]: a `System` document with the name and labels), so a component, a subsystem
//! or a selector may name a system of another origin. Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};

use endstate_spec::{Declaration, DesiredState, SourceCommit, SourceFile};

/// The path given to the stand-in documents (never a real file's: those come from a directory
/// or a repository).
const STAND_IN_PATH: &str = "<systems of other origins>";

/// The owner key of an object: `System/shop`, `Policy/prod`, `Host/switch-1`.
pub(crate) fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// The source owning `system` in `desired`, `None` for the API.
pub(crate) fn system_owner<'a>(desired: &'a DesiredState, system: &str) -> Option<&'a str> {
    desired.owners.get(&key("System", system)).map(String::as_str)
}

/// The systems `source` owns in `desired`, sorted.
pub(crate) fn owned_systems(desired: &DesiredState, source: &str) -> Vec<String> {
    desired
        .owners
        .iter()
        .filter(|(k, owner)| *owner == source && k.starts_with("System/"))
        .filter_map(|(k, _)| k.strip_prefix("System/").map(str::to_owned))
        .collect()
}

/// One `System` document per system of `desired` that `keep` says belongs to another origin,
/// with its name and labels, in one file at [`STAND_IN_PATH`]; and their names.
pub(crate) fn stand_ins(
    desired: Option<&DesiredState>,
    other: impl Fn(&str) -> bool,
) -> (Option<SourceFile>, BTreeSet<String>) {
    let Some(desired) = desired else {
        return (None, BTreeSet::new());
    };
    let mut names = BTreeSet::new();
    let mut text = String::new();
    for (name, system) in &desired.systems {
        if !other(name.as_str()) {
            continue;
        }
        let document = serde_json::json!({
            "apiVersion": "endstate/v1",
            "kind": "System",
            "name": name,
            "description": system.description,
            "labels": system.labels,
        });
        text.push_str("---\n");
        text.push_str(&document.to_string());
        text.push('\n');
        names.insert(name.clone());
    }
    let file = (!names.is_empty()).then(|| SourceFile {
        path: STAND_IN_PATH.to_owned(),
        text,
    });
    (file, names)
}

/// A declaration naming an object another origin owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The file.
    pub(crate) path: String,
    /// 1-based line of the name.
    pub(crate) line: u64,
    /// 1-based column of the name.
    pub(crate) column: u64,
    /// `system shop is owned by the Git source shop-repo; change it there`.
    pub(crate) message: String,
}

impl Refusal {
    /// `path:line:column: message`.
    pub(crate) fn located(&self) -> String {
        format!("{}:{}:{}: {}", self.path, self.line, self.column, self.message)
    }
}

/// The declarations of `files` that name an object an origin other than `origin` (a source
/// name, `None` for the API) owns in `previous`. A source may adopt what the API owns; nothing
/// else changes hands.
pub(crate) fn owned_elsewhere(
    declarations: &[Declaration],
    previous: Option<&DesiredState>,
    origin: Option<&str>,
    describe: impl Fn(&str) -> String,
) -> Vec<Refusal> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut refusals = Vec::new();
    for declaration in declarations {
        let owner_key = match (declaration.kind, &declaration.system) {
            ("Policy" | "Host", _) => key(declaration.kind, &declaration.name),
            (_, Some(system)) => key("System", system),
            (_, None) => continue,
        };
        let Some(owner) = previous.owners.get(&owner_key) else {
            continue;
        };
        if origin == Some(owner.as_str()) {
            continue;
        }
        let (kind, name) = owner_key.split_once('/').unwrap_or(("", &owner_key));
        refusals.push(Refusal {
            path: declaration.path.clone(),
            line: declaration.line,
            column: declaration.column,
            message: format!(
                "{} {name} is owned by {}; change it there",
                kind.to_lowercase(),
                describe(owner)
            ),
        });
    }
    refusals
}

/// Everything of `desired` the owner `owner` (a source, or `None` for the API) has: its
/// systems with their components, checks and actions, its policies and hosts.
fn retain_owned(desired: &mut DesiredState, keep: impl Fn(Option<&str>) -> bool) {
    let owners = desired.owners.clone();
    let owner_of = |kind: &str, name: &str| owners.get(&key(kind, name)).map(String::as_str);
    desired.systems.retain(|name, _| keep(owner_of("System", name)));
    desired.components.retain(|_, c| keep(owner_of("System", &c.system)));
    desired.checks.retain(|_, c| keep(owner_of("System", &c.system)));
    desired.actions.retain(|_, a| keep(owner_of("System", &a.system)));
    desired.policies.retain(|name, _| keep(owner_of("Policy", name)));
    desired.hosts.retain(|name, _| keep(owner_of("Host", name)));
    desired.owners.retain(|_, owner| keep(Some(owner)));
}

/// Adds every object of `from` to `into` (the caller removed what they replace).
fn merge(into: &mut DesiredState, from: DesiredState) {
    into.systems.extend(from.systems);
    into.components.extend(from.components);
    into.checks.extend(from.checks);
    into.actions.extend(from.actions);
    into.policies.extend(from.policies);
    into.hosts.extend(from.hosts);
}

/// The desired state after a submission through the API: `loaded` (its files with the
/// stand-ins `stand_ins` for the sources' systems) for what the API owns, and every source's
/// objects, owners and commits from `previous`.
pub(crate) fn with_api(
    previous: Option<&DesiredState>,
    mut loaded: DesiredState,
    stand_ins: &BTreeSet<String>,
) -> DesiredState {
    loaded.systems.retain(|name, _| !stand_ins.contains(name));
    loaded.owners.clear();
    loaded.sources.clear();
    if let Some(previous) = previous {
        let mut kept = previous.clone();
        retain_owned(&mut kept, |owner| owner.is_some());
        loaded.owners = kept.owners.clone();
        loaded.sources = kept.sources.clone();
        merge(&mut loaded, kept);
    }
    loaded
}

/// The desired state after a commit of `source`: `previous` without what the source owned,
/// plus `loaded` (the source's files with the stand-ins `stand_ins` for the other systems),
/// all of it owned by the source, at `commit`.
pub(crate) fn with_source(
    previous: Option<&DesiredState>,
    source: &str,
    mut loaded: DesiredState,
    stand_ins: &BTreeSet<String>,
    commit: SourceCommit,
) -> DesiredState {
    loaded.systems.retain(|name, _| !stand_ins.contains(name));
    let mut composed = previous.cloned().unwrap_or_default();
    retain_owned(&mut composed, |owner| owner != Some(source));
    // A system the source declares and the API had: adopted, with whatever it held.
    let adopted: Vec<String> = loaded.systems.keys().cloned().collect();
    composed.systems.retain(|name, _| !adopted.contains(name));
    composed.components.retain(|_, c| !adopted.contains(&c.system));
    composed.checks.retain(|_, c| !adopted.contains(&c.system));
    composed.actions.retain(|_, a| !adopted.contains(&a.system));
    composed.policies.retain(|name, _| !loaded.policies.contains_key(name));
    composed.hosts.retain(|name, _| !loaded.hosts.contains_key(name));
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for name in loaded.systems.keys() {
        owners.insert(key("System", name), source.to_owned());
    }
    for name in loaded.policies.keys() {
        owners.insert(key("Policy", name), source.to_owned());
    }
    for name in loaded.hosts.keys() {
        owners.insert(key("Host", name), source.to_owned());
    }
    loaded.owners.clear();
    loaded.sources.clear();
    merge(&mut composed, loaded);
    composed.owners.extend(owners);
    composed.sources.insert(source.to_owned(), commit);
    composed
}

/// The desired state once `source` is removed: its objects stay, owned by the API from now on.
pub(crate) fn without_source(previous: &DesiredState, source: &str) -> DesiredState {
    let mut desired = previous.clone();
    desired.owners.retain(|_, owner| owner != source);
    desired.sources.remove(source);
    desired
}

/// References that no longer resolve after composing: a subsystem, a dependency or a policy's
/// system that one origin removed while another names it.
pub(crate) fn dangling(desired: &DesiredState) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, system) in &desired.systems {
        for sub in &system.subsystems {
            if !desired.systems.contains_key(sub) {
                problems.push(format!("system {name} lists subsystem {sub}, which no longer exists"));
            }
        }
    }
    for (name, component) in &desired.components {
        for dep in &component.depends_on {
            if !desired.components.contains_key(dep) {
                problems.push(format!("component {name} depends on {dep}, which no longer exists"));
            }
        }
    }
    for (name, policy) in &desired.policies {
        for system in &policy.applies_to.systems {
            if !desired.systems.contains_key(system) {
                problems.push(format!(
                    "policy {name} applies to system {system}, which no longer exists"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)], stand_in: Option<SourceFile>) -> DesiredState {
        let mut files: Vec<SourceFile> = files
            .iter()
            .map(|(path, text)| SourceFile {
                path: (*path).to_owned(),
                text: (*text).to_owned(),
            })
            .collect();
        files.extend(stand_in);
        let loaded = endstate_spec::load(&files, &[]);
        loaded
            .desired
            .unwrap_or_else(|| panic!("invalid: {:?}", loaded.diagnostics))
    }

    fn system(name: &str, subsystems: &[&str]) -> String {
        format!(
            "apiVersion: endstate/v1\nkind: System\nname: {name}\ndescription: d\nlabels: {{ tier: web }}\nsubsystems: [{}]\n",
            subsystems.join(", ")
        )
    }

    fn component(system: &str, version: &str) -> String {
        format!(
            "apiVersion: endstate/v1\nkind: Component\nname: web\nsystem: {system}\nartifact: {{ version: \"{version}\", path: bin/web }}\ncommand: web\nplacement: {{ selector: {{ role: web }}, count: {{ per_host: 1 }} }}\n"
        )
    }

    fn commit(id: &str) -> SourceCommit {
        SourceCommit {
            repository: "file:///repo.git".into(),
            branch: "main".into(),
            commit: id.into(),
            author: "Ada <ada@example.org>".into(),
            subject: "s".into(),
        }
    }

    /// The API declares `platform` (aggregating `shop`); the source `git-shop` declares `shop`.
    fn composed() -> DesiredState {
        let api = load(
            &[
                ("platform.yaml", &system("platform", &[])),
                ("shop.yaml", &system("shop", &[])),
            ],
            None,
        );
        let (stand_in, names) = stand_ins(Some(&api), |name| name != "shop");
        let shop = load(
            &[
                ("shop/system.yaml", &system("shop", &[])),
                ("shop/web.yaml", &component("shop", "1.0")),
            ],
            stand_in,
        );
        with_source(Some(&api), "git-shop", shop, &names, commit("a1"))
    }

    #[test]
    fn a_source_adopts_a_system_of_the_api_and_owns_its_objects() {
        let desired = composed();
        assert_eq!(system_owner(&desired, "shop"), Some("git-shop"));
        assert_eq!(system_owner(&desired, "platform"), None);
        assert!(desired.components.contains_key("shop/web"));
        assert_eq!(owned_systems(&desired, "git-shop"), ["shop"]);
        assert_eq!(desired.sources["git-shop"].commit, "a1");
    }

    #[test]
    fn the_api_replaces_its_objects_and_keeps_the_sources() {
        let previous = composed();
        let (stand_in, names) = stand_ins(Some(&previous), |name| system_owner(&previous, name).is_some());
        // The API's files now aggregate the source's system (a stand-in while validating).
        let api = load(&[("platform.yaml", &system("platform", &["shop"]))], stand_in);
        let desired = with_api(Some(&previous), api, &names);
        assert_eq!(desired.systems["platform"].subsystems, ["shop"]);
        assert!(
            desired.components.contains_key("shop/web"),
            "the source's component stays"
        );
        assert_eq!(system_owner(&desired, "shop"), Some("git-shop"));
        assert_eq!(
            desired.systems["shop"].description, "d",
            "the source's own system, not its stand-in"
        );
        assert!(dangling(&desired).is_empty());
    }

    #[test]
    fn a_document_of_another_origin_declaring_an_owned_system_is_refused_where_it_is() {
        let previous = composed();
        let files = vec![SourceFile {
            path: "spec/shop.yaml".into(),
            text: component("shop", "2.0"),
        }];
        let declarations = endstate_spec::declarations(&files);
        let problems = owned_elsewhere(&declarations, Some(&previous), None, |s| format!("the Git source {s}"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].located(),
            "spec/shop.yaml:4:9: system shop is owned by the Git source git-shop; change it there"
        );
        // Another source may not take it either; the owner may.
        assert_eq!(
            owned_elsewhere(&declarations, Some(&previous), Some("other"), |s| s.to_owned()).len(),
            1
        );
        assert!(owned_elsewhere(&declarations, Some(&previous), Some("git-shop"), |s| s.to_owned()).is_empty());
    }

    #[test]
    fn a_source_removing_a_system_the_api_aggregates_leaves_a_dangling_reference() {
        let previous = {
            let api = load(
                &[
                    ("platform.yaml", &system("platform", &["shop"])),
                    ("shop.yaml", &system("shop", &[])),
                ],
                None,
            );
            let (stand_in, names) = stand_ins(Some(&api), |name| name != "shop");
            let shop = load(&[("shop.yaml", &system("shop", &[]))], stand_in);
            with_source(Some(&api), "git-shop", shop, &names, commit("a1"))
        };
        let (stand_in, names) = stand_ins(Some(&previous), |name| {
            system_owner(&previous, name) != Some("git-shop")
        });
        let other = load(&[("cache.yaml", &system("cache", &[]))], stand_in);
        let desired = with_source(Some(&previous), "git-shop", other, &names, commit("b2"));
        assert!(!desired.systems.contains_key("shop"));
        assert_eq!(
            dangling(&desired),
            ["system platform lists subsystem shop, which no longer exists"]
        );
    }

    #[test]
    fn removing_a_source_leaves_its_systems_to_the_api() {
        let desired = without_source(&composed(), "git-shop");
        assert!(desired.systems.contains_key("shop"));
        assert_eq!(system_owner(&desired, "shop"), None);
        assert!(desired.sources.is_empty());
    }
}
