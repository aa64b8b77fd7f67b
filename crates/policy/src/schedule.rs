//! Time conditions on rules: weekly windows (`schedule`) and an end instant
//! (`until`), all in UTC. Pure: callers pass the time as Unix seconds.

use std::fmt;

/// Seconds in a day and a week.
const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;
/// Day names, Monday first (ISO 8601 numbering minus one).
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// When a rule applies: in a weekly window (if any) and before `until` (if
/// any). A rule with neither always applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeCondition {
    /// Weekly window.
    pub schedule: Option<Schedule>,
    /// Unix seconds at which the rule stops applying.
    pub until: Option<i64>,
}

impl TimeCondition {
    /// Whether the rule has any time condition.
    pub(crate) fn is_limited(&self) -> bool {
        self.schedule.is_some() || self.until.is_some()
    }

    /// Whether the rule applies at `now` (Unix seconds).
    pub(crate) fn active_at(&self, now: i64) -> bool {
        self.until.is_none_or(|until| now < until)
            && self.schedule.as_ref().is_none_or(|s| s.contains(now))
    }

    /// The first instant after `now` at which [`TimeCondition::active_at`]
    /// may change, if any.
    pub(crate) fn next_change(&self, now: i64) -> Option<i64> {
        let until = self.until.filter(|&until| until > now);
        let window = self.schedule.as_ref().and_then(|s| s.next_boundary(now));
        match (until, window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A weekly window: on the listed days (UTC), from `start` to `end` seconds
/// after midnight. When `end <= start` the window runs past midnight into
/// the next day (it belongs to the day it starts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Days the window opens on, Monday = 0.
    pub days: [bool; 7],
    /// Opening, seconds after midnight.
    pub start: i64,
    /// Closing, seconds after midnight (up to 24:00).
    pub end: i64,
}

impl Schedule {
    /// Parses `days` (names or ranges: `mon-fri`, `sat`, `daily`) and
    /// `hours` (`HH:MM-HH:MM`, 24-hour, UTC).
    pub(crate) fn parse(days: &[&str], hours: &str) -> Result<Schedule, String> {
        let mut set = [false; 7];
        if days.is_empty() {
            return Err("`days` is empty; list days such as \"mon-fri\" or \"daily\"".into());
        }
        for spec in days {
            mark_days(spec, &mut set)?;
        }
        let (start, end) = hours.split_once('-').ok_or_else(|| {
            format!("hours `{hours}`: write a window such as \"08:00-18:00\" (UTC)")
        })?;
        let start = parse_clock(start.trim(), false)?;
        let end = parse_clock(end.trim(), true)?;
        if start == end {
            return Err(format!(
                "hours `{hours}`: the window is empty; use \"00:00-24:00\" for the whole day"
            ));
        }
        Ok(Schedule {
            days: set,
            start,
            end,
        })
    }

    /// Whether `now` is inside a window.
    pub(crate) fn contains(&self, now: i64) -> bool {
        let (day, second) = weekday_and_second(now);
        if self.end > self.start {
            return self.days[day] && second >= self.start && second < self.end;
        }
        // Past midnight: today's evening part, or yesterday's window spilling over.
        (self.days[day] && second >= self.start) || (self.days[(day + 6) % 7] && second < self.end)
    }

    /// The first window opening or closing strictly after `now`.
    fn next_boundary(&self, now: i64) -> Option<i64> {
        let midnight = now - now.rem_euclid(DAY);
        let (today, _) = weekday_and_second(now);
        (0..=8)
            .flat_map(|offset: i64| {
                let day_start = midnight + offset * DAY;
                let weekday = (today + usize::try_from(offset).unwrap_or(0)) % 7;
                let (open, close) = if self.end > self.start {
                    (day_start + self.start, day_start + self.end)
                } else {
                    (day_start + self.start, day_start + DAY + self.end)
                };
                self.days[weekday].then_some([open, close])
            })
            .flatten()
            .filter(|&t| t > now)
            .min()
            .filter(|&t| t <= now + WEEK + 2 * DAY)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = DAY_NAMES
            .iter()
            .zip(self.days)
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        let clock = |s: i64| format!("{:02}:{:02}", s / 3600, (s % 3600) / 60);
        write!(
            f,
            "{} {}-{} UTC",
            days.join(","),
            clock(self.start),
            clock(self.end)
        )
    }
}

/// Marks the days of one spec (`mon`, `mon-fri`, `fri-mon`, `daily`).
fn mark_days(spec: &str, set: &mut [bool; 7]) -> Result<(), String> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "daily" {
        *set = [true; 7];
        return Ok(());
    }
    let day = |name: &str| {
        DAY_NAMES
            .iter()
            .position(|d| *d == name || (name.len() > 3 && full_name(d) == name))
            .ok_or_else(|| {
                format!("`{name}` is not a day; use mon, tue, wed, thu, fri, sat, sun, a range such as mon-fri, or daily")
            })
    };
    match spec.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (day(first)?, day(last)?);
            let mut d = first;
            loop {
                set[d] = true;
                if d == last {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        None => set[day(&spec)?] = true,
    }
    Ok(())
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

/// Parses `HH:MM` into seconds after midnight; `24:00` only as an end.
fn parse_clock(text: &str, is_end: bool) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time of day; write HH:MM, such as 08:00 or 18:30");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    match (h, m) {
        (24, 0) if is_end => Ok(DAY),
        (0..=23, 0..=59) => Ok(h * 3600 + m * 60),
        _ => Err(bad()),
    }
}

/// Day of the week (Monday = 0) and second of the day of `unix` (UTC).
fn weekday_and_second(unix: i64) -> (usize, i64) {
    let days = unix.div_euclid(DAY);
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    let weekday = usize::try_from((days + 3).rem_euclid(7)).unwrap_or(0);
    (weekday, unix.rem_euclid(DAY))
}

/// Unix seconds of a UTC civil date and time (proleptic Gregorian).
pub(crate) fn unix_from_civil(year: i64, month: u32, day: u32, second_of_day: i64) -> i64 {
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * DAY + second_of_day
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (for messages).
pub fn format_utc(unix: i64) -> String {
    let days = unix.div_euclid(DAY);
    let second = unix.rem_euclid(DAY);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        second / 3600,
        (second % 3600) / 60,
        second % 60
    )
}

#[cfg(test)]
mod tests;
