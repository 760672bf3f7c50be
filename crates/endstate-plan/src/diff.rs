//! Field-level differences between two JSON values, in the style of `terraform plan`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One leaf field that differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// The field's path, e.g. `artifact.version`, `env.LOG_LEVEL`, `args[1]`.
    pub path: String,
    /// The value before; absent when the field is added.
    pub before: Option<Value>,
    /// The value after; absent when the field is removed.
    pub after: Option<Value>,
}

/// Every leaf that differs between `before` and `after`, ordered by path.
///
/// Objects are compared key by key, arrays of the same length element by element; an array whose
/// length changes is reported as a whole, since element-wise differences would mislead.
pub fn diff_values(before: &Value, after: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

fn walk(path: &str, before: &Value, after: &Value, out: &mut Vec<FieldDiff>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let sub = join(path, key);
                match (b.get(key), a.get(key)) {
                    (Some(bv), Some(av)) => walk(&sub, bv, av, out),
                    (Some(bv), None) if !bv.is_null() => out.push(FieldDiff {
                        path: sub,
                        before: Some(bv.clone()),
                        after: None,
                    }),
                    (None, Some(av)) if !av.is_null() => out.push(FieldDiff {
                        path: sub,
                        before: None,
                        after: Some(av.clone()),
                    }),
                    _ => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (idx, (bv, av)) in b.iter().zip(a).enumerate() {
                walk(&format!("{path}[{idx}]"), bv, av, out);
            }
        }
        _ if before == after => {}
        (Value::Null, _) => out.push(FieldDiff {
            path: path.to_string(),
            before: None,
            after: Some(after.clone()),
        }),
        (_, Value::Null) => out.push(FieldDiff {
            path: path.to_string(),
            before: Some(before.clone()),
            after: None,
        }),
        _ => out.push(FieldDiff {
            path: path.to_string(),
            before: Some(before.clone()),
            after: Some(after.clone()),
        }),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(before: Value, after: Value, expect: &[&str]) {
        let got: Vec<String> = diff_values(&before, &after)
            .into_iter()
            .map(|d| {
                format!(
                    "{}: {} -> {}",
                    d.path,
                    d.before.map_or("(none)".into(), |v| v.to_string()),
                    d.after.map_or("(none)".into(), |v| v.to_string())
                )
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn nested_objects_arrays_and_nulls() {
        check(json!({"a": 1}), json!({"a": 1}), &[]);
        check(
            json!({"artifact": {"version": "1.0"}, "env": {"A": "x"}, "args": ["-v", "a"], "gone": 1, "nul": null}),
            json!({"artifact": {"version": "1.1"}, "env": {"A": "x", "B": "y"}, "args": ["-v", "b"], "nul": null}),
            &[
                "args[1]: \"a\" -> \"b\"",
                "artifact.version: \"1.0\" -> \"1.1\"",
                "env.B: (none) -> \"y\"",
                "gone: 1 -> (none)",
            ],
        );
        check(
            json!({"args": ["a"]}),
            json!({"args": ["a", "b"]}),
            &["args: [\"a\"] -> [\"a\",\"b\"]"],
        );
        check(json!({"x": null}), json!({"x": 3}), &["x: (none) -> 3"]);
    }
}
