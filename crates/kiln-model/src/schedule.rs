//! Image pipeline schedules: the `cron(Minutes Hours Day-of-month Month Day-of-week Year)`
//! expressions of Image Builder and EventBridge, and their next fire time in an IANA time zone.
//!
//! Written by hand: the Rust cron crates (`cron`, `croner`, `saffron`) parse Unix or Quartz
//! dialects with seconds fields, other day-of-week numbering (AWS counts 1 = SUN) or without
//! `W`/`#`/`L`, and their daylight-saving behaviour is not the one AWS documents. AWS's rules,
//! which this module follows:
//! - one of day-of-month and day-of-week must be `?`, not both;
//! - `L` (last day of month; with a weekday, `5L` = the last Thursday), `W` (`15W`, the
//!   weekday nearest the 15th without leaving the month; `LW`), `#` (`3#2`, the second Tuesday),
//!   ranges that wrap (`FRI-MON`), steps (`0/15`, `*/5`, `1-20/2`), month and weekday names;
//! - when the clocks go forward, a time in the skipped hour does not fire; when they go back,
//!   a time in the repeated hour fires once, at its first occurrence.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// A schedule expression that cannot be used, with the 1-based column of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ScheduleError {
    /// 1-based column in the expression as given.
    pub column: usize,
    /// What is wrong there.
    pub message: String,
}

const MONTHS: [&str; 12] =
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MIN_YEAR: u32 = 1970;
const MAX_YEAR: u32 = 2199;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Minutes,
    Hours,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl Field {
    const ALL: [Field; 6] =
        [Field::Minutes, Field::Hours, Field::DayOfMonth, Field::Month, Field::DayOfWeek, Field::Year];

    fn name(self) -> &'static str {
        match self {
            Field::Minutes => "minutes",
            Field::Hours => "hours",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
            Field::Year => "year",
        }
    }

    fn range(self) -> (u32, u32) {
        match self {
            Field::Minutes => (0, 59),
            Field::Hours => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (1, 7),
            Field::Year => (MIN_YEAR, MAX_YEAR),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Month => &MONTHS,
            Field::DayOfWeek => &WEEKDAYS,
            _ => &[],
        }
    }
}

/// A set of values of one field, as bits (years offset by 1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bits([u64; 4]);

impl Bits {
    fn insert(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn contains(&self, i: u32) -> bool {
        i < 256 && self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// The values of a plain field (minutes, hours, months, years).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Values {
    bits: Bits,
    offset: u32,
}

impl Values {
    fn contains(&self, v: u32) -> bool {
        v >= self.offset && self.bits.contains(v - self.offset)
    }
}

/// Day-of-month or day-of-week (the other one is `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Days {
    OfMonth {
        days: Values,
        /// `L` and `L-n`: days before the last.
        last_minus: Vec<u32>,
        /// `nW`.
        nearest_weekday: Vec<u32>,
        /// `LW`.
        last_weekday: bool,
    },
    OfWeek {
        /// 1 = SUN .. 7 = SAT.
        weekdays: Values,
        /// `nL`.
        last: Vec<u32>,
        /// `n#k`.
        nth: Vec<(u32, u32)>,
    },
}

/// A parsed `cron(...)` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpression {
    minutes: Values,
    hours: Values,
    months: Values,
    years: Values,
    days: Days,
    text: String,
}

impl std::fmt::Display for CronExpression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for CronExpression {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronExpression::parse(s)
    }
}

fn err(column: usize, message: impl Into<String>) -> ScheduleError {
    ScheduleError { column, message: message.into() }
}

