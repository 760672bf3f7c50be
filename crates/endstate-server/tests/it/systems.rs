//! Systems: many-to-many aggregation and status rolled up worst first, naming the leaf.

use crate::{CACHE_COMPONENT, SYSTEMS, TestServer, submit_request};

#[tokio::test]
async fn status_rolls_up_through_a_shared_subsystem_and_names_the_leaf() {
    let server = TestServer::start().await;
    let client = server.client();
    client
        .submit(&submit_request(
            &[("s.yaml", SYSTEMS), ("c.yaml", CACHE_COMPONENT)],
            "m",
        ))
        .await
        .unwrap();

    let tree = client.systems(true).await.unwrap();
    let top: Vec<&str> = tree.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        top,
        ["platform", "shop"],
        "only systems that are nobody's subsystem are roots"
    );
    // cache belongs to both storefront (under shop) and platform: both roll its status up.
    for root in &tree {
        assert_eq!(root.status.status, "pending", "{root:?}");
        let reason = root.status.reason.as_deref().unwrap();
        assert!(
            reason.starts_with("cache/memo: 0 of 2 instances can be placed"),
            "{reason}"
        );
    }
    let shop = tree.iter().find(|s| s.name == "shop").unwrap();
    assert_eq!(shop.status.path, ["shop", "storefront", "cache", "cache/memo"]);
    let payments = shop.children.iter().find(|s| s.name == "payments").unwrap();
    assert_eq!(payments.status.status, "healthy");
    assert_eq!(payments.status.reason, None);

    // Every layer can be drilled into.
    let cache = client.system("cache").await.unwrap();
    assert_eq!(cache.components, ["cache/memo"]);
    assert_eq!(cache.component_status[0].desired_instances, 2);
    assert_eq!(cache.component_status[0].ready_instances, 0);
    let flat = client.systems(false).await.unwrap();
    assert_eq!(flat.len(), 5);
    assert!(flat.iter().all(|s| s.children.is_empty()));

    let missing = client.system("nope").await.unwrap_err();
    assert_eq!(missing.problem().map(|p| p.status), Some(404));
    server.stop().await;
}

#[tokio::test]
async fn lists_page_by_name_without_gaps_or_repeats() {
    let server = TestServer::start().await;
    server
        .client()
        .submit(&submit_request(
            &[("s.yaml", SYSTEMS), ("c.yaml", CACHE_COMPONENT)],
            "m",
        ))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut n_pages = 0;
    loop {
        let mut request = http
            .get(format!("{}/v1/systems", server.url))
            .bearer_auth(&server.admin)
            .query(&[("limit", "2")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: endstate_api::Page<endstate_api::SystemView> = request.send().await.unwrap().json().await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().map(|s| s.name));
        n_pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(names, ["cache", "payments", "platform", "shop", "storefront"]);
    assert_eq!(n_pages, 3);
    // The client reads every page for the CLI.
    assert_eq!(server.client().systems(false).await.unwrap().len(), 5);
    let components: endstate_api::Page<endstate_api::ComponentView> = server.get_json("/v1/components?limit=1").await;
    assert_eq!(
        (components.items[0].key.as_str(), components.next),
        ("cache/memo", None)
    );
    server.stop().await;
}
