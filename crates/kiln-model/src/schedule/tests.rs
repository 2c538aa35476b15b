use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn next(expression: &str, tz: &str, after: &str) -> Option<String> {
    let schedule = Schedule::parse(expression, Some(tz)).unwrap_or_else(|e| panic!("{expression}: {e}"));
    schedule.next_after(utc(after)).map(|t| t.to_rfc3339())
}

fn next_utc(expression: &str, after: &str) -> String {
    next(expression, "UTC", after).unwrap_or_else(|| panic!("{expression} never fires"))
}

/// The next `n` fire times in UTC.
fn series(expression: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
    let schedule = Schedule::parse(expression, Some(tz)).unwrap();
    let mut t = utc(after);
    (0..n)
        .map(|_| {
            t = schedule.next_after(t).unwrap();
            t.to_rfc3339()
        })
        .collect()
}

#[test]
fn daily_and_across_month_and_year_ends() {
    assert_eq!(next_utc("cron(0 0 * * ? *)", "2024-01-31T12:00:00Z"), "2024-02-01T00:00:00+00:00");
    assert_eq!(next_utc("cron(0 0 * * ? *)", "2024-12-31T23:59:59Z"), "2025-01-01T00:00:00+00:00");
    // Strictly after: a fire time equal to `after` is not returned.
    assert_eq!(next_utc("cron(0 0 * * ? *)", "2024-02-01T00:00:00Z"), "2024-02-02T00:00:00+00:00");
    assert_eq!(next_utc("cron(0 0 31 * ? *)", "2024-04-01T00:00:00Z"), "2024-05-31T00:00:00+00:00");
}

#[test]
fn last_day_of_month() {
    assert_eq!(next_utc("cron(30 9 L * ? *)", "2024-01-31T10:00:00Z"), "2024-02-29T09:30:00+00:00");
    assert_eq!(next_utc("cron(30 9 L * ? *)", "2025-02-01T00:00:00Z"), "2025-02-28T09:30:00+00:00");
    assert_eq!(next_utc("cron(0 12 L-2 * ? *)", "2024-02-01T00:00:00Z"), "2024-02-27T12:00:00+00:00");
    assert_eq!(next_utc("cron(0 12 L-2 * ? *)", "2024-04-01T00:00:00Z"), "2024-04-28T12:00:00+00:00");
}

#[test]
fn nearest_weekday() {
    // 15 June 2024 is a Saturday: the Friday before.
    assert_eq!(next_utc("cron(0 8 15W * ? *)", "2024-06-01T00:00:00Z"), "2024-06-14T08:00:00+00:00");
    // 1 June 2024 is a Saturday: W does not leave the month, so Monday the 3rd.
    assert_eq!(next_utc("cron(0 8 1W * ? *)", "2024-05-31T00:00:00Z"), "2024-06-03T08:00:00+00:00");
    // 31 March 2024 is a Sunday and the last day: Friday the 29th.
    assert_eq!(next_utc("cron(0 8 31W * ? *)", "2024-03-01T00:00:00Z"), "2024-03-29T08:00:00+00:00");
    // 31W does not fire in a 30-day month.
    assert_eq!(next_utc("cron(0 8 31W * ? *)", "2024-04-01T00:00:00Z"), "2024-05-31T08:00:00+00:00");
    // 31 August 2024 is a Saturday: the last weekday is Friday the 30th.
    assert_eq!(next_utc("cron(0 8 LW * ? *)", "2024-08-01T00:00:00Z"), "2024-08-30T08:00:00+00:00");
    assert_eq!(next_utc("cron(0 8 LW * ? *)", "2024-09-01T00:00:00Z"), "2024-09-30T08:00:00+00:00");
}

#[test]
fn nth_and_last_weekday_of_month() {
    // The second Tuesday (3 = TUE, as AWS counts from SUN = 1).
    assert_eq!(next_utc("cron(0 10 ? * 3#2 *)", "2024-01-01T00:00:00Z"), "2024-01-09T10:00:00+00:00");
    assert_eq!(next_utc("cron(0 10 ? * TUE#2 *)", "2024-01-09T10:00:00Z"), "2024-02-13T10:00:00+00:00");
    // A fifth Monday only exists in some months.
    assert_eq!(next_utc("cron(0 10 ? * MON#5 *)", "2024-01-01T00:00:00Z"), "2024-01-29T10:00:00+00:00");
    assert_eq!(next_utc("cron(0 10 ? * MON#5 *)", "2024-01-30T00:00:00Z"), "2024-04-29T10:00:00+00:00");
    // The last Friday (6L) of February 2024 is the 23rd (the 29th is a Thursday).
    assert_eq!(next_utc("cron(0 18 ? * 6L *)", "2024-02-01T00:00:00Z"), "2024-02-23T18:00:00+00:00");
    // L alone is Saturday.
    assert_eq!(next_utc("cron(0 0 ? * L *)", "2024-01-01T00:00:00Z"), "2024-01-06T00:00:00+00:00");
}

