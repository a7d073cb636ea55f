//! The tickers' publisher: simulated stock quotes (a random walk per symbol, every symbol in
//! one publication per tick) on `demo:ticker:stocks`, and football scores on
//! `demo:ticker:sports`. It publishes through the one publish path, like any backend, and only
//! while the channel has subscribers on this node, so an idle server does no work for it.

use std::time::Duration;

use bytes::Bytes;
use herald_core::{ChannelName, PublishRequest};
use serde::Serialize;

use crate::state::AppState;

pub const STOCKS_CHANNEL: &str = "demo:ticker:stocks";
pub const SPORTS_CHANNEL: &str = "demo:ticker:sports";
const QUOTE_INTERVAL: Duration = Duration::from_millis(500);
/// Scores move every this many quote ticks.
const SCORE_EVERY: u32 = 4;

#[derive(Debug, Clone, Serialize)]
struct Quote {
    symbol: &'static str,
    price: f64,
    /// Percent since the day's open.
    change: f64,
    #[serde(skip)]
    open: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Game {
    home: &'static str,
    away: &'static str,
    home_goals: u32,
    away_goals: u32,
    minute: u32,
}

/// Runs until shutdown (the caller spawns it on the server's task tracker).
pub async fn run(app: AppState) {
    let stocks = ChannelName::new(STOCKS_CHANNEL).expect("a valid channel name");
    let sports = ChannelName::new(SPORTS_CHANNEL).expect("a valid channel name");
    let mut quotes: Vec<Quote> =
        [("HRLD", 120.0), ("ACME", 48.5), ("GLBX", 310.2), ("INIT", 77.7), ("UMBR", 12.3), ("WAYN", 205.0)]
            .into_iter()
            .map(|(symbol, price)| Quote { symbol, price, change: 0.0, open: price })
            .collect();
    let mut games = vec![
        Game { home: "Rovers", away: "United", home_goals: 0, away_goals: 0, minute: 0 },
        Game { home: "Athletic", away: "City", home_goals: 0, away_goals: 0, minute: 30 },
        Game { home: "Wanderers", away: "Albion", home_goals: 0, away_goals: 0, minute: 60 },
    ];
    let mut tick = tokio::time::interval(QUOTE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for count in 0u32.. {
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if app.hub.subscriber_count(&stocks) > 0 {
            for quote in &mut quotes {
                // A random walk of at most ±0.8% a tick, never below a cent.
                quote.price = (quote.price * (1.0 + (fastrand::f64() - 0.5) * 0.016)).max(0.01);
                quote.price = (quote.price * 100.0).round() / 100.0;
                quote.change = ((quote.price / quote.open - 1.0) * 10_000.0).round() / 100.0;
            }
            publish(&app, &stocks, &serde_json::json!({ "quotes": quotes })).await;
        }
        if count % SCORE_EVERY == 0 && app.hub.subscriber_count(&sports) > 0 {
            for game in &mut games {
                game.minute += 1;
                if game.minute > 90 {
                    *game = Game { minute: 0, home_goals: 0, away_goals: 0, ..game.clone() };
                }
                // About three goals a game.
                if fastrand::u32(..60) == 0 {
                    if fastrand::bool() { game.home_goals += 1 } else { game.away_goals += 1 }
                }
            }
            publish(&app, &sports, &serde_json::json!({ "games": games })).await;
        }
    }
}

async fn publish(app: &AppState, channel: &ChannelName, data: &serde_json::Value) {
    let request =
        PublishRequest { channel: channel.clone(), data: Bytes::from(data.to_string()), idempotency_key: None };
    if let Err(error) = crate::publish::publish(app, request).await {
        tracing::debug!(%channel, error = %error.body.message, "the demo ticker could not publish");
    }
}
