//! Teams and working-hours calendars.
//!
//! A [`Calendar`] says when people work: a time zone, working days, daily hours and holidays.
//! [`WorkingTime`] precomputes a calendar's working intervals over a range of instants, so the
//! working time between two instants is two binary searches. Local times are converted with
//! the bundled tz database (never the host's), gaps and folds of DST changes resolved the
//! "compatible" way (a time in a gap moves forward, a time in a fold takes the earlier one).
//!
//! [`Teams`] is the validated `handlers.metrics.teams` configuration; [`ResolvedTeams`] adds
//! the GitHub user ids that the configured logins are known by.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::config::MetricsSettings;
use crate::store::PullRequestRow;

/// A team or working-hours setting that cannot be used, with the setting's full key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{key}`: {reason}")]
pub struct CalendarError {
    pub key: String,
    pub reason: String,
}

fn error(prefix: &str, key: &str, reason: impl Into<String>) -> CalendarError {
    CalendarError {
        key: format!("{prefix}.{key}"),
        reason: reason.into(),
    }
}

const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

/// Earliest and latest instants a calendar is evaluated at (1970 to 2200), so corrupt times
/// cannot make it build millions of days.
const MIN_MS: i64 = 0;
const MAX_MS: i64 = 7_258_118_400_000;

/// When people work, as configured.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// Monday first.
    days: [bool; 7],
    /// Minutes after local midnight; `end` may be 1440 (`24:00`).
    start: i32,
    end: i32,
    holidays: BTreeSet<Date>,
    info: CalendarInfo,
}

/// A calendar as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CalendarInfo {
    pub timezone: String,
    pub working_days: Vec<String>,
    pub working_hours: String,
    pub holidays: Vec<String>,
}

