//! Template variables (`{{ instance.host }}`) in component and action strings, and cron expressions:
//! the small languages inside spec strings, checked at load time.

/// The template variables of a component, besides `ports.<name>` and `host.labels.<key>`.
pub(crate) const COMPONENT_VARIABLES: [&str; 5] = [
    "instance.host",
    "instance.index",
    "component.name",
    "component.system",
    "component.version",
];

/// The template variables of an action, besides `params.<name>` and `host.labels.<key>`.
pub(crate) const ACTION_VARIABLES: [&str; 3] = ["instance.host", "action.name", "action.system"];

/// A problem in a template: the offending text and what was expected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TemplateProblem {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// Checks every `{{ variable }}` of `text` with `known` (which gets the trimmed variable name).
pub(crate) fn check_template(text: &str, known: &dyn Fn(&str) -> bool) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = rest.get(open + 2..).unwrap_or_default();
        let Some(close) = after.find("}}") else {
            problems.push(TemplateProblem {
                code: "template-syntax",
                message: "found `{{` without a closing `}}`".to_owned(),
            });
            break;
        };
        let variable = after.get(..close).unwrap_or_default().trim();
        let well_formed = !variable.is_empty()
            && variable.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !well_formed {
            problems.push(TemplateProblem {
                code: "template-syntax",
                message: format!("found `{{{{ {variable} }}}}`, which is not a variable name"),
            });
        } else if !known(variable) {
            problems.push(TemplateProblem {
                code: "unknown-template-variable",
                message: format!("found unknown template variable `{variable}`"),
            });
        }
        rest = after.get(close + 2..).unwrap_or_default();
    }
    problems
}

/// The names of the `{{ variable }}`s of `text`, trimmed, as written.
pub(crate) fn variables(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = rest.get(open + 2..).unwrap_or_default();
        let Some(close) = after.find("}}") else { break };
        names.push(after.get(..close).unwrap_or_default().trim());
        rest = after.get(close + 2..).unwrap_or_default();
    }
    names
}

/// Checks a 5-field cron expression (`minute hour day-of-month month day-of-week`).
///
/// Each field is `*` or a comma list of `value`, `a-b`, with an optional `/step`; months and weekdays
/// also take three-letter English names. Returns what is wrong, lowercase.
pub(crate) fn check_cron(expression: &str) -> Result<(), String> {
    const FIELDS: [(&str, u32, u32, &[&str]); 5] = [
        ("minute", 0, 59, &[]),
        ("hour", 0, 23, &[]),
        ("day of month", 1, 31, &[]),
        (
            "month",
            1,
            12,
            &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
        ),
        ("day of week", 0, 7, &["sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "found {} fields in cron expression `{expression}`",
            fields.len()
        ));
    }
    for (field, (what, min, max, names)) in fields.iter().zip(FIELDS) {
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            if let Some(step) = step {
                match step.parse::<u32>() {
                    Ok(step) if step >= 1 && step <= max => {}
                    _ => return Err(format!("found step `{step}` in the {what} field `{field}`")),
                }
            }
            if range == "*" {
                continue;
            }
            let value = |text: &str| -> Result<u32, String> {
                let parsed = text.parse::<u32>().ok().or_else(|| {
                    let lower = text.to_ascii_lowercase();
                    names
                        .iter()
                        .position(|name| *name == lower)
                        .and_then(|idx| u32::try_from(idx).ok())
                        .map(|idx| {
                            // Months count from 1, weekdays from 0 (Sunday).
                            if min == 1 { idx + 1 } else { idx }
                        })
                });
                match parsed {
                    Some(v) if (min..=max).contains(&v) => Ok(v),
                    _ => Err(format!("found `{text}` in the {what} field, outside {min}-{max}")),
                }
            };
            match range.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (value(low)?, value(high)?);
                    if low > high {
                        return Err(format!("found the backwards range `{range}` in the {what} field"));
                    }
                }
                None => {
                    value(range)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let known = |v: &str| v == "instance.host" || v == "ports.http";
        assert_eq!(check_template("a {{ instance.host }}:{{ports.http}} b", &known), vec![]);
        let problems = check_template("{{ ports.grpc }} {{ }} {{ x", &known);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "found unknown template variable `ports.grpc`",
                "found `{{  }}`, which is not a variable name",
                "found `{{` without a closing `}}`",
            ]
        );
    }

    #[test]
    fn cron() {
        for good in [
            "0 18 * * 5",
            "*/15 0-6 1,15 jan-mar mon-fri",
            "0 0 * * 7",
            "59 23 31 12 sun",
        ] {
            assert_eq!(check_cron(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("0 18 * *", "found 4 fields in cron expression `0 18 * *`"),
            ("60 * * * *", "found `60` in the minute field, outside 0-59"),
            ("0 24 * * *", "found `24` in the hour field, outside 0-23"),
            ("0 0 0 * *", "found `0` in the day of month field, outside 1-31"),
            ("0 0 * 13 *", "found `13` in the month field, outside 1-12"),
            ("0 0 * * 8", "found `8` in the day of week field, outside 0-7"),
            ("*/0 * * * *", "found step `0` in the minute field `*/0`"),
            ("5-1 * * * *", "found the backwards range `5-1` in the minute field"),
        ] {
            assert_eq!(check_cron(bad), Err(why.to_owned()), "{bad}");
        }
    }
}
