//! Field checks shared by the record-layer kinds.

use std::time::SystemTime;

use super::error::{RecordError, Result};

/// Text must be non-empty (when required), bounded, and free of control characters other than
/// newlines and tabs, which could otherwise rewrite a terminal listing.
pub fn text(field: &'static str, value: &str, max_bytes: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(RecordError::InvalidText {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > max_bytes {
        return Err(RecordError::InvalidText {
            field,
            reason: format!("is longer than {max_bytes} bytes"),
        });
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(RecordError::InvalidText {
            field,
            reason: "contains control characters".into(),
        });
    }
    Ok(())
}

/// Text on one line: titles, names, paths.
pub fn line(field: &'static str, value: &str, max_bytes: usize) -> Result<()> {
    text(field, value, max_bytes)?;
    if value.contains(['\n', '\t']) {
        return Err(RecordError::InvalidText {
            field,
            reason: "must be a single line".into(),
        });
    }
    Ok(())
}

pub const MAX_URL_BYTES: usize = 2048;
const URL_SCHEMES: [&str; 4] = ["https", "http", "ipfs", "ipns"];

pub fn url(field: &'static str, value: &str) -> Result<()> {
    let invalid = |reason: String| RecordError::InvalidUrl {
        field,
        url: value.to_string(),
        reason,
    };
    if value.len() > MAX_URL_BYTES {
        return Err(invalid(format!("longer than {MAX_URL_BYTES} bytes")));
    }
    let parsed = url::Url::parse(value).map_err(|e| invalid(e.to_string()))?;
    if !URL_SCHEMES.contains(&parsed.scheme()) {
        return Err(invalid(format!(
            "scheme must be one of {}",
            URL_SCHEMES.join(", ")
        )));
    }
    Ok(())
}

pub fn language(tag: &str) -> Result<()> {
    oxilangtag::LanguageTag::parse(tag)
        .map(|_| ())
        .map_err(|e| RecordError::InvalidLanguage {
            tag: tag.to_string(),
            reason: e.to_string(),
        })
}

/// RFC 3339 in UTC with whole seconds, the one spelling `now_utc` produces.
pub fn time(value: &str) -> Result<()> {
    let parsed =
        humantime::parse_rfc3339(value).map_err(|_| RecordError::InvalidTime(value.to_string()))?;
    if humantime::format_rfc3339_seconds(parsed).to_string() != value {
        return Err(RecordError::InvalidTime(value.to_string()));
    }
    Ok(())
}

/// The current time in the form `time` accepts.
pub fn now_utc() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// ISO 8601 duration as schema.org's timeRequired uses it: `P[nY][nM][nW][nD][T[nH][nM][nS]]`,
/// at least one component, seconds may have a decimal fraction.
pub fn duration(value: &str) -> Result<()> {
    if is_iso8601_duration(value) {
        Ok(())
    } else {
        Err(RecordError::InvalidDuration(value.to_string()))
    }
}

fn is_iso8601_duration(value: &str) -> bool {
    let Some(rest) = value.strip_prefix('P') else {
        return false;
    };
    let (date_part, time_part) = match rest.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (rest, None),
    };
    let date_ok = components_in_order(date_part, &['Y', 'M', 'W', 'D'], false);
    let time_ok = time_part
        .is_none_or(|t| !t.is_empty() && components_in_order(t, &['H', 'M', 'S'], true).is_some());
    let any_component = !date_part.is_empty() || time_part.is_some();
    date_ok.is_some() && time_ok && any_component
}

/// Parses `12H30M`-style components whose designators appear in `order`; returns `None` if the
/// text has anything else. Only the last component (seconds) may carry a fraction.
fn components_in_order(text: &str, order: &[char], last_may_be_fractional: bool) -> Option<()> {
    let mut next_allowed = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            digits.push(c);
            continue;
        }
        let position = order.iter().skip(next_allowed).position(|d| *d == c)? + next_allowed;
        let is_last_designator = position == order.len() - 1;
        let fractional_ok = last_may_be_fractional && is_last_designator;
        let valid_number = match digits.split_once('.') {
            None => !digits.is_empty(),
            Some((whole, fraction)) => {
                fractional_ok
                    && !whole.is_empty()
                    && !fraction.is_empty()
                    && !fraction.contains('.')
            }
        };
        if !valid_number {
            return None;
        }
        digits.clear();
        next_allowed = position + 1;
    }
    digits.is_empty().then_some(())
}

/// schema.org typicalAgeRange: `7-10`, `16-` or `12`.
pub fn age_range(value: &str) -> Result<()> {
    let invalid = || RecordError::InvalidAgeRange(value.to_string());
    let age = |s: &str| -> Option<u8> {
        if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match value.split_once('-') {
        None => age(value).map(|_| ()).ok_or_else(invalid),
        Some((low, "")) => age(low).map(|_| ()).ok_or_else(invalid),
        Some((low, high)) => match (age(low), age(high)) {
            (Some(low), Some(high)) if low <= high => Ok(()),
            _ => Err(invalid()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for good in [
            "PT45M",
            "P1D",
            "P1DT2H",
            "PT1H30M",
            "PT0.5S",
            "P2W",
            "P1Y2M3DT4H5M6S",
        ] {
            assert!(duration(good).is_ok(), "{good}");
        }
        for bad in [
            "", "P", "PT", "45M", "PT1.5H", "P1H", "PT5M1H", "P1DT", "PT1..5S", "PT.5S", "P-1D",
            "PT1M2",
        ] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_must_be_utc_whole_seconds() {
        assert!(time("2024-05-01T12:00:00Z").is_ok());
        assert!(time(&now_utc()).is_ok());
        for bad in [
            "2024-05-01T12:00:00+02:00",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00.5Z",
            "yesterday",
        ] {
            assert!(time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn age_ranges() {
        for good in ["7-10", "16-", "12"] {
            assert!(age_range(good).is_ok(), "{good}");
        }
        for bad in ["10-7", "-5", "a-b", "", "7 - 10"] {
            assert!(age_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn languages_and_urls() {
        assert!(language("sw").is_ok());
        assert!(language("zh-Hant-TW").is_ok());
        assert!(language("english!").is_err());
        assert!(url("source", "https://example.org/a").is_ok());
        assert!(url("source", "javascript:alert(1)").is_err());
        assert!(url("source", "not a url").is_err());
    }
}
