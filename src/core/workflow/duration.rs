//! Durations as people write them in workflow files: `90s`, `5m`, `2h`, `1d`, `1h30m`.

use chrono::Duration;

/// Parses `1h30m`-style durations. Refuses zero, negative and unit-less values.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("`{t}` is not a duration like 30s, 5m, 2h or 1d"))?;
        digits.clear();
        let part = match c {
            's' => Duration::try_seconds(n),
            'm' => Duration::try_minutes(n),
            'h' => Duration::try_hours(n),
            'd' => Duration::try_days(n),
            _ => None,
        }
        .ok_or_else(|| format!("`{t}` is not a duration like 30s, 5m, 2h or 1d"))?;
        total += part;
    }
    if !digits.is_empty() {
        return Err(format!("`{t}` needs a unit: s, m, h or d"));
    }
    if total <= Duration::zero() {
        return Err(format!("`{t}` must be longer than zero"));
    }
    Ok(total)
}

/// Formats a duration for people: `4.2 s`, `3 min`, `2 h 5 min`, `3 d 4 h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let mins = ms / 60_000;
    if mins < 60 {
        return format!("{mins} min");
    }
    let hours = mins / 60;
    if hours < 24 {
        return match mins % 60 {
            0 => format!("{hours} h"),
            m => format!("{hours} h {m} min"),
        };
    }
    match hours % 24 {
        0 => format!("{} d", hours / 24),
        h => format!("{} d {h} h", hours / 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_combinations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::seconds(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_duration("2d").unwrap(), Duration::days(2));
    }

    #[test]
    fn durations_without_units_or_zero_are_refused() {
        for bad in ["", "10", "0s", "5x", "m", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn durations_format_for_people() {
        assert_eq!(format_duration(Duration::milliseconds(4200)), "4.2 s");
        assert_eq!(format_duration(Duration::minutes(125)), "2 h 5 min");
        assert_eq!(format_duration(Duration::hours(52)), "2 d 4 h");
    }
}
