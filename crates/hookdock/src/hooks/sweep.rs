//! Which deliveries to ask GitHub for again. GitHub lists every attempt separately (a
//! redelivery is a new attempt with the same guid), so attempts are grouped by guid: a guid with
//! any successful (2xx) attempt is done; the others are candidates while GitHub still keeps them.

use std::collections::HashMap;

use crate::github::HookDelivery;

/// A delivery guid that never succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeliveryPlan {
    pub guid: String,
    pub event: String,
    /// The newest attempt, the one to redeliver.
    pub delivery_id: u64,
    /// When the newest failed attempt was made (Unix ms).
    pub last_failed_at: i64,
}

/// Groups `deliveries` by guid and returns those with no 2xx attempt whose first attempt is
/// not older than `window_start` (Unix ms), oldest first.
pub fn plan_redeliveries(deliveries: &[HookDelivery], window_start: i64) -> Vec<RedeliveryPlan> {
    struct Group<'a> {
        succeeded: bool,
        first_at: i64,
        newest: &'a HookDelivery,
        newest_at: i64,
    }
    let mut groups: HashMap<&str, Group<'_>> = HashMap::new();
    for d in deliveries {
        let Some(at) = d.delivered_at_ms() else {
            continue;
        };
        let ok = (200..300).contains(&d.status_code);
        let group = groups.entry(d.guid.as_str()).or_insert(Group {
            succeeded: false,
            first_at: at,
            newest: d,
            newest_at: at,
        });
        group.succeeded |= ok;
        group.first_at = group.first_at.min(at);
        if at > group.newest_at || (at == group.newest_at && d.id > group.newest.id) {
            group.newest = d;
            group.newest_at = at;
        }
    }
    let mut plans: Vec<(i64, RedeliveryPlan)> = groups
        .into_iter()
        .filter(|(_, g)| !g.succeeded && g.first_at >= window_start)
        .map(|(guid, g)| {
            (
                g.first_at,
                RedeliveryPlan {
                    guid: guid.to_owned(),
                    event: g.newest.event.clone(),
                    delivery_id: g.newest.id,
                    last_failed_at: g.newest_at,
                },
            )
        })
        .collect();
    plans.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.guid.cmp(&b.1.guid)));
    plans.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: u64, guid: &str, at: &str, code: i64) -> HookDelivery {
        HookDelivery {
            id,
            guid: guid.to_owned(),
            delivered_at: at.to_owned(),
            redelivery: false,
            status: if (200..300).contains(&code) {
                "OK".into()
            } else {
                "Invalid HTTP Response: 503".into()
            },
            status_code: code,
            event: "pull_request".into(),
            action: Some("opened".into()),
        }
    }

    #[test]
    fn only_guids_without_a_success_inside_the_window_are_planned() {
        let deliveries = [
            // Newest first, as GitHub lists them.
            attempt(7, "b", "2026-11-20T10:05:00Z", 503),
            attempt(6, "a", "2026-11-20T10:04:00Z", 200),
            attempt(5, "c", "2026-11-20T10:03:00Z", 0),
            attempt(4, "b", "2026-11-20T10:02:00Z", 500),
            attempt(3, "a", "2026-11-20T10:01:00Z", 502),
            attempt(2, "old", "2026-11-16T10:00:00Z", 500),
            attempt(1, "bad-time", "yesterday", 500),
        ];
        let window_start = time::macros::datetime!(2026-11-17 10:00 UTC).unix_timestamp() * 1000;
        let plans = plan_redeliveries(&deliveries, window_start);
        let at = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .unix_timestamp()
                * 1000
        };
        assert_eq!(
            plans,
            [
                RedeliveryPlan {
                    guid: "b".into(),
                    event: "pull_request".into(),
                    delivery_id: 7,
                    last_failed_at: at("2026-11-20T10:05:00Z"),
                },
                RedeliveryPlan {
                    guid: "c".into(),
                    event: "pull_request".into(),
                    delivery_id: 5,
                    last_failed_at: at("2026-11-20T10:03:00Z"),
                },
            ]
        );
    }
}
