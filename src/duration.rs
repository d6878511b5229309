//! Human-friendly durations for options and config: `10`, `10s`, `500ms`, `2m`, `1h`, `7d`.

use std::time::Duration;

/// Parse a duration. A bare number means seconds (fractions allowed: `2.5`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid duration '{text}': expected a number such as 10s or 500ms"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration '{text}': '{number}' is not a number"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "invalid duration '{text}': unknown unit '{other}' (use ms, s, m, h or d)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > 365.0 * 24.0 * 3600.0 {
        return Err(format!("invalid duration '{text}': too large"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Render a duration the way [`parse`] reads it back (`10s`, `1.5s`, `250ms`).
pub fn display(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse(" 0 ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "-1", "10x", "1.2.3", "abc", "1e9999", "99999999h"] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for d in [
            Duration::from_secs(10),
            Duration::from_millis(250),
            Duration::from_millis(1500),
        ] {
            assert_eq!(parse(&display(d)).unwrap(), d);
        }
    }
}
