//! Rendering of a component's templates for one instance (done by the server, which sends agents
//! the rendered result): the command, args, env values and
//! config files, with the variables the spec allows (`{{ instance.host }}`, `{{ ports.http }}`, ...).
//!
//! The spec checks every template when it is loaded (`endstate-spec`'s `check_template`); this is
//! the same small language, evaluated. It is pure: writing the rendered files is the caller's job.
//!
//! # Guarantees
//!
//! - A variable without a value for this instance (`{{ ports.grpc }}` with no such port,
//!   `{{ host.labels.rack }}` on a host without that label, or a name outside the language) is an
//!   error naming the variable and the field; it is never rendered as empty.
//! - Values are inserted verbatim and not scanned again: a label value containing `{{` stays as is.
//! - [`render_instance`] reports every problem of every field, not only the first.

use std::collections::BTreeMap;
use std::fmt;

/// The values of the template variables for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVars {
    /// `{{ instance.host }}`: the host the instance runs on.
    pub instance_host: String,
    /// `{{ instance.index }}`: the instance's 0-based index among the component's instances.
    pub instance_index: u32,
    /// `{{ component.name }}`.
    pub component_name: String,
    /// `{{ component.system }}`.
    pub component_system: String,
    /// `{{ component.version }}`: the artifact version.
    pub component_version: String,
    /// `{{ host.labels.KEY }}`: the host's labels.
    pub host_labels: BTreeMap<String, String>,
    /// `{{ ports.NAME }}`: the ports allocated to this instance.
    pub ports: BTreeMap<String, u16>,
}

/// A config file to render: where it goes (relative to the instance directory, or absolute) and its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTemplate {
    /// Where the rendered file goes; not itself a template.
    pub path: String,
    /// The template of its contents.
    pub template: String,
}

/// Everything of a component that is rendered per instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceTemplates {
    /// The program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (names are not templates; values are).
    pub env: BTreeMap<String, String>,
    /// Its config files.
    pub config_files: Vec<ConfigTemplate>,
}

/// [`InstanceTemplates`] with every variable replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedInstance {
    /// The program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// Its config files, in the declared order.
    pub config_files: Vec<RenderedFile>,
}

/// One rendered config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Where it goes, as declared.
    pub path: String,
    /// Its contents.
    pub contents: String,
}

/// A template that cannot be rendered, with the field it is in (`args[1]`, `env.LOG`,
/// `config file etc/app.toml`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A variable that has no value for this instance.
    #[error("{field}: found template variable `{variable}`, which has no value for this instance")]
    Missing {
        /// Where the template is.
        field: String,
        /// The variable, trimmed (`ports.grpc`).
        variable: String,
    },
    /// `{{` without `}}`.
    #[error("{field}: found `{{{{` without a closing `}}}}`")]
    Unclosed {
        /// Where the template is.
        field: String,
    },
    /// `{{ ... }}` around something that is not a variable name.
    #[error("{field}: found `{{{{ {text} }}}}`, which is not a variable name")]
    NotAVariable {
        /// Where the template is.
        field: String,
        /// What is between the braces, trimmed.
        text: String,
    },
}

/// Every problem found by [`render_instance`], in field order (command, args, env, config files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderErrors(pub Vec<RenderError>);