#[test]
fn weekdays_names_ranges_and_wrapping() {
    // 5 January 2024 is a Friday.
    assert_eq!(next_utc("cron(0 9 ? * MON-FRI *)", "2024-01-05T10:00:00Z"), "2024-01-08T09:00:00+00:00");
    assert_eq!(next_utc("cron(0 9 ? * 2-6 *)", "2024-01-05T10:00:00Z"), "2024-01-08T09:00:00+00:00");
    assert_eq!(next_utc("cron(0 9 ? * fri-mon *)", "2024-01-02T00:00:00Z"), "2024-01-05T09:00:00+00:00");
    assert_eq!(
        series("cron(0 9 ? * SAT,SUN *)", "UTC", "2024-01-01T00:00:00Z", 3),
        ["2024-01-06T09:00:00+00:00", "2024-01-07T09:00:00+00:00", "2024-01-13T09:00:00+00:00"]
    );
    assert_eq!(next_utc("cron(0 0 1 JUL ? *)", "2024-01-01T00:00:00Z"), "2024-07-01T00:00:00+00:00");
    assert_eq!(next_utc("cron(0 0 1 NOV-FEB ? *)", "2024-03-01T00:00:00Z"), "2024-11-01T00:00:00+00:00");
}

#[test]
fn steps_lists_and_wrapping_hours() {
    assert_eq!(
        series("cron(0/15 * * * ? *)", "UTC", "2024-01-01T10:07:00Z", 3),
        ["2024-01-01T10:15:00+00:00", "2024-01-01T10:30:00+00:00", "2024-01-01T10:45:00+00:00"]
    );
    assert_eq!(
        series("cron(*/20 8-9 * * ? *)", "UTC", "2024-01-01T09:30:00Z", 3),
        ["2024-01-01T09:40:00+00:00", "2024-01-02T08:00:00+00:00", "2024-01-02T08:20:00+00:00"]
    );
    assert_eq!(
        series("cron(5 22-1 * * ? *)", "UTC", "2024-01-01T03:00:00Z", 4),
        [
            "2024-01-01T22:05:00+00:00",
            "2024-01-01T23:05:00+00:00",
            "2024-01-02T00:05:00+00:00",
            "2024-01-02T01:05:00+00:00"
        ]
    );
    assert_eq!(
        series("cron(0 0 1,15 */6 ? *)", "UTC", "2024-01-01T00:00:00Z", 3),
        ["2024-01-15T00:00:00+00:00", "2024-07-01T00:00:00+00:00", "2024-07-15T00:00:00+00:00"]
    );
}

#[test]
fn years_and_schedules_that_never_fire() {
    assert_eq!(next_utc("cron(0 0 1 1 ? 2030)", "2024-06-01T00:00:00Z"), "2030-01-01T00:00:00+00:00");
    // 29 February in 2025-2030 is 2028 only; every other year from 2025 never has one.
    assert_eq!(next_utc("cron(0 0 29 2 ? 2025-2030)", "2024-06-01T00:00:00Z"), "2028-02-29T00:00:00+00:00");
    assert_eq!(next("cron(0 0 29 2 ? 2025-2030/2)", "UTC", "2024-06-01T00:00:00Z"), None);
}

#[test]
fn never_again() {
    assert_eq!(next("cron(0 0 1 1 ? 2020)", "UTC", "2024-06-01T00:00:00Z"), None);
    assert_eq!(next("cron(0 0 30 2 ? *)", "UTC", "2024-06-01T00:00:00Z"), None);
    assert_eq!(next("cron(0 0 * * ? *)", "UTC", "2199-12-31T00:00:00Z"), None);
}

#[test]
fn time_zones_move_the_fire_time() {
    // 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert_eq!(
        next("cron(0 9 * * ? *)", "Europe/Paris", "2024-01-10T12:00:00Z").unwrap(),
        "2024-01-11T08:00:00+00:00"
    );
    assert_eq!(
        next("cron(0 9 * * ? *)", "Europe/Paris", "2024-07-10T12:00:00Z").unwrap(),
        "2024-07-11T07:00:00+00:00"
    );
    // The day the clocks change (31 March 2024): still 09:00 local.
    assert_eq!(
        next("cron(0 9 * * ? *)", "Europe/Paris", "2024-03-30T09:00:00Z").unwrap(),
        "2024-03-31T07:00:00+00:00"
    );
    // A day boundary in the zone, not in UTC: midnight in Tokyo is 15:00 UTC the day before.
    assert_eq!(
        next("cron(0 0 1 * ? *)", "Asia/Tokyo", "2024-01-15T00:00:00Z").unwrap(),
        "2024-01-31T15:00:00+00:00"
    );
}

