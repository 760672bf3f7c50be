//! `endstate server --config-file FILE`: every flag of `endstate server` in a YAML file, keyed by
//! its long name (`listen: 0.0.0.0:7700`, `alert-webhook: [URL, URL]`, `insecure-http: false`).
//! The file's settings go before the command line's, so a flag given there wins (the environment
//! fills what neither gives). An unknown setting is an error naming the file, line and column.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;

use serde_saphyr::Spanned;

/// The arguments with the config file's settings spliced in after `server`, or the arguments
/// unchanged when there is no config file. `known` is every long flag of `endstate server`.
pub(crate) fn expand(args: Vec<OsString>, known: &[String]) -> Result<Vec<OsString>, String> {
    if args.get(1).and_then(|a| a.to_str()) != Some("server") {
        return Ok(args);
    }
    let mut file = std::env::var_os("ENDSTATE_SERVER_CONFIG");
    for (i, arg) in args.iter().enumerate() {
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
    let settings = settings(Path::new(&file), known)?;
    let mut out = args[..2].to_vec();
    out.extend(settings);
    out.extend_from_slice(&args[2..]);
    Ok(out)
}

fn settings(path: &Path, known: &[String]) -> Result<Vec<OsString>, String> {
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
        let flag = format!("--{name}");
        match value {
            serde_json::Value::Bool(true) => args.push(flag.into()),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                for item in items {
                    args.push(flag.clone().into());
                    args.push(
                        scalar(item)
                            .ok_or_else(|| format!("{at}: `{name}` holds a list of strings or numbers"))?
                            .into(),
                    );
                }
            }
            other => {
                args.push(flag.into());
                args.push(
                    scalar(other)
                        .ok_or_else(|| format!("{at}: `{name}` is a string, a number, a boolean or a list"))?
                        .into(),
                );
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