fn parse_clock(text: &str) -> Option<i32> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl Calendar {
    /// Validates one calendar's settings; `prefix` names where they are (for errors), e.g.
    /// `handlers.metrics` or `handlers.metrics.teams[0]`.
    pub fn new(
        prefix: &str,
        timezone: &str,
        working_days: &[String],
        working_hours: &str,
        holidays: &[String],
    ) -> Result<Calendar, CalendarError> {
        let tz = TimeZone::get(timezone.trim()).map_err(|_| {
            error(
                prefix,
                "timezone",
                format!("{timezone:?} is not a known IANA time zone; use a name such as Europe/Berlin or UTC"),
            )
        })?;
        let mut days = [false; 7];
        let mut day_names = Vec::new();
        for (i, day) in working_days.iter().enumerate() {
            let lower = day.trim().to_ascii_lowercase();
            let Some(n) = DAY_NAMES
                .iter()
                .position(|(short, long)| lower == *short || lower == *long)
            else {
                return Err(error(
                    prefix,
                    &format!("working_days[{i}]"),
                    format!("{day:?} is not a day; use mon, tue, wed, thu, fri, sat or sun"),
                ));
            };
            days[n] = true;
        }
        for (n, on) in days.iter().enumerate() {
            if *on {
                day_names.push(DAY_NAMES[n].0.to_owned());
            }
        }
        if day_names.is_empty() {
            return Err(error(
                prefix,
                "working_days",
                "is empty; give at least one day, e.g. [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
            ));
        }
        let hours_error = || {
            error(
                prefix,
                "working_hours",
                format!(
                    "{working_hours:?} is not a range of local times like \"09:00-17:00\" (start before end, 24:00 at most)"
                ),
            )
        };
        let (start, end) = working_hours.split_once('-').ok_or_else(hours_error)?;
        let (start, end) = (
            parse_clock(start).ok_or_else(hours_error)?,
            parse_clock(end).ok_or_else(hours_error)?,
        );
        if start >= end || start == 1440 {
            return Err(hours_error());
        }
        let mut parsed_holidays = BTreeSet::new();
        for (i, day) in holidays.iter().enumerate() {
            let date: Date = day.trim().parse().map_err(|_| {
                error(
                    prefix,
                    &format!("holidays[{i}]"),
                    format!("{day:?} is not a date like 2026-12-25"),
                )
            })?;
            parsed_holidays.insert(date);
        }
        let clock = |m: i32| format!("{:02}:{:02}", m / 60, m % 60);
        Ok(Calendar {
            tz,
            days,
            start,
            end,
            info: CalendarInfo {
                timezone: timezone.trim().to_owned(),
                working_days: day_names,
                working_hours: format!("{}-{}", clock(start), clock(end)),
                holidays: parsed_holidays.iter().map(ToString::to_string).collect(),
            },
            holidays: parsed_holidays,
        })
    }

    pub fn info(&self) -> &CalendarInfo {
        &self.info
    }

    fn local_date(&self, ms: i64) -> Option<Date> {
        let t = Timestamp::from_millisecond(ms.clamp(MIN_MS, MAX_MS)).ok()?;
        Some(self.tz.to_datetime(t).date())
    }

    fn instant(&self, dt: DateTime) -> Option<i64> {
        let t = self.tz.to_ambiguous_timestamp(dt).compatible().ok()?;
        Some(t.as_millisecond())
    }

    /// The working interval of one local day, as instants; `None` on days off.
    fn working_interval(&self, date: Date) -> Option<(i64, i64)> {
        let weekday = usize::try_from(date.weekday().to_monday_zero_offset()).ok()?;
        if !self.days[weekday] || self.holidays.contains(&date) {
            return None;
        }
        let at = |minutes: i32| -> Option<i64> {
            if minutes == 1440 {
                self.instant(date.tomorrow().ok()?.at(0, 0, 0, 0))
            } else {
                // Both values are in range: minutes < 1440.
                let (h, m) = (
                    i8::try_from(minutes / 60).ok()?,
                    i8::try_from(minutes % 60).ok()?,
                );
                self.instant(date.at(h, m, 0, 0))
            }
        };
        let (start, end) = (at(self.start)?, at(self.end)?);
        (end > start).then_some((start, end))
    }

    /// The working intervals covering every instant in [from, to] (clamped to 1970..2200).
    pub fn working_time(&self, from: i64, to: i64) -> WorkingTime {
        let mut w = WorkingTime {
            starts: Vec::new(),
            ends: Vec::new(),
            cum: vec![0],
        };
        // A day either side: a local day can begin before the UTC day of `from`.
        let (Some(first), Some(last)) = (self.local_date(from.min(to)), self.local_date(to)) else {
            return w;
        };
        let mut date = first.yesterday().unwrap_or(first);
        let last = last.tomorrow().unwrap_or(last);
        while date <= last {
            if let Some((start, end)) = self.working_interval(date) {
                // DST oddities never make intervals overlap or go backwards.
                let start = start.max(w.ends.last().copied().unwrap_or(i64::MIN));
                if end > start {
                    let total = w.cum.last().copied().unwrap_or(0) + (end - start);
                    w.starts.push(start);
                    w.ends.push(end);
                    w.cum.push(total);
                }
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        w
    }
}

/// A calendar's working intervals over a range, with running totals.
#[derive(Debug, Clone)]
pub struct WorkingTime {
    starts: Vec<i64>,
    ends: Vec<i64>,
    /// `cum[i]`: working milliseconds in the first `i` intervals.
    cum: Vec<i64>,
}

impl WorkingTime {
    /// Working milliseconds before `t` (within the range it was built for).
    fn before(&self, t: i64) -> i64 {
        let k = self.starts.partition_point(|s| *s <= t);
        let mut total = self.cum[k];
        if k > 0 && t < self.ends[k - 1] {
            total -= self.ends[k - 1] - t;
        }
        total
    }

    /// Working milliseconds in [start, end]; zero when `end` is before `start`.
    pub fn between(&self, start: i64, end: i64) -> i64 {
        if end <= start {
            return 0;
        }
        self.before(end) - self.before(start)
    }
}

/// One configured team.
#[derive(Debug, Clone)]
pub struct Team {
    pub name: String,
    /// GitHub logins, lowercase.
    pub logins: Vec<String>,
    pub calendar: Arc<Calendar>,
}

/// The validated `handlers.metrics` teams and default calendar.
#[derive(Debug, Clone)]
pub struct Teams {
    pub default_calendar: Arc<Calendar>,
    pub teams: Vec<Team>,
}

impl Teams {
    pub fn from_settings(s: &MetricsSettings) -> Result<Teams, CalendarError> {
        let root = "handlers.metrics";
        let default_calendar = Arc::new(Calendar::new(
            root,
            &s.timezone,
            &s.working_days,
            &s.working_hours,
            &s.holidays,
        )?);
        let mut teams: Vec<Team> = Vec::new();
        for (i, t) in s.teams.iter().enumerate() {
            let prefix = format!("{root}.teams[{i}]");
            let name = t.name.trim();
            if name.is_empty() {
                return Err(error(&prefix, "name", "is empty; give the team a name"));
            }
            if teams
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(name))
            {
                return Err(error(
                    &prefix,
                    "name",
                    format!("{name:?} is used by an earlier team; team names must be unique"),
                ));
            }
            let mut logins = Vec::new();
            for (j, login) in t.members.iter().enumerate() {
                let login = login.trim().trim_start_matches('@');
                if login.is_empty() || login.contains(char::is_whitespace) {
                    return Err(error(
                        &prefix,
                        &format!("members[{j}]"),
                        format!("{:?} is not a GitHub login", t.members[j]),
                    ));
                }
                logins.push(login.to_ascii_lowercase());
            }
            if logins.is_empty() {
                return Err(error(
                    &prefix,
                    "members",
                    "is empty; list the team's GitHub logins",
                ));
            }
            let overrides = t.timezone.is_some()
                || t.working_days.is_some()
                || t.working_hours.is_some()
                || t.holidays.is_some();
            let calendar = if overrides {
                Arc::new(Calendar::new(
                    &prefix,
                    t.timezone.as_deref().unwrap_or(&s.timezone),
                    t.working_days.as_deref().unwrap_or(&s.working_days),
                    t.working_hours.as_deref().unwrap_or(&s.working_hours),
                    t.holidays.as_deref().unwrap_or(&s.holidays),
                )?)
            } else {
                Arc::clone(&default_calendar)
            };
            logins.sort();
            logins.dedup();
            teams.push(Team {
                name: name.to_owned(),
                logins,
                calendar,
            });
        }
        Ok(Teams {
            default_calendar,
            teams,
        })
    }

    /// The index of the team named `name` (case-insensitive).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.teams
            .iter()
            .position(|t| t.name.eq_ignore_ascii_case(name.trim()))
    }

    pub fn names(&self) -> Vec<&str> {
        self.teams.iter().map(|t| t.name.as_str()).collect()
    }

    /// Every configured login, lowercase, once.
    pub fn all_logins(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.teams.iter().flat_map(|t| &t.logins).collect();
        set.into_iter().cloned().collect()
    }

    /// Teams with the user ids their logins are known by: `known` holds (lowercase login,
    /// GitHub user id) for every login a user has been seen with.
    pub fn resolve(&self, known: &[(String, i64)]) -> ResolvedTeams<'_> {
        let ids = self
            .teams
            .iter()
            .map(|t| {
                known
                    .iter()
                    .filter(|(login, _)| t.logins.binary_search(login).is_ok())
                    .map(|(_, id)| *id)
                    .collect()
            })
            .collect();
        ResolvedTeams { teams: self, ids }
    }
}