#[test]
fn spring_forward_skips_the_missing_hour() {
    // 02:30 does not exist in Paris on 31 March 2024: no run that day (as EventBridge Scheduler).
    assert_eq!(
        series("cron(30 2 * * ? *)", "Europe/Paris", "2024-03-30T00:00:00Z", 2),
        ["2024-03-30T01:30:00+00:00", "2024-04-01T00:30:00+00:00"]
    );
    // Every 30 minutes: 01:30 CET, then 03:00 CEST half an hour later in UTC.
    assert_eq!(
        series("cron(0/30 * * * ? *)", "Europe/Paris", "2024-03-31T00:15:00Z", 3),
        ["2024-03-31T00:30:00+00:00", "2024-03-31T01:00:00+00:00", "2024-03-31T01:30:00+00:00"]
    );
}

#[test]
fn fall_back_runs_the_repeated_hour_once() {
    // 02:30 happens twice in Paris on 27 October 2024 (CEST then CET): one run, the first.
    assert_eq!(
        series("cron(30 2 * * ? *)", "Europe/Paris", "2024-10-26T12:00:00Z", 2),
        ["2024-10-27T00:30:00+00:00", "2024-10-28T01:30:00+00:00"]
    );
    // Every 30 minutes: 02:00 and 02:30 CEST run, their CET repeats do not, then 03:00 CET.
    assert_eq!(
        series("cron(0/30 * * * ? *)", "Europe/Paris", "2024-10-26T23:45:00Z", 4),
        [
            "2024-10-27T00:00:00+00:00",
            "2024-10-27T00:30:00+00:00",
            "2024-10-27T02:00:00+00:00",
            "2024-10-27T02:30:00+00:00"
        ]
    );
    // Asked from inside the repeated hour, the next run is after it.
    assert_eq!(
        next("cron(0/30 * * * ? *)", "Europe/Paris", "2024-10-27T01:10:00Z").unwrap(),
        "2024-10-27T02:00:00+00:00"
    );
}

#[test]
fn parse_errors_give_columns() {
    let cases = [
        ("cron(0 25 * * ? *)", 8, "out of range 0-23"),
        ("cron(0 0 * * * *)", 14, "must be '?'"),
        ("cron(0 0 ? * ? *)", 14, "cannot both be '?'"),
        ("cron(0 0 * * ?)", 15, "6 fields"),
        ("cron(0 0 * * ? * 1)", 18, "6 fields"),
        ("rate(5 minutes)", 1, "cron(...) expressions only"),
        ("0 0 * * ? *", 1, "has the form cron("),
        ("cron(0 0 * * ? *", 17, "missing ')'"),
        ("cron(0 0 * FOO ? *)", 12, "JAN-DEC"),
        ("cron(0 0 ? * 3#6 *)", 16, "1-5"),
        ("cron(0/0 0 * * ? *)", 8, "step"),
        ("cron(0 0 1,,2 * ? *)", 12, "empty item"),
        ("cron(0 ? * * ? *)", 8, "'?' is only allowed"),
        ("cron(0 0 LX * ? *)", 10, "L, L-n, nW and LW"),
        ("cron(0 0 L-31 * ? *)", 12, "1-30"),
        ("cron(0 0 ? * MON-XYZ *)", 18, "SUN-SAT"),
        ("cron(0 0 ? * 8 *)", 14, "out of range 1-7"),
        ("cron(0 0 1 * ? 1969)", 16, "out of range 1970-2199"),
        ("cron(0 0 1 * ? *)\u{e9}", 18, "unexpected character"),
        ("  cron(60 0 1 * ? *)", 8, "out of range 0-59"),
    ];
    for (text, column, message) in cases {
        let err = CronExpression::parse(text).unwrap_err();
        assert!(err.message.contains(message), "{text}: {err}");
        assert_eq!(err.column, column, "{text}: {err}");
    }
}

#[test]
fn unknown_time_zone() {
    let err = Schedule::parse("cron(0 0 * * ? *)", Some("Europe/Pariss")).unwrap_err();
    assert!(err.message.contains("unknown time zone"), "{err}");
    assert_eq!(Schedule::parse("cron(0 0 * * ? *)", None).unwrap().timezone, Tz::UTC);
}

#[test]
fn display_keeps_the_text() {
    let cron: CronExpression = " cron(0 9 ? * MON-FRI *) ".parse().unwrap();
    assert_eq!(cron.to_string(), "cron(0 9 ? * MON-FRI *)");
}

#[test]
fn garbage_never_panics() {
    let pieces = [
        "cron(",
        ")",
        " ",
        "*",
        "?",
        "/",
        "-",
        ",",
        "L",
        "W",
        "#",
        "0",
        "5",
        "31",
        "99",
        "MON",
        "JAN",
        "L-",
        "LW",
        "1970",
        "2199",
        "4294967296",
        "\t",
        "é",
    ];
    let mut seed = 0xdead_beef_cafe_f00d_u64;
    let after = utc("2024-03-31T00:00:00Z");
    for _ in 0..20_000 {
        let mut text = String::from("cron(");
        for _ in 0..14 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        text.push(')');
        if let Ok(cron) = CronExpression::parse(&text) {
            let _ = cron.next_after(after, chrono_tz::Europe::Paris);
        }
    }
}
