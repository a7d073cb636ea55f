//! The demos' server side: their built-in namespaces (on without `[auth]`, off with it, replaced
//! by the config's own), presence info that anonymous clients give for themselves, the file
//! store's limits and downloads, the ticker publishing only while watched, and the pages, docs
//! and assets being served. The pages' behaviour is tested in a browser (e2e/demos.test.js).

use serde_json::{Value, json};

use crate::helpers::{TestServer, WsClient};

/// The next publication pushed, past the joins and leaves of the demo namespaces.
async fn next_publication(client: &mut WsClient) -> Value {
    loop {
        let push = client.next_push().await;
        if push.get("offset").is_some() {
            return push;
        }
    }
}

async fn status_of(server: &TestServer, path: &str) -> u16 {
    server.http().get(server.url(path)).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_show_the_info_they_give_where_the_namespace_takes_it() {
    let server = TestServer::start().await;
    let mut ann = server.client().await;
    let reply = ann.command(json!({"op": "connect", "info": {"nick": "ann"}})).await;
    assert!(reply["result"]["client"].is_string(), "{reply}");
    ann.subscribe("demo:chat:room").await;
    ann.subscribe("plain:room").await; // the default namespace keeps no presence info of clients

    // An SSE client gives it in the query.
    let info = form_urlencoded::byte_serialize(br#"{"nick":"bob"}"#).collect::<String>();
    let mut bob = server.sse(&format!("channel=demo:chat:room&info={info}")).await;
    bob.next_event().await.unwrap();

    let (status, body) = server.get_json("/api/channels/demo:chat:room/presence").await;
    assert_eq!(status, 200, "{body}");
    let mut nicks: Vec<&str> =
        body["clients"].as_array().unwrap().iter().map(|c| c["info"]["nick"].as_str().unwrap()).collect();
    nicks.sort_unstable();
    assert_eq!(nicks, ["ann", "bob"], "{body}");
    assert!(body["clients"].as_array().unwrap().iter().all(|c| c["user"].is_null()), "still anonymous: {body}");

    // Where the namespace does not take it, presence shows none.
    let server_without = TestServer::with_config("[namespaces.plain]\npresence = true").await;
    let mut carl = server_without.client().await;
    carl.command(json!({"op": "connect", "info": {"nick": "carl"}})).await;
    carl.subscribe("plain:room").await;
    let (_, body) = server_without.get_json("/api/channels/plain:room/presence").await;
    assert_eq!(body["clients"][0]["info"], Value::Null, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_presence_info_is_refused_with_a_reason() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = client.command(json!({"op": "connect"})).await["result"]["client"].clone();
    let other = server.client().await.command(json!({"op": "connect"})).await["result"]["client"].clone();
    let big = "x".repeat(2000);
    let reply = client.command(json!({"op": "connect", "client": other, "info": {"nick": big}})).await;
    assert_eq!(reply["error"]["code"], "invalid_info", "{reply}");
    let again = client.command(json!({"op": "connect"})).await;
    assert_eq!(again["result"]["client"], first, "a refused connect changes nothing, not even the client id");
    client.subscribe("demo:chat:a").await;
    let reply = client.command(json!({"op": "connect", "info": {"nick": "late"}})).await;
    assert_eq!(reply["error"]["code"], "already_subscribed", "info comes before subscribing: {reply}");

    for (query, why) in [("info=%7Bnot", "not JSON"), (&*format!("info=%22{}%22", "y".repeat(1100)), "too large")] {
        let (status, body) = server.get_json(&format!("/poll?channel=demo:chat:a&timeout=0&{query}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_info")), "{why}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_carries_its_own_info_so_a_client_with_one_may_not_give_another() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let server =
        TestServer::with_config(&format!("[auth]\nhmac_secret = \"{SECRET}\"\n[demo]\nenabled = true\n")).await;
    let claims = json!({"sub": "ann", "exp": jsonwebtoken::get_current_timestamp() + 600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "connect", "token": token, "info": {"nick": "x"}})).await;
    assert_eq!(reply["error"]["code"], "invalid_info", "{reply}");
    let (status, body) = server.get_json(&format!("/poll?channel=demo:feed&timeout=0&token={token}&info=1")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_info")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demos_are_on_without_auth_off_with_it_and_the_configs_namespace_wins() {
    let open = TestServer::start().await;
    assert_eq!(status_of(&open, "/demo/chat").await, 200);
    let mut client = open.client().await;
    client.subscribe("demo:feed").await;
    for n in 0..3 {
        client.command(json!({"op": "publish", "channel": "demo:feed", "data": n})).await;
    }
    let (_, history) = open.get_json("/api/channels/demo:feed/history").await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 3, "demo keeps history: {history}");
    let (_, history) = open.get_json("/api/channels/demo-signal:x/history").await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 0, "demo-signal keeps none");

    let secured = TestServer::with_config("[auth]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\n").await;
    assert_eq!(status_of(&secured, "/demo/chat").await, 404, "no demos on a server that checks its clients");
    let page = secured.http().get(secured.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("The demos are off"), "the front page says why");
    let mut anonymous = secured.client().await;
    let reply = anonymous.command(json!({"op": "subscribe", "channel": "demo:feed"})).await;
    assert_eq!(reply["error"]["code"], "unauthorized", "no open demo namespace either: {reply}");

    let own = TestServer::with_config("[namespaces.demo]\nhistory_size = 0\n").await;
    let mut client = own.client().await;
    client.subscribe("demo:feed").await;
    client.command(json!({"op": "publish", "channel": "demo:feed", "data": 1})).await;
    let (_, history) = own.get_json("/api/channels/demo:feed/history").await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 0, "the config's [namespaces.demo] wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_files_are_announced_bounded_and_handed_back_as_downloads() {
    let server = TestServer::with_config("[demo]\nmax_file_size = 1000\nmax_total_file_size = 20000\n").await;
    let mut watcher = WsClient::connect(&server.ws_url()).await;
    watcher.subscribe("demo:files:room").await;
    let upload = |name: &str, body: Vec<u8>| {
        server.http().post(server.url(&format!("/demo/files/room?name={name}&by=ann&upload=u1"))).body(body).send()
    };
    let bytes: Vec<u8> = (0..900u32).map(|n| (n * 7) as u8).collect();
    let response = upload("..%2Fevil%2Fa%20b.txt", bytes.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let stored: Value = response.json().await.unwrap();
    let announced = next_publication(&mut watcher).await;
    assert_eq!(announced["data"]["type"], "file");
    assert_eq!(announced["data"]["name"], "a b.txt", "no path in the name: {announced}");
    assert_eq!(announced["data"]["url"], stored["url"]);
    assert_eq!(announced["data"]["upload"], "u1");

    let download = server.http().get(server.url(stored["url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "application/octet-stream", "never rendered as a page");
    assert_eq!(download.headers()["content-disposition"], "attachment; filename*=UTF-8''a%20b.txt");
    assert_eq!(download.bytes().await.unwrap().to_vec(), bytes, "byte for byte");

    let too_big = upload("big", vec![0; 1001]).await.unwrap();
    assert_eq!(too_big.status(), 413);
    let body: Value = too_big.json().await.unwrap();
    assert_eq!(body["error"]["code"], "file_too_large", "{body}");

    // Past the store's total the oldest go: the first of three is gone after the third.
    let second: Value = upload("two", vec![2; 900]).await.unwrap().json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    upload("three", vec![3; 900]).await.unwrap();
    assert_eq!(status_of(&server, stored["url"].as_str().unwrap()).await, 404, "the oldest was removed");
    assert_eq!(status_of(&server, second["url"].as_str().unwrap()).await, 200);

    // Uploads at once: each is stored (evictions do not trip over each other) and the store
    // ends within its bound.
    let uploads: Vec<_> = (0..12).map(|n| upload(&format!("many{n}"), vec![n as u8; 500])).collect();
    for response in futures_util::future::join_all(uploads).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let stored_bytes: u64 = std::fs::read_dir(server.data_dir().join("demo-files/room"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(stored_bytes < 4000, "two files and their metadata at most: {stored_bytes} bytes");

    for path in ["/demo/files/room/../../etc", "/demo/files/room/0123", "/demo/files/bad%20room/0123456789abcdef"] {
        assert_eq!(status_of(&server, path).await, 404, "{path}");
    }
    let response = server.http().post(server.url("/demo/files/bad%20room?name=x")).body("x").send().await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticker_publishes_while_someone_watches() {
    let server = TestServer::start().await;
    let (_, before) = server.get_json("/api/channels/demo:ticker:stocks/history").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (_, idle) = server.get_json("/api/channels/demo:ticker:stocks/history").await;
    assert_eq!(before["position"], idle["position"], "nothing published with nobody watching");
    let mut watcher = server.client().await;
    watcher.subscribe("demo:ticker:stocks").await;
    let first = next_publication(&mut watcher).await;
    let second = next_publication(&mut watcher).await;
    let quotes = first["data"]["quotes"].as_array().unwrap();
    assert!(quotes.len() >= 3 && quotes.iter().all(|q| q["price"].as_f64().unwrap() > 0.0), "{first}");
    assert_eq!(second["offset"].as_u64().unwrap(), first["offset"].as_u64().unwrap() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_docs_and_assets_are_served_with_their_types() {
    let server = TestServer::start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/demo/chat?room=a", "text/html; charset=utf-8"),
        ("/demo/live?role=presenter", "text/html; charset=utf-8"),
        ("/docs/protocol", "text/html; charset=utf-8"),
        ("/assets/herald.css", "text/css; charset=utf-8"),
        ("/assets/demo/chat.js", "text/javascript; charset=utf-8"),
    ] {
        let response = server.http().get(server.url(path)).send().await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.headers()["content-type"].to_str().unwrap()),
            (200, content_type),
            "{path}"
        );
    }
    // A room from the URL is rendered escaped, and one a channel could not hold is replaced.
    let page =
        server.http().get(server.url("/demo/chat?room=%3Cscript%3E")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("<script>") && page.contains("lobby"), "the fallback room");
    let doc = server.http().get(server.url("/docs/clients")).send().await.unwrap().text().await.unwrap();
    assert!(doc.contains("<table>") && doc.contains("href=\"protocol\""), "tables, and links between the docs");
    assert!(!doc.contains("<!-- test:"), "the test markers are not published");
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (path, to) in [("/demo", "/"), ("/docs", "/docs/clients")] {
        let response = no_redirects.get(server.url(path)).send().await.unwrap();
        assert_eq!((response.status().as_u16(), response.headers()["location"].to_str().unwrap()), (303, to), "{path}");
    }
    for path in ["/docs/nope", "/assets/nope.js", "/assets/../Cargo.toml"] {
        assert_eq!(status_of(&server, path).await, 404, "{path}");
    }
}

#[test]
fn demos_are_off_by_default_on_a_public_address() {
    use herald_server::config::{Overrides, Settings};
    let settings = |toml: &str| Settings::from_toml(toml, &Overrides::default()).unwrap();
    assert!(settings("").demos.enabled, "the development default: loopback, no [auth]");
    assert!(!settings("listen = \"0.0.0.0:8750\"").demos.enabled, "not on a public address by default");
    assert!(settings("listen = \"0.0.0.0:8750\"\n[demo]\nenabled = true").demos.enabled, "unless asked for");
}
