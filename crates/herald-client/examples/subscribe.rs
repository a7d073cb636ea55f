//! Subscribes to chat:lobby, says hello, and prints what arrives there, resuming by itself
//! after every lost connection: `cargo run -p herald-client --example subscribe`, with Herald
//! on http://127.0.0.1:8750.

use futures_util::StreamExt;
use herald_client::{Client, ClientError, Event, Options};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect("http://127.0.0.1:8750", Options::default()).await?;
    let mut lobby = client.subscribe("chat:lobby", None).await?;
    client.publish("chat:lobby", json!({"text": "hello from Rust"})).await?;
    while let Some(event) = lobby.next().await {
        match event {
            Event::Subscribed { position, recovered: Some(false) } => {
                println!("publications were lost: reload the state (now at offset {})", position.offset)
            }
            Event::Subscribed { position, .. } => println!("subscribed at offset {}", position.offset),
            Event::Publication(publication) => println!("#{} {}", publication.offset, publication.data),
            Event::Join(entry) => println!("{} joined", entry.client),
            Event::Leave(entry) => println!("{} left", entry.client),
            Event::Error(error) => {
                eprintln!("{}: {}", error.code, error.message);
                break;
            }
            Event::Unsubscribed { reason } => {
                eprintln!("unsubscribed by the server: {reason}");
                break;
            }
        }
    }
    Ok(())
}