impl fmt::Display for RenderErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, error) in self.0.iter().enumerate() {
            if idx > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RenderErrors {}

impl TemplateVars {
    /// The value of `variable` (already trimmed), if it has one for this instance.
    #[must_use]
    pub fn get(&self, variable: &str) -> Option<String> {
        match variable {
            "instance.host" => Some(self.instance_host.clone()),
            "instance.index" => Some(self.instance_index.to_string()),
            "component.name" => Some(self.component_name.clone()),
            "component.system" => Some(self.component_system.clone()),
            "component.version" => Some(self.component_version.clone()),
            _ => {
                if let Some(key) = variable.strip_prefix("host.labels.") {
                    self.host_labels.get(key).cloned()
                } else if let Some(name) = variable.strip_prefix("ports.") {
                    self.ports.get(name).map(u16::to_string)
                } else {
                    None
                }
            }
        }
    }
}

/// Renders one template; `field` names where it is, for the error.
///
/// # Errors
///
/// The first [`RenderError`] of the template.
pub fn render(template: &str, vars: &TemplateVars, field: &str) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(RenderError::Unclosed {
                field: field.to_owned(),
            });
        };
        let variable = after[..close].trim();
        if !is_variable_name(variable) {
            return Err(RenderError::NotAVariable {
                field: field.to_owned(),
                text: variable.to_owned(),
            });
        }
        let Some(value) = vars.get(variable) else {
            return Err(RenderError::Missing {
                field: field.to_owned(),
                variable: variable.to_owned(),
            });
        };
        out.push_str(&value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders the command, args, env values and config files of one instance.
///
/// # Errors
///
/// Every field that cannot be rendered, each with its first problem.
pub fn render_instance(templates: &InstanceTemplates, vars: &TemplateVars) -> Result<RenderedInstance, RenderErrors> {
    let mut errors = Vec::new();
    let mut one = |template: &str, field: String| match render(template, vars, &field) {
        Ok(text) => text,
        Err(error) => {
            errors.push(error);
            String::new()
        }
    };
    let command = one(&templates.command, "command".to_owned());
    let args = templates
        .args
        .iter()
        .enumerate()
        .map(|(idx, arg)| one(arg, format!("args[{idx}]")))
        .collect();
    let env = templates
        .env
        .iter()
        .map(|(name, value)| (name.clone(), one(value, format!("env.{name}"))))
        .collect();
    let config_files = templates
        .config_files
        .iter()
        .map(|file| RenderedFile {
            path: file.path.clone(),
            contents: one(&file.template, format!("config file {}", file.path)),
        })
        .collect();
    if errors.is_empty() {
        Ok(RenderedInstance {
            command,
            args,
            env,
            config_files,
        })
    } else {
        Err(RenderErrors(errors))
    }
}

/// The same rule as the spec's: dot-separated parts of ASCII letters, digits, `_` and `-`.
fn is_variable_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars {
        TemplateVars {
            instance_host: "web-1".to_owned(),
            instance_index: 2,
            component_name: "api".to_owned(),
            component_system: "shop".to_owned(),
            component_version: "2.4.1".to_owned(),
            host_labels: BTreeMap::from([
                ("zone".to_owned(), "a".to_owned()),
                ("odd".to_owned(), "{{ ports.http }}".to_owned()),
            ]),
            ports: BTreeMap::from([("http".to_owned(), 8080), ("admin-port".to_owned(), 9090)]),
        }
    }

    /// Renders `template` (as field `f`) and compares with `expect`: the text, or the error's message.
    #[track_caller]
    fn check(template: &str, vars: &TemplateVars, expect: Result<&str, &str>) {
        let got = render(template, vars, "f").map_err(|error| error.to_string());
        let expect = expect.map(str::to_owned).map_err(str::to_owned);
        assert_eq!(got, expect, "template {template:?}");
    }

    #[test]
    fn renders_every_variable() {
        let vars = vars();
        for (template, expect) in [
            ("", ""),
            ("plain text, no braces", "plain text, no braces"),
            ("{{ instance.host }}", "web-1"),
            ("{{instance.index}}", "2"),
            ("{{   component.name\t}}", "api"),
            ("{{ component.system }}/{{ component.version }}", "shop/2.4.1"),
            ("zone = \"{{ host.labels.zone }}\"\n", "zone = \"a\"\n"),
            ("0.0.0.0:{{ ports.http }}", "0.0.0.0:8080"),
            ("{{ ports.admin-port }}", "9090"),
            ("{{ ports.http }}{{ ports.http }}", "80808080"),
            (
                "single { and } braces and }} alone",
                "single { and } braces and }} alone",
            ),
            ("ünïcödé {{ instance.host }} ✓", "ünïcödé web-1 ✓"),
            // A value is not rendered again.
            ("{{ host.labels.odd }}", "{{ ports.http }}"),
        ] {
            check(template, &vars, Ok(expect));
        }
    }

    #[test]
    fn refuses_what_has_no_value() {
        let vars = vars();
        for (template, expect) in [
            (
                "{{ ports.grpc }}",
                "f: found template variable `ports.grpc`, which has no value for this instance",
            ),
            (
                "a {{ host.labels.rack }} b",
                "f: found template variable `host.labels.rack`, which has no value for this instance",
            ),
            (
                "{{ instance.name }}",
                "f: found template variable `instance.name`, which has no value for this instance",
            ),
            (
                "{{ host.labels }}",
                "f: found template variable `host.labels`, which has no value for this instance",
            ),
            ("{{ }}", "f: found `{{  }}`, which is not a variable name"),
            ("{{ a b }}", "f: found `{{ a b }}`, which is not a variable name"),
            (
                "{{ ports..http }}",
                "f: found `{{ ports..http }}`, which is not a variable name",
            ),
            ("{{ instance.host", "f: found `{{` without a closing `}}`"),
            ("{{ instance.host }} {{", "f: found `{{` without a closing `}}`"),
        ] {
            check(template, &vars, Err(expect));
        }
    }

    #[test]
    fn renders_an_instance_or_names_every_bad_field() {
        let vars = vars();
        let templates = InstanceTemplates {
            command: "bin/{{ component.name }}".to_owned(),
            args: vec!["--listen".to_owned(), "0.0.0.0:{{ ports.http }}".to_owned()],
            env: BTreeMap::from([("HOST".to_owned(), "{{ instance.host }}".to_owned())]),
            config_files: vec![ConfigTemplate {
                path: "etc/api.toml".to_owned(),
                template: "index = {{ instance.index }}\n".to_owned(),
            }],
        };
        let rendered = render_instance(&templates, &vars).unwrap();
        assert_eq!(
            rendered,
            RenderedInstance {
                command: "bin/api".to_owned(),
                args: vec!["--listen".to_owned(), "0.0.0.0:8080".to_owned()],
                env: BTreeMap::from([("HOST".to_owned(), "web-1".to_owned())]),
                config_files: vec![RenderedFile {
                    path: "etc/api.toml".to_owned(),
                    contents: "index = 2\n".to_owned(),
                }],
            }
        );

        let bad = InstanceTemplates {
            command: "bin/api".to_owned(),
            args: vec!["ok".to_owned(), "{{ ports.grpc }}".to_owned()],
            env: BTreeMap::from([("RACK".to_owned(), "{{ host.labels.rack }}".to_owned())]),
            config_files: vec![ConfigTemplate {
                path: "etc/api.toml".to_owned(),
                template: "x = {{ x".to_owned(),
            }],
        };
        let errors = render_instance(&bad, &vars).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "args[1]: found template variable `ports.grpc`, which has no value for this instance; \
             env.RACK: found template variable `host.labels.rack`, which has no value for this instance; \
             config file etc/api.toml: found `{{` without a closing `}}`"
        );
    }
}
