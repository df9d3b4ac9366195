//! SIGKILL of `sluice serve` on its embedded store (redb) while control-plane clients start and
//! terminate flows concurrently: after a restart on the same data directory, every transition the
//! server had acknowledged (a 200 to a start, a 200 to a terminate) is there.

#[path = "support/dps/mod.rs"]
mod dps;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dps::client::{flow_message, unique, Dps, PULL};
use dps::control_plane::ControlPlane;
use dps::server::{files_dir, path_str, signaling_config, Server};
use serde_json::json;

const TOKEN: &str = "crash-token";
/// Concurrent clients.
const CLIENTS: usize = 16;
/// Acknowledged transitions before the kill.
const ACKS_BEFORE_KILL: usize = 600;

/// The last state each flow was acknowledged in.
type Acked = Arc<Mutex<HashMap<String, &'static str>>>;

/// One client: start a provider-pull flow, terminate it, again, until the server goes away.
async fn client(dps: Dps, acked: Acked, count: Arc<Mutex<usize>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(started) = dps
            .try_start(&flow_message(&unique("proc"), "lines", PULL))
            .await
        else {
            return;
        };
        if started.status != 200 {
            return;
        }
        let id = started.id();
        acked.lock().expect("lock").insert(id.clone(), "STARTED");
        *count.lock().expect("lock") += 1;
        let Ok(terminated) = dps.try_act(&id, "terminate", json!({})).await else {
            return;
        };
        if terminated.status != 200 {
            return;
        }
        acked.lock().expect("lock").insert(id, "TERMINATED");
        *count.lock().expect("lock") += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_transitions_survive_a_sigkill_of_the_server() {
    let cp = ControlPlane::start().await;
    let (_files, files) = files_dir();
    let input = files.join("in.txt");
    std::fs::write(&input, "a line\n").expect("write the dataset");
    let config = signaling_config(
        &cp.endpoint(),
        TOKEN,
        json!({"lines": {"plugin": "file", "settings": {"path": path_str(&input)}}}),
        json!({}),
    );
    let server = Server::start(&config);
    let dps = Dps::new(&server.api(), Some(TOKEN));

    let acked: Acked = Arc::default();
    let count = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                dps.clone(),
                Arc::clone(&acked),
                Arc::clone(&count),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while *count.lock().expect("lock") < ACKS_BEFORE_KILL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} transitions acknowledged in 120 s\n{}",
            count.lock().expect("lock"),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGKILL mid-traffic, then a new process on the same data directory.
    let server = server.kill_and_restart();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }

    let dps = Dps::new(&server.api(), Some(TOKEN));
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= ACKS_BEFORE_KILL / 2);
    let terminated = acked.values().filter(|s| **s == "TERMINATED").count();
    println!(
        "{} flows acknowledged before the kill: {terminated} terminated, {} started",
        acked.len(),
        acked.len() - terminated
    );
    assert!(terminated > 0 && terminated < acked.len());
    for (id, state) in &acked {
        let now = dps.state(id).await;
        match *state {
            "TERMINATED" => assert_eq!(now, "TERMINATED", "flow {id}"),
            // A terminate in flight at the kill may or may not have been applied.
            _ => assert!(
                now == "STARTED" || now == "TERMINATED",
                "flow {id} was acknowledged STARTED and is {now}"
            ),
        }
    }
    server.assert_no_server_errors().await;
}
