//! The admin console's guard and forms over plain HTTP: login with a key (and the cookie it
//! sets), what a wrong or publish-only key gets, CSRF and cross-origin refusals, dev mode,
//! the JSON feeds, publishing, webhook pause and resume, and secrets kept off the page. The
//! pages in a browser: e2e/admin.test.js.

use serde_json::{Value, json};

use crate::helpers::TestServer;

const KEY: &str = "admin-full-key-0123456789";
const READ_KEY: &str = "admin-read-key-0123456789";
const PUBLISH_KEY: &str = "admin-publish-key-0123456789";

async fn keyed_server() -> TestServer {
    TestServer::with_config(&format!(
        "allow_private_webhook_targets = true\n\
         [api]\nkeys = [\"{KEY}\"]\nread_only_keys = [\"{READ_KEY}\"]\npublish_only_keys = [\"{PUBLISH_KEY}\"]\n\
         [namespaces.room]\npresence = true\n"
    ))
    .await
}

/// `application/x-www-form-urlencoded` bodies, as a browser's forms send them.
trait FormBody {
    fn form_pairs<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_pairs<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(key, value)| (key.as_ref(), value.as_ref())))
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded").body(body)
    }
}

/// A client that follows no redirects, so the test sees each answer.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Logs in with `key`; the session cookie (`herald_admin=…`) and the Set-Cookie header.
async fn login(server: &TestServer, key: &str) -> (reqwest::StatusCode, Option<String>, String) {
    let response = client().post(server.url("/admin/login")).form_pairs(&[("api_key", key)]).send().await.unwrap();
    let status = response.status();
    let set_cookie = response.headers().get("set-cookie").map(|value| value.to_str().unwrap().to_string());
    let cookie = set_cookie.as_deref().and_then(|header| header.split(';').next()).map(str::to_string);
    (status, cookie, set_cookie.unwrap_or_default())
}

