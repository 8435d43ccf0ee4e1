//! Built-in handler: records, per repository (or organization) and event type, the last event
//! and how many were handled. It exercises the whole pipeline and shows an operator that
//! deliveries arrive.

use super::{Handler, HandlerFuture, JobContext};
use crate::store::Effect;

pub struct ActivityHandler {
    /// Event names it takes; `*` is all.
    events: Vec<String>,
}

impl ActivityHandler {
    pub const NAME: &'static str = "activity";

    pub fn new(events: Vec<String>) -> ActivityHandler {
        ActivityHandler { events }
    }
}

impl Handler for ActivityHandler {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn subscribes(&self, event: &str, _action: Option<&str>) -> bool {
        self.events.iter().any(|e| e == "*" || e == event)
    }

    /// Its effects follow from the payload alone.
    fn runs_in_chains(&self) -> bool {
        true
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let job = ctx.job;
            let scope = match (&job.repository, &job.organization) {
                (Some(repo), _) => repo.clone(),
                (None, Some(org)) => format!("org:{org}"),
                (None, None) => "(none)".to_owned(),
            };
            Ok(vec![Effect::RecordActivity {
                scope,
                event: job.event.clone(),
                event_id: job.event_id,
                received_at: job.received_at,
            }])
        })
    }
}
