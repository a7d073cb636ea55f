//! What can be tested of `deploy/` here: the systemd unit passes `systemd-analyze verify` and
//! its `ExecStart` flags are the binary's; the container image's environment starts the
//! binary as the image would, and its health check command says healthy, then unhealthy
//! (exit 1) once the server is gone. (Building the image would download base images.)

use std::process::{Command, Stdio};

use crate::helpers::KillOnDrop;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap()
}

#[test]
fn the_systemd_unit_verifies_and_its_flags_are_the_binary_s() {
    let unit = read("deploy/herald.service");
    let exec = unit.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("an ExecStart");
    let mut argv = exec.split_whitespace();
    assert_eq!(argv.next(), Some("/usr/local/bin/herald"));
    let args: Vec<&str> = argv.collect();
    assert_eq!(args[0], "serve");
    for hardening in
        ["DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=herald", "LimitNOFILE=", "NoNewPrivileges=yes"]
    {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // The same flags, with `check-config` for `serve`, the example for the config file and a
    // temporary data directory: the binary takes them.
    let dir = tempfile::tempdir().unwrap();
    let example = format!("{ROOT}/herald.example.toml");
    let data = dir.path().join("data").display().to_string();
    let flags: Vec<&str> = args[1..]
        .iter()
        .map(|arg| match *arg {
            "/etc/herald/herald.toml" => example.as_str(),
            "/var/lib/herald" => data.as_str(),
            other => other,
        })
        .collect();
    let output = Command::new(HERALD).arg("check-config").args(&flags).env_remove("HERALD_CONFIG").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    // The unit as installed, but with this build's binary (verify checks that it exists).
    let installed = dir.path().join("herald.service");
    std::fs::write(&installed, unit.replace("/usr/local/bin/herald", HERALD)).unwrap();
    let output = Command::new(analyze).arg("verify").arg(&installed).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {stderr}");
    let complaints: Vec<&str> = stderr.lines().filter(|line| line.contains("herald.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:?}");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

/// `ENV A=1 \ B=2` and `HEALTHCHECK … CMD ["a", "b"]` of the Dockerfile.
fn dockerfile_env_and_healthcheck(dockerfile: &str) -> (Vec<(String, String)>, Vec<String>) {
    let joined = dockerfile.replace("\\\n", " ");
    let env = joined
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|pair| pair.split_once('=').map(|(key, value)| (key.to_string(), value.to_string())))
        .collect();
    let check = joined.lines().find(|line| line.starts_with("HEALTHCHECK")).expect("a HEALTHCHECK");
    let command = check.split_once("CMD").expect("HEALTHCHECK … CMD").1.trim();
    let argv: Vec<String> = serde_json::from_str(command).expect("CMD in exec form");
    (env, argv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_s_environment_starts_herald_and_its_health_check_tells_up_from_down() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("cargo install --locked --path crates/herald-server"));
    let user = dockerfile.lines().rev().find_map(|line| line.strip_prefix("USER ")).expect("a USER");
    assert_ne!(user.trim(), "root");
    let (env, health) = dockerfile_env_and_healthcheck(&dockerfile);
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    assert_eq!(env["HERALD_LISTEN"], "0.0.0.0:8750");
    assert!(
        dockerfile.contains("EXPOSE 8750") && dockerfile.contains(&format!("VOLUME [\"{}\"]", env["HERALD_DATA_DIR"]))
    );

    // The image's environment, on a free loopback port instead of 0.0.0.0:8750.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(HERALD);
    command.arg("serve").env_remove("HERALD_CONFIG").env_remove("RUST_LOG");
    for (key, value) in &env {
        command.env(key, value);
    }
    command.env("HERALD_LISTEN", format!("127.0.0.1:{port}")).env("HERALD_DATA_DIR", dir.path());
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut banner).unwrap();
    assert!(banner.contains(&format!("127.0.0.1:{port}")), "{banner}");
    let mut server = KillOnDrop(child);

    let run_health = |argv: &[String]| {
        let args: Vec<String> =
            argv[1..].iter().map(|arg| arg.replace("127.0.0.1:8750", &format!("127.0.0.1:{port}"))).collect();
        assert_eq!(argv[0], "herald");
        Command::new(HERALD).args(&args).env_remove("HERALD_URL").output().unwrap()
    };
    let healthy = run_health(&health);
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("ok"));
    server.kill();
    let unhealthy = run_health(&health);
    assert_eq!(unhealthy.status.code(), Some(1), "unhealthy is exit 1 for container runtimes");
    assert!(String::from_utf8_lossy(&unhealthy.stderr).contains("cannot reach Herald"));
    // The image logs JSON.
    assert_eq!(env["HERALD_LOG_FORMAT"], "json");
}

/// `deploy/nginx.conf` in front of Herald, where Debian's nginx is installed: WebSocket
/// upgrades pass, an SSE stream's events arrive as they are published (no buffering), and
/// with `trusted_proxies` the per-address limit counts the clients behind nginx, not nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_documented_config_passes_websockets_streams_and_client_addresses() {
    let Some(nginx) =
        ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|path| std::path::Path::new(path).exists())
    else {
        eprintln!("skipped the nginx test: nginx is not installed (scripts/test installs Debian's)");
        return;
    };
    let server = crate::helpers::TestServer::with_config(
        "trusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 1\n",
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(prefix.path().join("logs")).unwrap();
    let config = read("deploy/nginx.conf")
        .replace("server 127.0.0.1:8750;", &format!("server {};", server.addr))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        // In the foreground, one process (killing it leaves no workers behind), its files in the
        // prefix.
        .replace("events {}", "events {}\ndaemon off;\nmaster_process off;\npid nginx.pid;\nerror_log logs/error.log;");
    let config_path = prefix.path().join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _nginx = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let front = format!("127.0.0.1:{port}");

    // A WebSocket through nginx, from 127.0.0.2 (the address nginx forwards).
    let mut socket = crate::helpers::WsClient::connect_from(&format!("ws://{front}/ws"), [127, 0, 0, 2]).await;
    socket.subscribe("through:nginx").await;
    // An SSE stream through nginx from 127.0.0.3: another client, so the limit of one passes.
    let sse_client = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 3])).build().unwrap();
    let mut stream =
        crate::helpers::LineStream::open(sse_client.get(format!("http://{front}/sse?channel=through:nginx"))).await;
    server.publish("through:nginx", serde_json::json!({"n": 1})).await;
    assert_eq!(socket.next_push().await["data"]["n"], 1);
    let event = stream.next_data_event().await.expect("the event arrives through nginx without buffering");
    assert!(event.data.unwrap().contains("\"n\":1"));
    // A second connection from 127.0.0.2 is the same client behind nginx: refused.
    let again = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let refused = again.get(format!("http://{front}/sse?channel=through:nginx")).send().await.unwrap();
    assert_eq!(refused.status(), 429, "the per-address limit sees the client behind nginx");
}