impl CronExpression {
    /// Parses `cron(Minutes Hours Day-of-month Month Day-of-week Year)`.
    pub fn parse(text: &str) -> Result<CronExpression, ScheduleError> {
        if let Some((i, c)) = text.char_indices().find(|(_, c)| !c.is_ascii()) {
            return Err(err(text[..i].chars().count() + 1, format!("unexpected character {c:?}")));
        }
        let lead = text.len() - text.trim_start().len();
        let trimmed = text.trim();
        let Some(inner) = trimmed.strip_prefix("cron(") else {
            let message = if trimmed.starts_with("rate(") || trimmed.starts_with("at(") {
                "Image Builder schedules take cron(...) expressions only"
            } else {
                "a schedule expression has the form cron(Minutes Hours Day-of-month Month \
                 Day-of-week Year)"
            };
            return Err(err(lead + 1, message));
        };
        let Some(inner) = inner.strip_suffix(')') else {
            return Err(err(lead + trimmed.len() + 1, "missing ')' at the end"));
        };
        let base = lead + "cron(".len();
        // Fields and their byte offsets in `text` (all ASCII, so bytes are columns).
        let mut fields: Vec<(usize, &str)> = Vec::new();
        let mut start = None;
        for (i, c) in inner.char_indices().chain([(inner.len(), ' ')]) {
            match (c == ' ' || c == '\t', start) {
                (true, Some(s)) => {
                    fields.push((base + s, &inner[s..i]));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if fields.len() != 6 {
            let column = fields.get(6).map_or(base + inner.len(), |(at, _)| *at);
            return Err(err(
                column + 1,
                format!(
                    "a cron expression has 6 fields (minutes hours day-of-month month \
                     day-of-week year), found {}",
                    fields.len()
                ),
            ));
        }
        let (dom_at, dom) = fields[2];
        let (dow_at, dow) = fields[4];
        let days = match (dom == "?", dow == "?") {
            (true, true) => {
                return Err(err(
                    dow_at + 1,
                    "day-of-month and day-of-week cannot both be '?'; give one of them",
                ));
            }
            (false, false) => {
                return Err(err(
                    dow_at + 1,
                    "one of day-of-month and day-of-week must be '?' (AWS does not combine them)",
                ));
            }
            (true, false) => parse_days_of_week(dow, dow_at)?,
            (false, true) => parse_days_of_month(dom, dom_at)?,
        };
        let values = |index: usize| {
            let (at, field_text) = fields[index];
            parse_values(Field::ALL[index], field_text, at)
        };
        Ok(CronExpression {
            minutes: values(0)?,
            hours: values(1)?,
            months: values(3)?,
            years: values(5)?,
            days,
            text: trimmed.to_owned(),
        })
    }

    /// The first fire time strictly after `after`, reading the expression in `tz`; `None`
    /// when it never fires again (a past year, February 30th).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local_after = after.with_timezone(&tz).naive_local();
        let start_year = local_after.year().max(MIN_YEAR as i32) as u32;
        for year in start_year..=MAX_YEAR {
            if !self.years.contains(year) {
                continue;
            }
            for month in 1..=12 {
                if !self.months.contains(month) {
                    continue;
                }
                let first = NaiveDate::from_ymd_opt(year as i32, month, 1)?;
                if last_day(first) < local_after.date() {
                    continue;
                }
                let days = self.days_of(first);
                for day in 1..=31 {
                    if days & (1 << day) == 0 {
                        continue;
                    }
                    let Some(date) = first.with_day(day) else { continue };
                    if date < local_after.date() {
                        continue;
                    }
                    if let Some(t) = self.first_on(date, local_after, after, tz) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    /// The first fire time on a local date, after the local and absolute instants given.
    fn first_on(
        &self,
        date: NaiveDate,
        local_after: NaiveDateTime,
        after: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        for hour in 0..24 {
            if !self.hours.contains(hour) {
                continue;
            }
            for minute in 0..60 {
                if !self.minutes.contains(minute) {
                    continue;
                }
                let local = date.and_time(NaiveTime::from_hms_opt(hour, minute, 0)?);
                if local <= local_after {
                    continue;
                }
                let fire = match tz.from_local_datetime(&local) {
                    LocalResult::Single(t) => t,
                    // The repeated hour: the first occurrence only (a later one is a repeat).
                    LocalResult::Ambiguous(first, _) => first,
                    // The skipped hour: no fire.
                    LocalResult::None => continue,
                };
                let fire = fire.with_timezone(&Utc);
                if fire > after {
                    return Some(fire);
                }
            }
        }
        None
    }

    /// The days of `first`'s month that match, as bits 1..=31.
    fn days_of(&self, first: NaiveDate) -> u64 {
        let last = last_day(first).day();
        let weekday_of = |day: u32| first.with_day(day).map(|d| d.weekday());
        let mut bits = 0u64;
        match &self.days {
            Days::OfMonth { days, last_minus, nearest_weekday, last_weekday } => {
                for day in 1..=last {
                    if days.contains(day) {
                        bits |= 1 << day;
                    }
                }
                for n in last_minus {
                    if *n < last {
                        bits |= 1 << (last - n);
                    }
                }
                for n in nearest_weekday.iter().filter(|n| **n <= last) {
                    let day = match weekday_of(*n) {
                        Some(Weekday::Sat) if *n == 1 => 3,
                        Some(Weekday::Sat) => n - 1,
                        Some(Weekday::Sun) if *n == last => n - 2,
                        Some(Weekday::Sun) => n + 1,
                        _ => *n,
                    };
                    bits |= 1 << day;
                }
                if *last_weekday {
                    let day = match weekday_of(last) {
                        Some(Weekday::Sat) => last - 1,
                        Some(Weekday::Sun) => last - 2,
                        _ => last,
                    };
                    bits |= 1 << day;
                }
            }
            Days::OfWeek { weekdays, last: lasts, nth } => {
                for day in 1..=last {
                    let Some(weekday) = weekday_of(day) else { continue };
                    let aws = weekday.num_days_from_sunday() + 1;
                    let occurrence = (day - 1) / 7 + 1;
                    if weekdays.contains(aws)
                        || (lasts.contains(&aws) && day + 7 > last)
                        || nth.contains(&(aws, occurrence))
                    {
                        bits |= 1 << day;
                    }
                }
            }
        }
        bits
    }
}

fn last_day(first: NaiveDate) -> NaiveDate {
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    next.and_then(|n| n.pred_opt()).unwrap_or(first)
}

/// A number or (for months and weekdays) a name, within the field's range.
fn parse_value(field: Field, text: &str, at: usize) -> Result<u32, ScheduleError> {
    let (min, max) = field.range();
    if let Some(i) = field.names().iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + 1);
    }
    let value: u32 = text.parse().map_err(|_| {
        let names = field.names();
        let hint = if names.is_empty() {
            String::new()
        } else {
            format!(" or {}-{}", names[0], names[names.len() - 1])
        };
        err(at + 1, format!("{} must be a number {min}-{max}{hint}, not {text:?}", field.name()))
    })?;
    if !(min..=max).contains(&value) {
        return Err(err(at + 1, format!("{} value {value} is out of range {min}-{max}", field.name())));
    }
    Ok(value)
}

/// `*`, `a`, `a-b` (wrapping if a > b), each optionally `/step`, comma-separated.
fn parse_values(field: Field, text: &str, at: usize) -> Result<Values, ScheduleError> {
    let (min, _) = field.range();
    let mut values = Values { bits: Bits::default(), offset: min };
    let mut offset = 0;
    for item in text.split(',') {
        add_item(field, item, at + offset, &mut values)?;
        offset += item.len() + 1;
    }
    Ok(values)
}

fn add_item(field: Field, item: &str, at: usize, values: &mut Values) -> Result<(), ScheduleError> {
    let (min, max) = field.range();
    if item.is_empty() {
        return Err(err(at + 1, format!("empty item in the {} field", field.name())));
    }
    if item == "?" {
        return Err(err(
            at + 1,
            format!("'?' is only allowed in day-of-month or day-of-week, not in {}", field.name()),
        ));
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => {
            let step_at = at + range.len() + 1;
            let step: u32 =
                step.parse().ok().filter(|s| *s >= 1 && *s <= max - min + 1).ok_or_else(|| {
                    err(step_at + 1, format!("step must be a number 1-{}, not {step:?}", max - min + 1))
                })?;
            (range, step)
        }
        None => (item, 1),
    };
    let (start, end) = if range == "*" {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        (parse_value(field, a, at)?, parse_value(field, b, at + a.len() + 1)?)
    } else {
        let v = parse_value(field, range, at)?;
        // `a/step` runs from a to the end of the range.
        (v, if item.contains('/') { max } else { v })
    };
    // A range that wraps (FRI-MON, 22-2) runs to the end of the field and on from its start.
    let span = if start <= end { end - start } else { max - start + 1 + end - min };
    let mut k = 0;
    while k <= span {
        let v = if start + k <= max { start + k } else { start + k - (max - min + 1) };
        values.bits.insert(v - values.offset);
        k += step;
    }
    Ok(())
}

fn parse_days_of_month(text: &str, at: usize) -> Result<Days, ScheduleError> {
    let field = Field::DayOfMonth;
    let mut days = Values { bits: Bits::default(), offset: 0 };
    let (mut last_minus, mut nearest_weekday, mut last_weekday) = (Vec::new(), Vec::new(), false);
    let mut offset = 0;
    for item in text.split(',') {
        let item_at = at + offset;
        offset += item.len() + 1;
        if item == "L" {
            last_minus.push(0);
        } else if item == "LW" {
            last_weekday = true;
        } else if let Some(n) = item.strip_prefix("L-") {
            let n: u32 = n
                .parse()
                .ok()
                .filter(|n| (1..=30).contains(n))
                .ok_or_else(|| err(item_at + 3, format!("L-n takes a number of days 1-30, not {n:?}")))?;
            last_minus.push(n);
        } else if let Some(n) = item.strip_suffix('W') {
            nearest_weekday.push(parse_value(field, n, item_at)?);
        } else if item.contains('L') || item.contains('W') || item.contains('#') {
            return Err(err(item_at + 1, format!("day-of-month accepts L, L-n, nW and LW, not {item:?}")));
        } else {
            add_item(field, item, item_at, &mut days)?;
        }
    }
    Ok(Days::OfMonth { days, last_minus, nearest_weekday, last_weekday })
}

fn parse_days_of_week(text: &str, at: usize) -> Result<Days, ScheduleError> {
    let field = Field::DayOfWeek;
    let mut weekdays = Values { bits: Bits::default(), offset: 0 };
    let (mut last, mut nth) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for item in text.split(',') {
        let item_at = at + offset;
        offset += item.len() + 1;
        if item == "L" {
            // Alone, L is the last day of the week: Saturday.
            weekdays.bits.insert(7);
        } else if let Some((day, n)) = item.split_once('#') {
            let day = parse_value(field, day, item_at)?;
            let n_at = item_at + item.find('#').unwrap_or(0) + 1;
            let n: u32 =
                n.parse().ok().filter(|n| (1..=5).contains(n)).ok_or_else(|| {
                    err(n_at + 1, format!("the occurrence after '#' must be 1-5, not {n:?}"))
                })?;
            nth.push((day, n));
        } else if let Some(day) = item.strip_suffix('L') {
            last.push(parse_value(field, day, item_at)?);
        } else {
            add_item(field, item, item_at, &mut weekdays)?;
        }
    }
    Ok(Days::OfWeek { weekdays, last, nth })
}

/// A pipeline's schedule: the expression and the time zone it is read in (Image Builder's
/// `schedule.scheduleExpression` and `schedule.timezone`, UTC when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The expression.
    pub expression: CronExpression,
    /// Where its hours are read.
    pub timezone: Tz,
}

impl Schedule {
    /// Parses an expression and an IANA time zone name (`None`: UTC).
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let timezone = match timezone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                err(1, format!("unknown time zone {name:?}; use an IANA name such as Europe/Paris"))
            })?,
        };
        Ok(Schedule { expression: CronExpression::parse(expression)?, timezone })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.expression.next_after(after, self.timezone)
    }
}

#[cfg(test)]
mod tests;
