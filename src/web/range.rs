//! `Range: bytes=...` requests (RFC 9110, section 14): what video seeking and resumed
//! downloads send.
//!
//! Many small or overlapping ranges can make a server send far more than the file
//! (Apache's CVE-2011-3192), so a request with more than the configured number of
//! ranges is refused, and overlapping or adjacent ranges are merged before anything
//! is read.

use std::ops::Range;

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header (absent, another unit, or malformed): send it all.
    Full,
    /// One or more ranges, sorted and merged, each within the representation.
    Partial(Vec<Range<u64>>),
    /// Nothing of the representation is in the ranges asked for (416).
    Unsatisfiable,
    /// More ranges than allowed (416, with the reason).
    TooMany { limit: usize },
}

/// Interprets a `Range` header value for a representation of `size` bytes.
pub fn parse(header: &str, size: u64, max_ranges: usize) -> RangeRequest {
    let Some(specs) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    let specs: Vec<&str> = specs.split(',').map(str::trim).collect();
    if specs.len() > max_ranges {
        return RangeRequest::TooMany { limit: max_ranges };
    }
    let mut ranges = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((first, last)) = spec.split_once('-') else {
            return RangeRequest::Full;
        };
        let range = match (first.trim(), last.trim()) {
            ("", "") => return RangeRequest::Full,
            // A suffix: the last N bytes.
            ("", suffix) => {
                let Ok(suffix) = suffix.parse::<u64>() else {
                    return RangeRequest::Full;
                };
                size.saturating_sub(suffix)..size
            }
            (first, last) => {
                let Ok(first) = first.parse::<u64>() else {
                    return RangeRequest::Full;
                };
                let end = if last.is_empty() {
                    size
                } else {
                    let Ok(last) = last.parse::<u64>() else {
                        return RangeRequest::Full;
                    };
                    if last < first {
                        return RangeRequest::Full;
                    }
                    last.saturating_add(1).min(size)
                };
                first..end
            }
        };
        if range.start < range.end {
            ranges.push(range);
        }
    }
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    RangeRequest::Partial(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(header: &str, size: u64) -> Vec<Range<u64>> {
        match parse(header, size, 8) {
            RangeRequest::Partial(ranges) => ranges,
            other => panic!("{header}: {other:?}"),
        }
    }

    #[test]
    fn single_open_and_suffix_ranges() {
        assert_eq!(partial("bytes=0-99", 1000), vec![0..100]);
        assert_eq!(partial("bytes=900-", 1000), vec![900..1000]);
        assert_eq!(partial("bytes=-100", 1000), vec![900..1000]);
        assert_eq!(partial("bytes=-5000", 1000), vec![0..1000]);
        assert_eq!(partial("bytes=990-5000", 1000), vec![990..1000]);
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        assert_eq!(
            partial("bytes=500-600, 0-10, 5-20, 21-30, 550-700", 1000),
            vec![0..31, 500..701]
        );
        assert_eq!(partial("bytes=0-0,0-0,0-0", 10), vec![0..1]);
    }

    #[test]
    fn unusable_headers_mean_the_whole_file_and_impossible_ones_416() {
        for header in ["items=0-1", "bytes=a-b", "bytes=5-1", "bytes=-", "bytes=1"] {
            assert_eq!(parse(header, 100, 8), RangeRequest::Full, "{header}");
        }
        assert_eq!(parse("bytes=100-", 100, 8), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100, 8), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0, 8), RangeRequest::Unsatisfiable);
        let many = format!(
            "bytes={}",
            (0..9)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(parse(&many, 100, 8), RangeRequest::TooMany { limit: 8 });
    }
}
