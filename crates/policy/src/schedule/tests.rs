use super::*;

/// 2026-11-23 was a Monday.
const MONDAY: i64 = 1_795_392_000;

fn at(day: i64, hh: i64, mm: i64) -> i64 {
    MONDAY + day * DAY + hh * 3600 + mm * 60
}

#[test]
fn civil_conversion_round_trips() {
    assert_eq!(unix_from_civil(1970, 1, 1, 0), 0);
    assert_eq!(unix_from_civil(2026, 11, 23, 0), MONDAY);
    assert_eq!(format_utc(MONDAY), "2026-11-23T00:00:00Z");
    assert_eq!(
        format_utc(unix_from_civil(2000, 2, 29, 3661)),
        "2000-02-29T01:01:01Z"
    );
    assert_eq!(weekday_and_second(MONDAY), (0, 0));
    assert_eq!(weekday_and_second(at(6, 23, 59)), (6, 86_340));
}

#[test]
fn weekday_window() {
    let s = Schedule::parse(&["mon-fri"], "08:00-18:00").unwrap();
    assert!(!s.contains(at(0, 7, 59)));
    assert!(s.contains(at(0, 8, 0)));
    assert!(s.contains(at(4, 17, 59)));
    assert!(!s.contains(at(4, 18, 0)));
    assert!(!s.contains(at(5, 12, 0)));
    assert_eq!(s.to_string(), "mon,tue,wed,thu,fri 08:00-18:00 UTC");
    // Next boundaries: Monday 08:00 from Sunday noon, then 18:00.
    assert_eq!(s.next_boundary(at(-1, 12, 0)), Some(at(0, 8, 0)));
    assert_eq!(s.next_boundary(at(0, 8, 0)), Some(at(0, 18, 0)));
    assert_eq!(s.next_boundary(at(4, 18, 0)), Some(at(7, 8, 0)));
}

#[test]
fn window_past_midnight_belongs_to_its_first_day() {
    let s = Schedule::parse(&["fri"], "22:00-06:00").unwrap();
    assert!(s.contains(at(4, 23, 0)));
    assert!(s.contains(at(5, 5, 59)));
    assert!(!s.contains(at(5, 6, 0)));
    assert!(!s.contains(at(3, 23, 0)));
    assert!(!s.contains(at(4, 5, 0)));
    assert_eq!(s.next_boundary(at(4, 23, 0)), Some(at(5, 6, 0)));
}

#[test]
fn day_specs() {
    assert_eq!(
        Schedule::parse(&["daily"], "00:00-24:00").unwrap().days,
        [true; 7]
    );
    assert_eq!(
        Schedule::parse(&["sat-mon"], "00:00-24:00").unwrap().days,
        [true, false, false, false, false, true, true]
    );
    assert_eq!(
        Schedule::parse(&["Wednesday", "sun"], "10:00-11:00")
            .unwrap()
            .days,
        [false, false, true, false, false, false, true]
    );
    for (days, hours, needle) in [
        (&["funday"][..], "08:00-18:00", "not a day"),
        (&[][..], "08:00-18:00", "`days` is empty"),
        (&["mon"][..], "8-18", "not a time of day"),
        (&["mon"][..], "08:00", "write a window"),
        (&["mon"][..], "24:00-10:00", "not a time of day"),
        (&["mon"][..], "09:00-09:00", "empty"),
        (&["mon"][..], "09:60-10:00", "not a time of day"),
    ] {
        let error = Schedule::parse(days, hours).unwrap_err();
        assert!(error.contains(needle), "{days:?} {hours}: {error}");
    }
}

#[test]
fn until_and_schedule_combine() {
    let condition = TimeCondition {
        schedule: Some(Schedule::parse(&["mon-fri"], "08:00-18:00").unwrap()),
        until: Some(at(2, 12, 0)),
    };
    assert!(condition.is_limited());
    assert!(condition.active_at(at(1, 9, 0)));
    assert!(condition.active_at(at(2, 11, 59)));
    assert!(!condition.active_at(at(2, 12, 0)));
    assert!(!condition.active_at(at(3, 9, 0)));
    assert_eq!(condition.next_change(at(2, 9, 0)), Some(at(2, 12, 0)));
    assert_eq!(condition.next_change(at(1, 9, 0)), Some(at(1, 18, 0)));
    assert!(TimeCondition::default().active_at(0));
    assert_eq!(TimeCondition::default().next_change(0), None);
}
