//! `/metrics` of real daemons after real work between them: a fetch, a followed
//! collection synced, a fetch that gives up.

use std::time::Duration;

use oermesh::daemon::Daemon;
use oermesh::exchange::FetchRequest;

use crate::fixture;
use crate::http::get;
use crate::network::{
    dial_addr, on_node, prepare_collection, start_node, wait_until, wait_until_compatible,
};

/// The value of the series `name` (labels included, as the text format writes them)
/// in the daemon's `/metrics`, or `None` when it is not there.
pub async fn series(daemon: &Daemon, name: &str) -> Option<u64> {
    let text = get(daemon.http_addr(), "/metrics").await.text();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_sync_figures_show_in_the_metrics_after_real_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_node(&dir.path().join("a"), vec![]).await;
    let b = start_node(&dir.path().join("b"), vec![dial_addr(&a)]).await;
    wait_until_compatible(&b, a.peer_id()).await;

    // A real fetch: a file of several blocks, from A to B over the block exchange.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let bytes = crate::gen::generated_bytes(3 * 1024 * 1024 + 5, 3);
    let size = bytes.len() as u64;
    let file = on_node(&a, move |node| {
        fixture::add_bytes(node, &scratch, "lesson.bin", &bytes)
    })
    .await;
    let mut request = FetchRequest::dag(file);
    request.wait = crate::network::DEADLINE;
    b.exchange().fetch(request).await.unwrap();
    let fetched = series(&b, "oermesh_bytes_fetched_total{protocol=\"oermesh\"}").await;
    assert!(
        fetched >= Some(size),
        "B fetched {fetched:?} of {size} bytes"
    );
    let served = series(&a, "oermesh_bytes_served_total{protocol=\"oermesh\"}").await;
    assert!(served >= Some(size), "A served {served:?} of {size} bytes");

    // A followed collection: its progress, resource by resource and byte by byte.
    let id = on_node(&a, |node| {
        let id = prepare_collection(node, "lessons", 3);
        node.collection_publish("lessons").unwrap();
        id
    })
    .await;
    let followed = id.to_string();
    on_node(&b, move |node| {
        node.trust_add(&followed).unwrap();
        node.follow(&followed, false).unwrap();
    })
    .await;
    let label = format!("{{collection=\"{id}\"}}");
    wait_until("B's metrics show the collection complete", || async {
        series(&b, &format!("oermesh_sync_resources_complete{label}")).await == Some(3)
    })
    .await;
    assert_eq!(
        series(&b, &format!("oermesh_sync_resources_total{label}")).await,
        Some(3)
    );
    let held = series(&b, &format!("oermesh_sync_bytes_held{label}")).await;
    assert!(held > Some(0), "{held:?}");
    assert_eq!(
        series(&b, &format!("oermesh_sync_bytes_total{label}")).await,
        held
    );
    // An unfollowed collection has no series any more.
    let unfollowed = id.to_string();
    on_node(&b, move |node| node.unfollow(&unfollowed).unwrap()).await;
    assert_eq!(
        series(&b, &format!("oermesh_sync_resources_total{label}")).await,
        None
    );

    // A fetch of a block nobody has gives up, and is counted.
    let errors_before = series(&b, "oermesh_fetch_errors_total{protocol=\"oermesh\"}")
        .await
        .unwrap_or(0);
    let nobody_has = oermesh::block::cid_v1(oermesh::block::codec::RAW, b"held by no node");
    let mut request = FetchRequest::block(nobody_has);
    request.wait = Duration::from_millis(500);
    assert!(b.exchange().fetch(request).await.is_err());
    let errors = series(&b, "oermesh_fetch_errors_total{protocol=\"oermesh\"}").await;
    assert!(errors > Some(errors_before), "{errors:?}");

    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}
