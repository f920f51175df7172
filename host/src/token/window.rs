//! Time windows: `Mon-Fri 09:00-17:00 Europe/Paris`, evaluated on the wall clock of an IANA time zone.
//!
//! A window is a set of days of the week, a daily span of local time and a time zone. An instant is inside the
//! window when, on the zone's wall clock at that instant, the day is one of the days and the time is in the span
//! (start included, end excluded). The wall clock is read through the zone's rules (jiff with the bundled IANA
//! database), so daylight-saving changes move the window with the local clock: `09:00-17:00 Europe/Paris` is
//! 08:00-16:00 UTC in winter and 07:00-15:00 UTC in summer. A span whose end is not after its start crosses
//! midnight (`22:00-06:00`): it belongs to the day it starts on. `24:00` ends a span at midnight.
//!
//! Windows are written into tokens in their canonical text (what [`Window::fmt`] prints), and the host evaluates
//! the text it finds there, so parsing must accept exactly what formatting produces.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::fmt;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A parsed time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `i` set: day `i` (Monday = 0) is in the window.
    days: u8,
    /// Start and end of the daily span, in minutes after local midnight (end up to 1440).
    start: u16,
    end: u16,
    zone: String,
    tz: TimeZone,
}

fn day_index(name: &str) -> Option<u8> {
    DAYS.iter().position(|d| d.eq_ignore_ascii_case(name)).map(|i| i as u8)
}

