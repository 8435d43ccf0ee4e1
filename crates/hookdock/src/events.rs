//! Operator actions on stored events shared by the CLI and the API: replay, release, replay
//! of everything dead. They decide which handlers apply; the store does the writing.

use crate::handlers::HandlerRegistry;
use crate::store::{ReplayMode, ReplayReport, Store, StoreError};

/// Most events one "replay all dead" call touches.
const MAX_DEAD_REPLAY: u32 = 10_000;

/// Queues an event's jobs again for the handlers subscribed to it now.
pub async fn replay(
    store: &Store,
    registry: &HandlerRegistry,
    event_id: i64,
    mode: ReplayMode,
) -> Result<ReplayReport, StoreError> {
    let summary = store.event_summary(event_id).await?;
    let subscribed = registry.subscribers(&summary.event, summary.action.as_deref());
    store.replay_event(event_id, &subscribed, mode).await
}

/// Replays the dead jobs of every event that has one, oldest first.
pub async fn replay_all_dead(
    store: &Store,
    registry: &HandlerRegistry,
) -> Result<Vec<ReplayReport>, StoreError> {
    let mut reports = Vec::new();
    for id in store.dead_event_ids(MAX_DEAD_REPLAY).await? {
        reports.push(replay(store, registry, id, ReplayMode::DeadOnly).await?);
    }
    Ok(reports)
}
