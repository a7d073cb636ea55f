//! Durable namespaces on the embedded SQLite storage: what was acknowledged survives `kill -9`,
//! recovery races no publisher, and a damaged data directory stops the start with a clear error.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{TestServer, WsClient, spawn_herald};

const DURABLE: &str = "[namespaces.orders]\ndurable = true\nhistory_size = 10000\nhistory_ttl = \"1h\"\n";

/// Starts the real binary; returns it and its address once it prints it.
async fn publish(http: &reqwest::Client, address: &str, body: Value) -> Value {
    let response = http.post(format!("http://{address}/api/publish")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publications_survive_kill_9_with_their_offsets_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, DURABLE).unwrap();
    let data_dir = dir.path().join("data");
    let http = crate::helpers::http_client();

    let (mut first, address) = spawn_herald(&data_dir, &config);
    let mut epoch = Value::Null;
    for n in 1..=50 {
        let reply = publish(&http, &address, json!({"channel": "orders:1", "data": {"n": n}})).await;
        assert_eq!(reply["offset"], n);
        epoch = reply["epoch"].clone();
    }
    let keyed = json!({"channel": "orders:1", "data": "once", "idempotency_key": "order-51"});
    assert_eq!(publish(&http, &address, keyed.clone()).await["offset"], 51);
    first.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.wait().unwrap();

    let (mut second, address) = spawn_herald(&data_dir, &config);
    let (status, history) = {
        let response = http
            .get(format!("http://{address}/api/channels/orders:1/history?since=0&limit=1000"))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    let publications = history["publications"].as_array().unwrap();
    assert_eq!(publications.len(), 51);
    for (index, publication) in publications.iter().enumerate() {
        assert_eq!(publication["offset"], index as u64 + 1);
        assert_eq!(publication["epoch"], epoch, "same epoch after the restart");
    }
    assert_eq!(publications[9]["data"], json!({"n": 10}));
    let again = publish(&http, &address, keyed).await;
    assert_eq!((again["offset"].clone(), again["duplicate"].clone()), (json!(51), json!(true)));

    // A client that saw offset 10 before the crash recovers exactly the rest.
    let mut client = WsClient::connect(&format!("ws://{address}/ws")).await;
    let since = json!({"epoch": epoch, "offset": 10});
    let reply = client.command(json!({"op": "subscribe", "channel": "orders:1", "since": since})).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    for offset in 11..=51 {
        assert_eq!(client.next_push().await["offset"], offset);
    }
    assert_eq!(publish(&http, &address, json!({"channel": "orders:1", "data": 52})).await["offset"], 52);
    assert_eq!(client.next_push().await["offset"], 52, "and live ones after");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_during_a_publishing_storm_sees_exactly_1_to_n() {
    let server = TestServer::with_config(DURABLE).await;
    let total = 600u64;
    let first = server.publish("orders:storm", json!(1)).await;
    let publisher = {
        let http = server.http().clone();
        let url = server.url("/api/publish");
        tokio::spawn(async move {
            for n in 2..=total {
                let body = json!({"channel": "orders:storm", "data": n});
                assert_eq!(http.post(&url).json(&body).send().await.unwrap().status(), 200);
            }
        })
    };
    // Subscribe from the very start while the publisher is busy.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let mut client = server.client().await;
    let since = json!({"epoch": first["epoch"], "offset": 0});
    let reply = client.command(json!({"op": "subscribe", "channel": "orders:storm", "since": since})).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let mut offsets = Vec::new();
    while offsets.len() < total as usize {
        offsets.push(client.next_push().await["offset"].as_u64().unwrap());
    }
    publisher.await.unwrap();
    assert_eq!(offsets, (1..=total).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_durable_channels_live_side_by_side() {
    let server = TestServer::with_config(DURABLE).await;
    let durable = server.publish("orders:x", json!(1)).await;
    let volatile = server.publish("chat:x", json!(1)).await;
    assert_eq!((durable["offset"].clone(), volatile["offset"].clone()), (json!(1), json!(1)));
    let (_, cursor, _) = server.poll("channel=orders:x&channel=chat:x&timeout=0").await;
    server.publish("orders:x", json!(2)).await;
    server.publish("chat:x", json!(2)).await;
    let (status, _, body) = server.poll(&format!("channel=orders:x&channel=chat:x&since={cursor}&timeout=0")).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn a_damaged_data_directory_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("herald.db"), vec![0x42u8; 4096]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("herald.db") && stderr.contains("damaged"), "{stderr}");
    assert_eq!(std::fs::read(data_dir.join("herald.db")).unwrap(), vec![0x42u8; 4096], "nothing overwritten");

    let not_a_directory = dir.path().join("file");
    std::fs::write(&not_a_directory, b"x").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&not_a_directory)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains("data directory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_channels_on_postgres_survive_a_restart_of_the_server() {
    let Ok(url) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
        eprintln!("skipped: HERALD_TEST_POSTGRES_URL is unset (.ci/run sets it)");
        return;
    };
    let schema = format!("herald_it_{}_{}", std::process::id(), fastrand::u32(..));
    let config = format!("{DURABLE}[storage]\nkind = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\n");
    let server = TestServer::with_config(&config).await;
    let mut epoch = Value::Null;
    for n in 1..=20 {
        let reply = server.publish("orders:pg", json!({"n": n})).await;
        assert_eq!(reply["offset"], n);
        epoch = reply["epoch"].clone();
    }
    server.shutdown().await;

    let server = TestServer::with_config(&config).await;
    let (status, history) = server.get_json("/api/channels/orders:pg/history?since=0&limit=100").await;
    assert_eq!(status, 200);
    let offsets: Vec<u64> =
        history["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    assert_eq!(history["position"]["epoch"], epoch);
    let mut client = server.client().await;
    let since = json!({"epoch": epoch, "offset": 15});
    let reply = client.command(json!({"op": "subscribe", "channel": "orders:pg", "since": since})).await;
    assert_eq!(reply["result"]["recovered"], true);
    for offset in 16..=20 {
        assert_eq!(client.next_push().await["offset"], offset);
    }
    server.shutdown().await;

    if let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_survives_a_kill_9_during_concurrent_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, DURABLE).unwrap();
    let data_dir = dir.path().join("data");
    let (mut herald, address) = spawn_herald(&data_dir, &config);
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let publishers: Vec<_> = (0..8)
        .map(|publisher| {
            let (address, acknowledged) = (address.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let http = crate::helpers::http_client();
                for n in 0.. {
                    let body = json!({"channel": "orders:storm", "data": {"p": publisher, "n": n}});
                    let Ok(response) = http.post(format!("http://{address}/api/publish")).json(&body).send().await
                    else {
                        return; // the server is gone
                    };
                    let Ok(reply) = response.json::<Value>().await else { return };
                    acknowledged.lock().unwrap().push((
                        reply["offset"].as_u64().unwrap(),
                        reply["epoch"].clone(),
                        body,
                    ));
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    herald.kill().unwrap(); // mid-flight: some publishes are committed but not answered
    herald.wait().unwrap();
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let (mut again, address) = spawn_herald(&data_dir, &config);
    let history: Value = reqwest::get(format!("http://{address}/api/channels/orders:storm/history?since=0&limit=1000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: std::collections::HashMap<u64, Value> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
        .collect();
    let offsets: Vec<u64> = {
        let mut offsets: Vec<u64> = stored.keys().copied().collect();
        offsets.sort_unstable();
        offsets
    };
    assert_eq!(offsets, (1..=offsets.len() as u64).collect::<Vec<_>>(), "contiguous from 1");
    for (offset, epoch, body) in acknowledged.lock().unwrap().iter() {
        assert_eq!(stored.get(offset), Some(&body["data"]), "acknowledged offset {offset} is stored with its data");
        assert_eq!(*epoch, history["position"]["epoch"]);
    }
    again.kill().unwrap();
    again.wait().unwrap();
}
