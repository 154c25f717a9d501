//! Durations as people write and read them, one way everywhere: `1.5s`, `250ms`,
//! `2m`, `1m30s`, `1h`. The command line parses them here and every message (the
//! reactor's included) prints them with [`format`], so what a message says can be
//! typed back. It depends on nothing, so every layer may use it.

use std::time::Duration;

const EXAMPLES: &str = "write e.g. 1.5s, 250ms, 2m or 1h";

/// Parses a duration: one or more `NUMBER UNIT` parts (`ms`, `s`, `m`, `h`, `d`; a
/// fraction is allowed, spaces between parts too), or a bare number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty duration ({EXAMPLES})"));
    }
    if trimmed.starts_with('-') {
        return Err(format!(
            "'{text}' is negative (durations are 0 or more; {EXAMPLES})"
        ));
    }
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return seconds_to_duration(seconds, text);
    }
    let mut total = 0f64;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("'{text}' is not a duration ({EXAMPLES})"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "" => {
                return Err(format!("'{text}' needs a unit after {number} ({EXAMPLES})"));
            }
            _ => {
                return Err(format!(
                    "'{text}': unknown unit '{unit}' (units: ms, s, m, h, d; {EXAMPLES})"
                ));
            }
        };
        total += value * scale;
        rest = after.trim_start();
    }
    seconds_to_duration(total, text)
}

/// Like [`parse`], but zero is refused: a zero timeout would give up at once, a zero
/// interval would spin.
pub fn parse_nonzero(text: &str) -> Result<Duration, String> {
    let duration = parse(text)?;
    if duration.is_zero() {
        return Err(format!(
            "'{text}' is zero; give a duration above zero (e.g. 500ms)"
        ));
    }
    Ok(duration)
}

fn seconds_to_duration(seconds: f64, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}' is not a duration ({EXAMPLES})"))
}

/// Formats a duration the way [`parse`] reads it: `250ms`, `1.5s`, `2m`, `1m30s`,
/// `1h5m`. Under a second: whole milliseconds (microseconds when shorter still);
/// seconds keep up to three decimals.
pub fn format(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_string();
    }
    let millis = duration.as_millis();
    if millis == 0 {
        return format!("{}us", duration.as_micros());
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let total_secs = duration.as_secs();
    let (hours, minutes, seconds) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
    let fraction = duration.subsec_millis();
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || fraction > 0 {
        if fraction > 0 {
            let decimals = format!("{fraction:03}");
            text.push_str(&format!("{seconds}.{}s", decimals.trim_end_matches('0')));
        } else {
            text.push_str(&format!("{seconds}s"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_accept_fractions_units_and_compound_forms() {
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("250ms"), Ok(ms(250)));
        assert_eq!(parse("2m"), Ok(ms(120_000)));
        assert_eq!(parse("1m 30s"), Ok(ms(90_000)));
        assert_eq!(parse("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse("3"), Ok(ms(3000)));
        assert_eq!(parse("0"), Ok(ms(0)));
        assert_eq!(parse("1h"), Ok(ms(3_600_000)));
    }

    #[test]
    fn bad_durations_name_the_value_and_never_suggest_months_or_years() {
        for bad in ["soon", "5x", "1.2.3s", "s", "5 weeks", "1M"] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(&format!("'{bad}'")), "{error}");
            assert!(
                !error.contains("month") && !error.contains("year"),
                "{error}"
            );
        }
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("").is_err());
        assert!(parse_nonzero("0s").unwrap_err().contains("zero"));
    }

    #[test]
    fn durations_print_one_way_and_read_back() {
        for (duration, text) in [
            (ms(1500), "1.5s"),
            (ms(250), "250ms"),
            (ms(10_000), "10s"),
            (ms(120_000), "2m"),
            (ms(90_000), "1m30s"),
            (ms(3_900_000), "1h5m"),
            (ms(0), "0s"),
            (Duration::from_micros(500), "500us"),
        ] {
            assert_eq!(format(duration), text);
            assert_eq!(parse(text), Ok(duration), "{text} reads back");
        }
    }
}
