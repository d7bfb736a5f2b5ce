//! The metrics endpoint over real HTTP, after a finished backup and volume operations.

use podvault_controller::crd::{Backup, BackupStatus, Phase};
use podvault_controller::metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test]
async fn finished_backups_and_volumes_are_counted_and_served() {
    let backup = Backup::new("nightly", Default::default());
    let status: BackupStatus = serde_json::from_value(serde_json::json!({
        "phase": "Completed", "bytesDone": 1000, "bytesNew": 250,
        "startTimestamp": "2026-11-24T10:00:00Z", "completionTimestamp": "2026-11-24T10:00:30Z"
    }))
    .expect("status");
    metrics::backup_finished(&backup, &status);
    metrics::volume_finished("worker-1", "backup", Phase::Completed, 1000);
    metrics::volume_finished("worker-1", "restore", Phase::Failed, 0);
    metrics::volumes_running("worker-1", 1);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(metrics::serve_on(listener));
    let answer = get(port, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for line in [
        "podvault_backups_total{phase=\"Completed\"} 1",
        "podvault_backup_bytes_total{kind=\"read\"} 1000",
        "podvault_backup_bytes_total{kind=\"new\"} 250",
        "podvault_backup_duration_seconds_sum{phase=\"Completed\"} 30",
        "podvault_backup_dedup_percent{backup=\"nightly\"} 75",
        "podvault_volume_operations_total{node=\"worker-1\",operation=\"backup\",phase=\"Completed\"} 1",
        "podvault_volume_operations_total{node=\"worker-1\",operation=\"restore\",phase=\"Failed\"} 1",
        "podvault_volume_bytes_total{node=\"worker-1\",operation=\"backup\"} 1000",
        "podvault_volumes_running{node=\"worker-1\"} 1",
    ] {
        assert!(answer.contains(line), "{line} missing from:\n{answer}");
    }
    assert!(get(port, "/healthz").await.ends_with("ok"));
    assert!(get(port, "/nope").await.starts_with("HTTP/1.1 404"));
}
