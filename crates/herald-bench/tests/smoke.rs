//! The load generator against a real Herald on an ephemeral port, briefly, so neither rots:
//! 100 WebSocket subscribers for 5 seconds, and a moment of each HTTP transport.

use std::time::Duration;

use herald_bench::target::Endpoints;
use herald_bench::{RunConfig, Transport, run};
use herald_server::config::{Overrides, Settings};

async fn start_herald() -> (herald_server::server::RunningServer, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.path().to_path_buf()),
        ..Default::default()
    };
    let settings = Settings::from_toml("", &overrides).unwrap();
    (herald_server::server::start(settings).await.unwrap(), data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_on_every_transport_delivers_everything_once_in_order() {
    let (server, _data_dir) = start_herald().await;
    let base = format!("http://{}", server.local_addr());
    let endpoints = Endpoints { subscribe: base.clone(), publish: base };
    let runs = [
        (Transport::Ws, 100, 5.0),
        (Transport::Sse, 20, 1.0),
        (Transport::Ndjson, 20, 1.0),
        (Transport::Poll, 20, 1.0),
    ];
    for (transport, subscribers, seconds) in runs {
        let config = RunConfig {
            label: "smoke".into(),
            transport,
            endpoints: endpoints.clone(),
            subscribers,
            channels: 2,
            rate: 20,
            seconds,
            server_pids: vec![std::process::id()],
            drain: Duration::from_secs(5),
            ..RunConfig::default()
        };
        let report = run(config).await.unwrap();
        eprintln!("{}", report.markdown_row());
        assert_eq!(report.connect_errors, 0, "{transport:?}");
        assert!(report.published >= (20.0 * seconds) as u64 - 1, "{transport:?}: {report:?}");
        assert_eq!(report.delivered, report.expected, "{transport:?}: {report:?}");
        assert_eq!((report.lost, report.duplicated, report.out_of_order), (0, 0, 0), "{transport:?}");
        assert!(report.latency_ms_max > 0.0);
    }
    server.shutdown().await.unwrap();
}
