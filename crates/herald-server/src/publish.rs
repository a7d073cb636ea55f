//! The one publish path, for the server API, broadcasts and WebSocket clients alike: the hub's
//! publish, with the webhook events of what was published recorded in the outbox before the
//! publisher is answered.

use axum::http::StatusCode;
use bytes::Bytes;
use herald_core::{PublishRequest, Published};

use crate::error::ApiError;
use crate::state::AppState;

/// Publishes a batch, and records the webhook events of what was published before
/// answering: an acknowledged publish has its events in the outbox. Outcomes in order.
pub async fn publish_batch(app: &AppState, requests: Vec<PublishRequest>) -> Vec<Result<Published, ApiError>> {
    // Each publish's webhook endpoints, with its data kept for their events.
    let events: Vec<Option<(Bytes, Vec<String>)>> = requests
        .iter()
        .map(|request| {
            let endpoints = app.webhooks.publication_endpoints(&request.channel, &request.data);
            (!endpoints.is_empty()).then(|| (request.data.clone(), endpoints))
        })
        .collect();
    if events.iter().all(Option::is_none) {
        return app.hub.publish_batch(requests).await.into_iter().map(|outcome| Ok(outcome?)).collect();
    }
    // In a task of its own: a caller that goes away (a client disconnecting) must not cut
    // this between the publish and its events reaching the outbox.
    let count = requests.len();
    let task_app = app.clone();
    match app.tasks.spawn(async move { publish_with_events(&task_app, requests, events).await }).await {
        Ok(outcomes) => outcomes,
        Err(error) => (0..count)
            .map(|_| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())))
            .collect(),
    }
}

async fn publish_with_events(
    app: &AppState,
    requests: Vec<PublishRequest>,
    events: Vec<Option<(Bytes, Vec<String>)>>,
) -> Vec<Result<Published, ApiError>> {
    let channels: Vec<_> = requests.iter().map(|request| request.channel.clone()).collect();
    let order = app.webhooks.order_guard(channels.iter()).await;
    let outcomes = app.hub.publish_batch(requests).await;
    let published: Vec<(&Published, &Bytes, &[String])> = outcomes
        .iter()
        .zip(&events)
        .filter_map(|(outcome, event)| {
            let (data, endpoints) = event.as_ref()?;
            Some((outcome.as_ref().ok()?, data, endpoints.as_slice()))
        })
        .collect();
    let submitted = app.webhooks.submit_publications(&published).await;
    drop(order);
    let recorded = match submitted {
        Ok(pending) => pending.wait().await,
        Err(error) => Err(error),
    };
    outcomes
        .into_iter()
        .zip(events)
        .map(|(outcome, event)| match (outcome, &recorded) {
            (Err(error), _) => Err(ApiError::from(error)),
            (Ok(_), Err(error)) if event.is_some() => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox_unavailable",
                format!("published, but its webhook event could not be recorded ({error}): publish again with the same idempotency key"),
            )),
            (Ok(published), _) => Ok(published),
        })
        .collect()
}

pub async fn publish(app: &AppState, request: PublishRequest) -> Result<Published, ApiError> {
    publish_batch(app, vec![request]).await.pop().unwrap_or_else(|| {
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no outcome for a publish"))
    })
}