/// Teams whose members are matched by user id (a renamed member stays in the team) and, for
/// authors not seen under a configured login, by login.
#[derive(Debug, Clone)]
pub struct ResolvedTeams<'a> {
    pub teams: &'a Teams,
    ids: Vec<HashSet<i64>>,
}

impl ResolvedTeams<'_> {
    /// The user ids of team `team`'s members known so far, sorted.
    pub fn member_ids(&self, team: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .ids
            .get(team)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Whether the author of `pr` is a member of team `team`.
    pub fn is_member(&self, team: usize, pr: &PullRequestRow) -> bool {
        let by_id = pr
            .author_id
            .is_some_and(|id| self.ids.get(team).is_some_and(|ids| ids.contains(&id)));
        by_id
            || pr.author.as_deref().is_some_and(|login| {
                self.teams
                    .teams
                    .get(team)
                    .is_some_and(|t| t.logins.binary_search(&login.to_ascii_lowercase()).is_ok())
            })
    }

    /// The first team (in configuration order) the author of `pr` belongs to.
    pub fn team_of(&self, pr: &PullRequestRow) -> Option<usize> {
        (0..self.teams.teams.len()).find(|&t| self.is_member(t, pr))
    }

    /// The calendar of team `team`, or the default one.
    pub fn calendar(&self, team: Option<usize>) -> &Arc<Calendar> {
        team.and_then(|t| self.teams.teams.get(t))
            .map_or(&self.teams.default_calendar, |t| &t.calendar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn weekdays() -> Vec<String> {
        strings(&["mon", "tue", "wed", "thu", "fri"])
    }

    fn ms(text: &str) -> i64 {
        crate::handlers::payload::parse_time(text).expect("RFC 3339")
    }

    fn hours(cal: &Calendar, from: &str, to: &str) -> f64 {
        let (a, b) = (ms(from), ms(to));
        cal.working_time(a, b).between(a, b) as f64 / 3_600_000.0
    }

    #[test]
    fn working_hours_skip_nights_weekends_and_holidays() {
        let berlin = Calendar::new(
            "x",
            "Europe/Berlin",
            &weekdays(),
            "09:00-17:00",
            &strings(&["2026-12-25"]),
        )
        .expect("valid");
        // Friday 2026-11-20 16:00 Berlin (15:00Z) to Monday 10:30 Berlin: 1 h + 1.5 h.
        assert_eq!(
            hours(&berlin, "2026-11-20T15:00:00Z", "2026-11-23T09:30:00Z"),
            2.5
        );
        // Opened Saturday night, reviewed Monday 09:45 Berlin: 45 minutes.
        assert_eq!(
            hours(&berlin, "2026-11-21T22:00:00Z", "2026-11-23T08:45:00Z"),
            0.75
        );
        // Thursday 24th 12:00 to Monday 28th 12:00 (Berlin, CET = UTC+1) with Friday 25th a
        // holiday: Thu 5 h + Mon 3 h.
        assert_eq!(
            hours(&berlin, "2026-12-24T11:00:00Z", "2026-12-28T11:00:00Z"),
            8.0
        );
        // Across the spring DST change (Sunday 2026-03-29): Friday 16:00 CET (15:00Z) to
        // Monday 10:00 CEST (08:00Z) is 65 h by the clock but 2 working hours.
        assert_eq!(
            hours(&berlin, "2026-03-27T15:00:00Z", "2026-03-30T08:00:00Z"),
            2.0
        );
        // Backwards: nothing.
        assert_eq!(
            hours(&berlin, "2026-11-23T09:30:00Z", "2026-11-20T15:00:00Z"),
            0.0
        );
    }

    #[test]
    fn a_whole_day_calendar_follows_dst_day_lengths() {
        let all = strings(&["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
        let cal = Calendar::new("x", "Europe/Berlin", &all, "00:00-24:00", &[]).expect("valid");
        // Sunday 2026-03-29 has 23 hours in Berlin, Sunday 2026-10-25 has 25.
        assert_eq!(
            hours(&cal, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
            23.0
        );
        assert_eq!(
            hours(&cal, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
            25.0
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |r: Result<Calendar, CalendarError>| r.map(|_| ()).unwrap_err();
        let e = err(Calendar::new(
            "p",
            "Mars/Olympus",
            &weekdays(),
            "09:00-17:00",
            &[],
        ));
        assert_eq!(e.key, "p.timezone");
        assert!(e.reason.contains("Mars/Olympus"), "{e}");
        let e = err(Calendar::new(
            "p",
            "UTC",
            &strings(&["mon", "fry"]),
            "09:00-17:00",
            &[],
        ));
        assert_eq!(e.key, "p.working_days[1]");
        let e = err(Calendar::new("p", "UTC", &[], "09:00-17:00", &[]));
        assert_eq!(e.key, "p.working_days");
        for hours in ["9-17", "17:00-09:00", "09:00-25:00", "09:00", "24:00-24:00"] {
            let e = err(Calendar::new("p", "UTC", &weekdays(), hours, &[]));
            assert_eq!(e.key, "p.working_hours", "{hours}");
        }
        let e = err(Calendar::new(
            "p",
            "UTC",
            &weekdays(),
            "09:00-17:00",
            &strings(&["2026-02-30"]),
        ));
        assert_eq!(e.key, "p.holidays[0]");
        let ok = Calendar::new(
            "p",
            " UTC ",
            &strings(&["Friday", "MON"]),
            "08:30-24:00",
            &[],
        )
        .expect("valid");
        assert_eq!(
            ok.info(),
            &CalendarInfo {
                timezone: "UTC".into(),
                working_days: strings(&["mon", "fri"]),
                working_hours: "08:30-24:00".into(),
                holidays: vec![],
            }
        );
    }
}
