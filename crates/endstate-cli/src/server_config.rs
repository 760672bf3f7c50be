//! `endstate server --config-file FILE`: every flag of `endstate server` in a YAML file, keyed by
//! its long name (`listen: 0.0.0.0:7700`, `alert-webhook: [URL, URL]`, `insecure-http: false`).
//! A flag the command line gives is not taken from the file (lists too: the command line's list
//! replaces the file's); the environment fills what neither gives. An unknown setting is an
//! error naming the file, line and column. `ENDSTATE_SERVER_CONFIG` naming a file that does not
//! exist is no file; `--config-file` naming one is an error.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;

use serde_saphyr::Spanned;

/// The arguments with the config file's settings spliced in after `server`, or the arguments
/// unchanged when there is no config file. `known` is every long flag of `endstate server`.
pub(crate) fn expand(args: Vec<OsString>, known: &[String]) -> Result<Vec<OsString>, String> {
    let Some(at) = command_position(&args) else {
        return Ok(args);
    };
    if args[at] != "server" || args[at + 1..].iter().any(|a| a == "admin-token") {
        return Ok(args);
    }
    // From the environment, a file that is not there is no file (the unit sets the variable
    // whether or not the operator wrote one); named on the command line, it must exist.
    let mut file =
        std::env::var_os("ENDSTATE_SERVER_CONFIG").filter(|path| !path.is_empty() && Path::new(path).exists());
    for (i, arg) in args.iter().enumerate().skip(at + 1) {
        let Some(arg) = arg.to_str() else { continue };
        if let Some(path) = arg.strip_prefix("--config-file=") {
            file = Some(path.into());
        } else if arg == "--config-file" {
            file = args.get(i + 1).cloned();
        }
    }
    let Some(file) = file else {
        return Ok(args);
    };
    // A flag the command line gives is not taken from the file: the command line wins.
    let given: Vec<String> = args[at + 1..]
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect();
    let settings = settings(Path::new(&file), known, &given)?;
    let mut out = args[..=at].to_vec();
    out.extend(settings);
    out.extend_from_slice(&args[at + 1..]);
    Ok(out)
}

/// Where the subcommand is: the first argument that is neither a global flag nor its value.
fn command_position(args: &[OsString]) -> Option<usize> {
    const WITH_VALUE: [&str; 6] = ["--server", "--token", "--config", "--ca-file", "--output", "-o"];
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        if WITH_VALUE.contains(&arg) {
            i += 2;
        } else if arg.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

fn settings(path: &Path, known: &[String], given: &[String]) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the server config {shown}: {e}"))?;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        reject_unsupported_tags: true,
    };
    let map: HashMap<Spanned<String>, serde_json::Value> = if text.trim().is_empty() {
        HashMap::new()
    } else {
        serde_saphyr::from_str_with_options(&text, options)
            .map_err(|e| format!("{shown}: not a mapping of flag names to values: {e}"))?
    };
    let mut entries: Vec<(&Spanned<String>, &serde_json::Value)> = map.iter().collect();
    entries.sort_by_key(|(key, _)| (key.referenced.line(), key.referenced.column()));
    let mut args = Vec::new();
    for (key, value) in entries {
        let at = format!("{shown}:{}:{}", key.referenced.line(), key.referenced.column());
        let name = key.value.as_str();
        if name == "config-file" || !known.iter().any(|k| k == name) {
            return Err(format!(
                "{at}: unknown setting `{name}`: expected a flag of `endstate server` (see `endstate server --help`)"
            ));
        }
        if given.iter().any(|g| g == name) {
            continue;
        }
        // `--name=value`, so a value starting with `-` stays a value.
        match value {
            serde_json::Value::Bool(true) => args.push(format!("--{name}").into()),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                for item in items {
                    let item =
                        scalar(item).ok_or_else(|| format!("{at}: `{name}` holds a list of strings or numbers"))?;
                    args.push(format!("--{name}={item}").into());
                }
            }
            other => {
                let value = scalar(other)
                    .ok_or_else(|| format!("{at}: `{name}` is a string, a number, a boolean or a list"))?;
                args.push(format!("--{name}={value}").into());
            }
        }
    }
    Ok(args)
}

fn scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_comes_after_server_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "listen: 0.0.0.0:7700\nalert-webhook: [https://a, https://b]\nrate-limit: -5\n",
        )
        .unwrap();
        let known: Vec<String> = ["listen", "alert-webhook", "rate-limit"].map(String::from).to_vec();
        let path = file.to_str().unwrap();
        let out = expand(
            args(&[
                "endstate",
                "-o",
                "json",
                "server",
                "--config-file",
                path,
                "--listen",
                "127.0.0.1:1",
            ]),
            &known,
        )
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "endstate",
                "-o",
                "json",
                "server",
                "--alert-webhook=https://a",
                "--alert-webhook=https://b",
                "--rate-limit=-5",
                "--config-file",
                path,
                "--listen",
                "127.0.0.1:1",
            ])
        );
        // Not `server`, or a task of the stopped server: untouched.
        let status = args(&["endstate", "status", "--config-file", path]);
        assert_eq!(expand(status.clone(), &known).unwrap(), status);
        let task = args(&["endstate", "server", "admin-token", "--data-dir", "d"]);
        assert_eq!(expand(task.clone(), &known).unwrap(), task);
        // A missing file named on the command line is an error.
        let missing = dir.path().join("missing.yaml");
        let error = expand(
            args(&["endstate", "server", "--config-file", missing.to_str().unwrap()]),
            &known,
        )
        .unwrap_err();
        assert!(error.contains("cannot read the server config"), "{error}");
    }
}
