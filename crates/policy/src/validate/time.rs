//! Checks of a rule's `schedule` and `until`, and of a test's `at`.

use toml::Spanned;
use toml::value::{Datetime, Offset};

use crate::error::Problems;
use crate::model::RuleFile;
use crate::schedule::{Schedule, TimeCondition, unix_from_civil};

/// The time condition of `rule`; problems are recorded, and a bad value
/// yields no condition (the policy is rejected anyway).
pub(super) fn rule_time(rule: &str, file: &RuleFile, problems: &mut Problems<'_>) -> TimeCondition {
    let schedule = file.schedule.as_ref().and_then(|schedule| {
        let spec = schedule.get_ref();
        let days: Vec<&str> = spec.days.iter().map(|d| d.get_ref().as_str()).collect();
        Schedule::parse(&days, spec.hours.get_ref())
            .map_err(|message| {
                let span = if message.contains("hours") || message.contains("time of day") {
                    spec.hours.span()
                } else {
                    schedule.span()
                };
                problems.add(span, format!("rule `{rule}`: schedule: {message}"));
            })
            .ok()
    });
    let until = file
        .until
        .as_ref()
        .and_then(|until| instant(until, &format!("rule `{rule}`: until"), problems));
    TimeCondition { schedule, until }
}

/// A full date-time with an offset, as Unix seconds.
pub(super) fn instant(
    value: &Spanned<Datetime>,
    what: &str,
    problems: &mut Problems<'_>,
) -> Option<i64> {
    let datetime = value.get_ref();
    let (Some(date), Some(time), Some(offset)) = (datetime.date, datetime.time, datetime.offset)
    else {
        problems.add(
            value.span(),
            format!("{what}: `{datetime}` needs a date, a time and a UTC offset; write it like 2026-12-31T00:00:00Z"),
        );
        return None;
    };
    let offset_seconds = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes) * 60,
    };
    let second_of_day =
        i64::from(time.hour) * 3600 + i64::from(time.minute) * 60 + i64::from(time.second);
    Some(
        unix_from_civil(
            i64::from(date.year),
            u32::from(date.month),
            u32::from(date.day),
            second_of_day,
        ) - offset_seconds,
    )
}