async fn page(server: &TestServer, path: &str, cookie: &str) -> (u16, String) {
    let response = client().get(server.url(path)).header("cookie", cookie).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Posts a form as the console's page does, with the session `cookie`.
async fn post_form(server: &TestServer, path: &str, cookie: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
    client().post(server.url(path)).header("cookie", cookie).form_pairs(pairs).send().await.unwrap()
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_reading_key_logs_in_and_the_session_cookie_is_locked_down() {
    let server = keyed_server().await;
    let (status, body) = page(&server, "/admin", "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("data-test=\"api-key\"") && !body.contains("data-test=\"channels\""),
        "the login, nothing else"
    );

    let (status, cookie, _) = login(&server, "not-a-key").await;
    assert_eq!((status.as_u16(), cookie), (401, None));
    let (status, cookie, _) = login(&server, PUBLISH_KEY).await;
    assert_eq!((status.as_u16(), cookie), (403, None), "a publish-only key cannot read the console");

    let (status, cookie, set_cookie) = login(&server, KEY).await;
    assert_eq!(status.as_u16(), 303);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{attribute} in {set_cookie}");
    }
    let cookie = cookie.unwrap();
    let (status, body) = page(&server, "/admin", &cookie).await;
    assert_eq!(status, 200);
    assert!(body.contains("data-test=\"channels\"") && body.contains("data-test=\"connections\""));
    for secret in [KEY, READ_KEY, PUBLISH_KEY] {
        assert!(!body.contains(secret), "no API key on the page");
    }
    assert!(body.contains("3 key(s), not shown"), "the settings are there, keys hidden");

    // A made-up or logged-out session is no session.
    assert!(page(&server, "/admin", "herald_admin=made-up").await.1.contains("data-test=\"api-key\""));
    let csrf = csrf_of(&body);
    let response = post_form(&server, "/admin/logout", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), 303);
    assert!(page(&server, "/admin", &cookie).await.1.contains("data-test=\"api-key\""), "logged out");
    assert_eq!(page(&server, "/admin/stats.json", &cookie).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_the_sessions_token_and_this_origin() {
    let server = keyed_server().await;
    let (_, cookie, _) = login(&server, KEY).await;
    let cookie = cookie.unwrap();
    let (_, body) = page(&server, "/admin/channel?name=room:a", &cookie).await;
    let csrf = csrf_of(&body);
    let publish = |csrf: String, origin: Option<&'static str>| {
        let mut request = client().post(server.url("/admin/publish")).header("cookie", &cookie);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request
            .form_pairs(&[("csrf", csrf), ("channel", "room:a".to_string()), ("data", "{\"n\":1}".to_string())])
            .send()
    };
    assert_eq!(publish("forged".into(), None).await.unwrap().status(), 403, "a wrong token");
    assert_eq!(publish(csrf.clone(), Some("http://evil.example")).await.unwrap().status(), 403, "another origin");
    let response = publish(csrf.clone(), None).await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin/channel?name=room%3Aa&published=1");
    let response = post_form(
        &server,
        "/admin/publish",
        &cookie,
        &[("csrf", csrf.as_str()), ("channel", "room:a"), ("data", "not json")],
    )
    .await;
    assert!(response.headers()["location"].to_str().unwrap().contains("error="), "bad data is said, not published");

    let (status, feed) = page(&server, "/admin/channel.json?name=room:a", &cookie).await;
    assert_eq!(status, 200);
    let feed: Value = serde_json::from_str(&feed).unwrap();
    assert_eq!(feed["publications"][0]["data"], "{\"n\":1}");
    assert_eq!(feed["top"], 1);

    // A read-only session sees no publish form and may not publish; webhooks and the settings
    // are for full keys, as in the server API.
    let (_, read_cookie, _) = login(&server, READ_KEY).await;
    let read_cookie = read_cookie.unwrap();
    let (_, overview) = page(&server, "/admin", &read_cookie).await;
    assert!(!overview.contains("data-test=\"settings\"") && overview.contains("need a full API key"));
    assert_eq!(page(&server, "/admin/webhooks/wh_any", &read_cookie).await.0, 403);
    let (_, body) = page(&server, "/admin/channel?name=room:a", &read_cookie).await;
    assert!(!body.contains("data-test=\"publish\""));
    let read_csrf = csrf_of(&body); // the logout form's
    let response = post_form(
        &server,
        "/admin/publish",
        &read_cookie,
        &[("csrf", read_csrf.as_str()), ("channel", "room:a"), ("data", "2")],
    )
    .await;
    assert!(response.headers()["location"].to_str().unwrap().contains("read-only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_channels_presence_and_connections_and_manages_webhooks() {
    let server = keyed_server().await;
    let (_, cookie, _) = login(&server, KEY).await;
    let cookie = cookie.unwrap();
    let mut ann = server.client().await;
    ann.subscribe("room:a").await;
    let mut sse = server.sse("channel=room:a").await;
    sse.next_event().await.unwrap();

    let (_, stats) = page(&server, "/admin/stats.json", &cookie).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["connections"]["websocket"], 1, "{stats}");
    assert_eq!(stats["connections"]["sse_ndjson"], 1, "{stats}");
    assert_eq!(stats["channels"], 1);
    let (_, body) = page(&server, "/admin", &cookie).await;
    assert!(body.contains("data-channel=\"room:a\""), "the channel is listed");
    let (status, body) = page(&server, "/admin/channel?name=room:a", &cookie).await;
    assert_eq!(status, 200);
    assert!(body.contains("anonymous"), "its presence: two anonymous clients");

    // A webhook endpoint, paused and resumed from its page.
    let created: Value = server
        .http()
        .post(server.url("/api/webhooks"))
        .bearer_auth(KEY)
        .json(&json!({"url": "http://127.0.0.1:9/hook", "channels": ["room:*"], "events": ["publication"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let (status, body) = page(&server, &format!("/admin/webhooks/{id}"), &cookie).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&body);
    let response =
        post_form(&server, &format!("/admin/webhooks/{id}/pause"), &cookie, &[("csrf", csrf.as_str())]).await;
    assert_eq!(response.status(), 303);
    let shown: Value = server
        .http()
        .get(server.url(&format!("/api/webhooks/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["paused"], true);
    let (_, body) = page(&server, &format!("/admin/webhooks/{id}"), &cookie).await;
    assert!(body.contains("data-test=\"webhook-resume\""));
    assert_eq!(page(&server, "/admin/webhooks/wh_nope", &cookie).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_mode_server_opens_the_console_and_says_so() {
    let server = TestServer::start().await;
    let (status, body) = page(&server, "/admin", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("open: dev mode") && body.contains("data-test=\"channels\""));
    // Other origins may not read it (the transports' CORS allows any origin in dev mode).
    let response =
        client().get(server.url("/admin/stats.json")).header("origin", "http://evil.example").send().await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none(), "{:?}", response.headers());
    assert_eq!(page(&server, "/admin/stats.json", "").await.0, 200);
    // Open, but its forms still need the page's token.
    let response = client()
        .post(server.url("/admin/publish"))
        .form_pairs(&[("csrf", "guess"), ("channel", "a"), ("data", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}
