//! Durations as Kubernetes and Velero users write them (Go's `time.ParseDuration`):
//! `720h`, `1h30m`, `90s`, `1.5h`, `500ms`.
//!
//! Custom resources hold them typed ([`Duration`], kube's `metav1.Duration`), so they are
//! parsed once, when an object is read. Their schema carries a pattern, so the API server
//! refuses a text that would not parse (or a negative one) before any controller sees it.

use std::borrow::Cow;

pub use kube::core::Duration;

/// What the schema of a duration field accepts: `0`, or numbers with units, none negative.
pub const PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// A Go duration that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a duration at all.
    #[error("duration {text:?}: {why} (examples: 720h, 1h30m, 90s)")]
    Unreadable {
        /// What was written.
        text: String,
        /// The parser's complaint.
        why: String,
    },
    /// A duration that must be positive was zero or negative.
    #[error("duration {text:?}: must be more than 0")]
    NotPositive {
        /// What was written.
        text: String,
    },
}

/// Parses a Go duration that may be zero but not negative (a command-line flag, an
/// annotation), into a standard duration.
pub fn parse(text: &str) -> Result<std::time::Duration, DurationError> {
    let trimmed = text.trim();
    let unreadable = |why: String| DurationError::Unreadable {
        text: text.to_string(),
        why,
    };
    if trimmed.is_empty() {
        return Err(unreadable("empty".into()));
    }
    let parsed: Duration = trimmed.parse().map_err(|e| unreadable(format!("{e}")))?;
    if parsed.is_negative() {
        return Err(unreadable("negative".into()));
    }
    Ok(parsed.into())
}

/// [`parse`], as the typed value custom resources hold (for command-line flags).
pub fn typed(text: &str) -> Result<Duration, DurationError> {
    parse(text).map(Duration::from)
}

/// A typed duration that must be above zero (for command-line flags).
pub fn typed_positive(text: &str) -> Result<Duration, DurationError> {
    match parse(text)? {
        d if d.is_zero() => Err(DurationError::NotPositive {
            text: text.to_string(),
        }),
        d => Ok(d.into()),
    }
}

/// A duration above zero: `value`, or `default` when it is not given.
pub fn positive(
    value: Option<&Duration>,
    default: std::time::Duration,
) -> Result<std::time::Duration, DurationError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let d: std::time::Duration = (*value).into();
    if value.is_negative() || d.is_zero() {
        let text = if value.is_negative() {
            value.to_string()
        } else {
            human(d)
        };
        return Err(DurationError::NotPositive { text });
    }
    Ok(d)
}

/// A duration as a person writes it, Go style without the zero parts: `4h`, `1h30m`,
/// `1m30s`, `500ms`.
pub fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if d.is_zero() {
        return "0s".into();
    }
    if secs == 0 {
        return match d.subsec_millis() {
            0 => format!("{}ns", d.subsec_nanos()),
            ms => format!("{ms}ms"),
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// The CRD schema of a duration field: a string the API server checks against [`PATTERN`].
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": PATTERN,
    })
}

/// Its name in generated schemas.
pub fn schema_name() -> Cow<'static, str> {
    "GoDuration".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse("720h"), Ok(Std::from_secs(720 * 3600)));
        assert_eq!(parse("1h30m"), Ok(Std::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Std::from_secs(5400)));
        assert_eq!(parse(" 90s "), Ok(Std::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Std::from_millis(500)));
        assert_eq!(parse("0"), Ok(Std::ZERO));
        for bad in ["", "10", "-1h", "5d", "h", "1h x"] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn the_pattern_agrees_with_the_parser() {
        let pattern = regex::Regex::new(PATTERN).expect("the pattern compiles");
        for good in [
            "0", "720h", "1h30m", "1.5h", "90s", "500ms", "3µs", "2us", "7ns",
        ] {
            assert!(pattern.is_match(good), "{good}");
            assert!(parse(good).is_ok(), "{good}");
        }
        for bad in ["", "10", "-1h", "5d", "h", "1h x", "+1h", "1.h"] {
            assert!(!pattern.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn durations_are_shown_without_their_zero_parts() {
        assert_eq!(human(Std::from_secs(4 * 3600)), "4h");
        assert_eq!(human(Std::from_secs(5400)), "1h30m");
        assert_eq!(human(Std::from_secs(90)), "1m30s");
        assert_eq!(human(Std::from_secs(3601)), "1h1s");
        assert_eq!(human(Std::from_millis(500)), "500ms");
        assert_eq!(human(Std::ZERO), "0s");
        assert_eq!(human(Std::from_nanos(7)), "7ns");
    }

    #[test]
    fn positive_durations_refuse_zero() {
        let four_hours = Std::from_secs(4 * 3600);
        assert_eq!(positive(None, four_hours), Ok(four_hours));
        let d: Duration = "1h30m".parse().expect("a duration");
        assert_eq!(positive(Some(&d), four_hours), Ok(Std::from_secs(5400)));
        let zero: Duration = "0s".parse().expect("a duration");
        let err = positive(Some(&zero), four_hours).expect_err("zero");
        assert!(err.to_string().contains("more than 0"), "{err}");
        assert!(typed("0").is_ok() && typed_positive("0").is_err() && typed("-1s").is_err());
        assert_eq!(typed_positive("90s").map(Std::from), Ok(Std::from_secs(90)));
    }
}
