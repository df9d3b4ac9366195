//! What the watch tests of every networked backend share: the service URL lookup, and the macro
//! that declares the conformance scenarios plus the two-process test over a backend's fixture.

#![allow(dead_code)]

/// The service URL in `var`, or `None` after printing why `test` is skipped.
pub fn service_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipping {test}: {var} is not set");
            None
        }
    }
}

/// Declares every `conformance::watch` scenario, and a watcher in this process seeing every write
/// of another OS process (this test binary run again as `peer_writer`), for one backend:
///
/// - `fixture`: `async fn(test: &str) -> Option<(Cleanup, Store)>`, a fresh store (`None`: skip);
/// - `url_var`: the environment variable with the service URL;
/// - `peer_var`: the variable that tells the child process where to write;
/// - `peer_store`: `async fn(url: &str, name: &str) -> Store` opening the same place;
/// - `peer_name`: the field of `Cleanup` naming that place (schema, key prefix).
macro_rules! watch_suite {
    (
        fixture: $fixture:ident,
        url_var: $url_var:expr,
        peer_var: $peer_var:expr,
        peer_store: $peer_store:ident,
        peer_name: $field:ident $(,)?
    ) => {
        watch_suite!(@scenarios $fixture:
            ordered_without_gaps,
            resume_from_revision,
            stalled_watcher,
            done_timeout,
            resync_after_compaction,
            overlapping_prefixes,
            prefix_changes_and_close,
            delete_with_prefix,
            ttl_expiry,
            session_expiry,
            aggregation,
        );

        /// The writer half of [`a_second_process_sees_every_write_in_order`]: does nothing
        /// unless the parent started this binary with the place to write to.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn peer_writer() {
            let Ok(name) = std::env::var($peer_var) else {
                return;
            };
            let url = std::env::var($url_var).expect("the parent passes the URL");
            let store = $peer_store(&url, &name).await;
            sluice_state::conformance::watch::peer_writes(&store).await;
        }

        /// One OS process writes, this one watches: every write arrives, in order, with no gaps.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_second_process_sees_every_write_in_order() {
            let Some((cleanup, store)) = $fixture("a_second_process_sees_every_write_in_order").await
            else {
                return;
            };
            let writer = sluice_state::conformance::watch::peer_writer_command(
                "peer_writer",
                ($peer_var, &cleanup.$field),
            );
            sluice_state::conformance::watch::second_process_sees_every_write(
                std::sync::Arc::new(store),
                move || {
                    let mut writer = writer;
                    writer.spawn().expect("spawn the writer process")
                },
            )
            .await;
        }
    };
    (@scenarios $fixture:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((_cleanup, store)) = $fixture(stringify!($name)).await else {
                    return;
                };
                sluice_state::conformance::watch::$name(std::sync::Arc::new(store)).await;
            }
        )*
    };
}
