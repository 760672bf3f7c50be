//! Labels on hosts and systems, and the selectors that match them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key-value labels (`zone: a`, `role: web`). Ordered, so that everything derived from them is deterministic.
pub type Labels = BTreeMap<String, String>;

/// A label selector: every term must match (logical and). An empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector(pub BTreeMap<String, SelectorTerm>);

/// One term of a selector: the label must equal the value, or be one of the values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SelectorTerm {
    /// `zone: a`
    Equals(String),
    /// `zone: [a, b]`
    OneOf(Vec<String>),
}

impl Selector {
    /// Whether `labels` satisfies every term.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(key, term)| match (labels.get(key), term) {
            (Some(value), SelectorTerm::Equals(want)) => value == want,
            (Some(value), SelectorTerm::OneOf(wants)) => wants.iter().any(|want| want == value),
            (None, _) => false,
        })
    }

    /// Whether the selector has no terms (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the text form: terms separated by `,`, each `key=value` or `key=a|b` (one of);
    /// `key in (a|b)`, as [`Display`](std::fmt::Display) writes it, is read too.
    ///
    /// # Errors
    /// Names the term that is not `key=value`, or has an empty key or value, or a key twice.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = BTreeMap::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, values) = match term.split_once('=') {
                Some((key, values)) => (key.trim(), values.trim()),
                None => match term.split_once(" in ") {
                    Some((key, values)) => (
                        key.trim(),
                        values.trim().trim_start_matches('(').trim_end_matches(')').trim(),
                    ),
                    None => return Err(format!("{term:?} is not key=value or key=a|b")),
                },
            };
            let values: Vec<String> = values.split('|').map(|v| v.trim().to_string()).collect();
            if key.is_empty() || values.iter().any(String::is_empty) {
                return Err(format!("{term:?} has an empty key or value"));
            }
            let term_value = match values.as_slice() {
                [one] => SelectorTerm::Equals(one.clone()),
                _ => SelectorTerm::OneOf(values),
            };
            if terms.insert(key.to_string(), term_value).is_some() {
                return Err(format!("{key:?} is given twice"));
            }
        }
        Ok(Selector(terms))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(all)");
        }
        let mut first = true;
        for (key, term) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match term {
                SelectorTerm::Equals(value) => write!(f, "{key}={value}")?,
                SelectorTerm::OneOf(values) => write!(f, "{key} in ({})", values.join("|"))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_parse_from_text_and_back() {
        let selector = Selector::parse("zone=a|b, role=web").unwrap();
        assert_eq!(selector.to_string(), "role=web,zone in (a|b)");
        assert_eq!(Selector::parse(&selector.to_string()).unwrap(), selector);
        assert!(selector.matches(&labels(&[("zone", "b"), ("role", "web")])));
        assert!(!selector.matches(&labels(&[("zone", "c"), ("role", "web")])));
        assert!(Selector::parse("").unwrap().is_empty());
        assert_eq!(
            Selector::parse("zone").unwrap_err(),
            "\"zone\" is not key=value or key=a|b"
        );
        assert_eq!(
            Selector::parse("zone=").unwrap_err(),
            "\"zone=\" has an empty key or value"
        );
        assert_eq!(Selector::parse("a=1,a=2").unwrap_err(), "\"a\" is given twice");
    }

    #[test]
    fn selector_matches() {
        let mut sel = Selector::default();
        assert!(sel.matches(&labels(&[])));
        sel.0.insert("role".into(), SelectorTerm::Equals("web".into()));
        sel.0
            .insert("zone".into(), SelectorTerm::OneOf(vec!["a".into(), "b".into()]));
        assert!(sel.matches(&labels(&[("role", "web"), ("zone", "b")])));
        assert!(!sel.matches(&labels(&[("role", "web"), ("zone", "c")])));
        assert!(!sel.matches(&labels(&[("zone", "a")])));
        assert_eq!(sel.to_string(), "role=web,zone in (a|b)");
    }
}
