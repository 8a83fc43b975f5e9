//! Quantities for people.

/// Sizes as people read them: `512 B`, `1.5 MiB`, `12.0 GiB`.
pub fn human_bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a rate as people write it: `2 MB/s`, `500 kB/s`, `1.5 MiB/s`, `16 Mbit/s`,
/// `100000 B/s`. Returns bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "{text:?} is not a rate: write a number and a unit, e.g. \"2 MB/s\" or \"16 Mbit/s\""
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(invalid)?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let bytes_per_unit = match unit.trim() {
        "B/s" => 1.0,
        "kB/s" | "KB/s" => 1e3,
        "MB/s" => 1e6,
        "GB/s" => 1e9,
        "KiB/s" => 1024.0,
        "MiB/s" => 1024.0 * 1024.0,
        "GiB/s" => 1024.0 * 1024.0 * 1024.0,
        "bit/s" => 1.0 / 8.0,
        "kbit/s" | "Kbit/s" => 1e3 / 8.0,
        "Mbit/s" => 1e6 / 8.0,
        "Gbit/s" => 1e9 / 8.0,
        _ => return Err(invalid()),
    };
    let rate = number * bytes_per_unit;
    if !rate.is_finite() || rate < 1.0 || rate > u32::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_naturally() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn rates_read_as_people_write_them() {
        use super::parse_rate;
        assert_eq!(parse_rate("2 MB/s"), Ok(2_000_000));
        assert_eq!(parse_rate("16 Mbit/s"), Ok(2_000_000));
        assert_eq!(parse_rate("1.5MiB/s"), Ok(1_572_864));
        assert_eq!(parse_rate(" 500 kB/s "), Ok(500_000));
        for bad in [
            "",
            "fast",
            "2 MB",
            "2 mb/s",
            "MB/s",
            "1.2.3 MB/s",
            "0 B/s",
            "99 GB/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