fn parse_days(text: &str) -> Result<u8, String> {
    if text.eq_ignore_ascii_case("daily") || text == "*" {
        return Ok(0x7f);
    }
    let mut days = 0u8;
    for part in text.split(',') {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let (Some(from), Some(to)) = (day_index(from), day_index(to)) else {
            return Err(format!("`{part}` is not a day or a range of days (Mon, Tue ... Sun; Mon-Fri; daily)"));
        };
        // A range may wrap around the week: Fri-Mon is Fri, Sat, Sun, Mon.
        let mut d = from;
        loop {
            days |= 1 << d;
            if d == to {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn parse_clock(text: &str) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Window {
    /// Parses `DAYS HH:MM-HH:MM ZONE`, e.g. `Mon-Fri 09:00-17:00 Europe/Paris`, `Sat,Sun 10:00-12:00 UTC`,
    /// `daily 22:00-06:00 America/New_York`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = |why: String| format!("invalid window `{text}`: {why}");
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [days, span, zone] = fields.as_slice() else {
            return Err(bad("expected DAYS HH:MM-HH:MM ZONE, e.g. \"Mon-Fri 09:00-17:00 Europe/Paris\"".into()));
        };
        let days = parse_days(days).map_err(bad)?;
        let (start, end) = span.split_once('-').ok_or_else(|| bad(format!("`{span}` is not HH:MM-HH:MM")))?;
        let (start, end) = (parse_clock(start).map_err(bad)?, parse_clock(end).map_err(bad)?);
        if start == 1440 {
            return Err(bad("a span cannot start at 24:00".into()));
        }
        if start == end {
            return Err(bad("the span is empty (start and end are equal)".into()));
        }
        let tz = TimeZone::get(zone).map_err(|e| bad(format!("unknown time zone `{zone}`: {e}")))?;
        Ok(Window { days, start, end, zone: (*zone).to_string(), tz })
    }

    /// Whether the instant `ms` (milliseconds since the Unix epoch) is inside the window.
    pub fn contains(&self, ms: i64) -> bool {
        let Ok(at) = Timestamp::from_millisecond(ms) else {
            return false;
        };
        let local = self.tz.to_datetime(at);
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let has = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            has(day) && self.start <= minute && minute < self.end
        } else {
            // Crosses midnight: the evening part belongs to today, the morning part to yesterday's window.
            let yesterday = (day + 6) % 7;
            (has(day) && minute >= self.start) || (has(yesterday) && minute < self.end)
        }
    }
}

impl fmt::Display for Window {
    /// The canonical text: days as ranges in week order, two-digit times, the zone as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = if self.days == 0x7f {
            "daily".to_string()
        } else {
            let mut parts = Vec::new();
            let mut d = 0;
            while d < 7 {
                if self.days & (1 << d) == 0 {
                    d += 1;
                    continue;
                }
                let first = d;
                while d + 1 < 7 && self.days & (1 << (d + 1)) != 0 {
                    d += 1;
                }
                parts.push(if first == d { DAYS[first].to_string() } else { format!("{}-{}", DAYS[first], DAYS[d]) });
                d += 1;
            }
            parts.join(",")
        };
        let clock = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{days} {}-{} {}", clock(self.start), clock(self.end), self.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn parses_and_prints_canonically() {
        for (given, canonical) in [
            ("Mon-Fri 09:00-17:00 Europe/Paris", "Mon-Fri 09:00-17:00 Europe/Paris"),
            ("mon,tue,wed,thu,fri 09:00-17:00 UTC", "Mon-Fri 09:00-17:00 UTC"),
            ("Sat,Sun 10:00-24:00 Asia/Tokyo", "Sat-Sun 10:00-24:00 Asia/Tokyo"),
            ("Fri-Mon 22:00-06:00 America/New_York", "Mon,Fri-Sun 22:00-06:00 America/New_York"),
            ("* 00:00-24:00 UTC", "daily 00:00-24:00 UTC"),
        ] {
            let w = Window::parse(given).unwrap();
            assert_eq!(w.to_string(), canonical);
            assert_eq!(Window::parse(canonical).unwrap(), w, "the canonical text parses back");
        }
        for bad in [
            "",
            "Mon-Fri 09:00-17:00",
            "Mon-Fri 9:00-17:00 UTC",
            "Mon-Fri 09:00-25:00 UTC",
            "Mon-Fri 09:60-17:00 UTC",
            "Mon-Fri 09:00-09:00 UTC",
            "Mon-Fry 09:00-17:00 UTC",
            "Mon-Fri 09:00-17:00 Europe/Atlantis",
            "Mon-Fri 24:00-01:00 UTC",
            "Mon-Fri 09:00-17:00 UTC extra",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn evaluated_on_the_zones_wall_clock_across_daylight_saving() {
        let w = Window::parse("Mon-Fri 09:00-17:00 America/New_York").unwrap();
        // 2026-03-06 is a Friday in EST (UTC-5); 2026-03-09 a Monday in EDT (UTC-4): DST began on 2026-03-08.
        assert!(!w.contains(at("2026-03-06T13:30:00Z")), "08:30 EST: before the window");
        assert!(w.contains(at("2026-03-09T13:30:00Z")), "09:30 EDT: inside, the same UTC time a week-end later");
        assert!(w.contains(at("2026-03-06T21:59:00Z")), "16:59 EST");
        assert!(!w.contains(at("2026-03-09T21:00:00Z")), "17:00 EDT: the end is excluded");
        assert!(!w.contains(at("2026-03-07T15:00:00Z")), "a Saturday");
        let paris = Window::parse("Mon-Fri 09:00-17:00 Europe/Paris").unwrap();
        // Europe switched back on 2026-10-25: Friday 23rd is CEST (UTC+2), Monday 26th CET (UTC+1).
        assert!(paris.contains(at("2026-10-23T07:30:00Z")), "09:30 CEST");
        assert!(!paris.contains(at("2026-10-26T07:30:00Z")), "08:30 CET: outside after the change");
    }

    #[test]
    fn spans_across_midnight_belong_to_their_first_day() {
        let w = Window::parse("Fri 22:00-06:00 UTC").unwrap();
        assert!(w.contains(at("2026-11-27T23:00:00Z")), "Friday night");
        assert!(w.contains(at("2026-11-28T05:59:00Z")), "early Saturday, still Friday's window");
        assert!(!w.contains(at("2026-11-28T06:00:00Z")));
        assert!(!w.contains(at("2026-11-27T05:00:00Z")), "early Friday belongs to Thursday's window");
    }
}
