//! kube-client against the test API server: lists, gets, watches, patches, errors, restarts.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use podnet_test_apiserver::{ApiServer, PatchType, ServerConfig, fixtures};
use serde_json::json;
use std::time::Duration;

fn name_of<K: kube::Resource>(k: &K) -> String {
    k.meta().name.clone().unwrap_or_default()
}

async fn next_event<K>(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

#[tokio::test]
async fn list_pages_through_a_consistent_snapshot() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 5);
    let nodes: Api<Node> = Api::all(client(&srv));
    let first = nodes.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(
        first.items.iter().map(name_of).collect::<Vec<_>>(),
        ["node1", "node2"]
    );
    let rv = first.metadata.resource_version.clone().unwrap();
    assert_eq!(rv, "5");
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    // A change between pages does not show up: continued pages serve the first page's snapshot.
    srv.store().delete("nodes", "", "node4").unwrap();
    let mut names: Vec<String> = first.items.iter().map(name_of).collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = nodes
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some("5"));
        names.extend(page.items.iter().map(name_of));
        token = page.metadata.continue_.clone();
    }
    assert_eq!(names, ["node1", "node2", "node3", "node4", "node5"]);
    let now = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(now.items.len(), 4);
    assert_eq!(now.metadata.resource_version.as_deref(), Some("6"));
}

#[tokio::test]
async fn list_wire_format_leaves_type_off_items() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let (code, body) = raw(&client(&srv), "GET", "/api/v1/nodes", None, "").await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "NodeList");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["metadata"], json!({"resourceVersion": "1"}));
    let item = &body["items"][0];
    assert!(
        item.get("kind").is_none() && item.get("apiVersion").is_none(),
        "{item}"
    );
    assert_eq!(item["metadata"]["name"], "node1");
    let (_, one) = raw(&client(&srv), "GET", "/api/v1/nodes/node1", None, "").await;
    assert_eq!(
        (one["kind"].as_str(), one["apiVersion"].as_str()),
        (Some("Node"), Some("v1"))
    );
}

#[tokio::test]
async fn get_and_not_found() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let nodes: Api<Node> = Api::all(client(&srv));
    let n = nodes.get("node1").await.unwrap();
    assert_eq!(n.spec.unwrap().pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(n.metadata.resource_version.as_deref(), Some("1"));
    assert!(n.metadata.uid.is_some() && n.metadata.creation_timestamp.is_some());
    let (code, body) = raw(&client(&srv), "GET", "/api/v1/nodes/nope", None, "").await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "nodes \"nope\" not found", "reason": "NotFound", "details": {"name": "nope", "kind": "nodes"}, "code": 404})
    );
    let s = api_status(nodes.get("nope").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    let np: Api<NetworkPolicy> = Api::namespaced(client(&srv), "default");
    let s = api_status(np.get("x").await.unwrap_err());
    assert_eq!(
        s.message,
        "networkpolicies.networking.k8s.io \"x\" not found"
    );
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_exactly_the_later_changes() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 2);
    let nodes: Api<Node> = Api::all(client(&srv));
    let rv = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let store = srv.store();
    store
        .patch(
            "nodes",
            "",
            "node1",
            PatchType::Merge,
            &json!({"metadata": {"labels": {"x": "1"}}}),
        )
        .unwrap();
    store.create(node_json("node3", 3)).unwrap();
    store.delete("nodes", "", "node2").unwrap();
    let mut w = nodes
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let got = [
        next_event(&mut w).await,
        next_event(&mut w).await,
        next_event(&mut w).await,
    ];
    let summary: Vec<(String, String, String)> = got
        .iter()
        .map(|e| match e {
            WatchEvent::Added(n) => (
                "ADDED".into(),
                name_of(n),
                n.metadata.resource_version.clone().unwrap(),
            ),
            WatchEvent::Modified(n) => (
                "MODIFIED".into(),
                name_of(n),
                n.metadata.resource_version.clone().unwrap(),
            ),
            WatchEvent::Deleted(n) => (
                "DELETED".into(),
                name_of(n),
                n.metadata.resource_version.clone().unwrap(),
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        summary,
        [
            s("MODIFIED", "node1", "3"),
            s("ADDED", "node3", "4"),
            s("DELETED", "node2", "5")
        ]
    );
    // Nothing else is pending; the next change arrives live.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.next())
            .await
            .is_err()
    );
    store.delete("nodes", "", "node3").unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Deleted(n) if name_of(&n) == "node3"));
}

#[tokio::test]
async fn watch_from_zero_starts_with_synthetic_added_events() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 2);
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut w = nodes
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    for want in ["node1", "node2"] {
        assert!(matches!(next_event(&mut w).await, WatchEvent::Added(n) if name_of(&n) == want));
    }
}

#[tokio::test]
async fn bookmarks_arrive_at_the_configured_interval() {
    let srv =
        server(ServerConfig::default().with_bookmark_interval(Some(Duration::from_millis(200))));
    add_nodes(&srv, 1);
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut w = nodes
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    srv.store().create(node_json("node2", 2)).unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Added(_)));
    match next_event(&mut w).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, "2");
            assert_eq!(
                (b.types.kind.as_str(), b.types.api_version.as_str()),
                ("Node", "v1")
            );
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn send_initial_events_ends_with_the_annotated_bookmark() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 2);
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut w = nodes
        .watch(&WatchParams::default().initial_events(), "")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Added(_)));
    assert!(matches!(next_event(&mut w).await, WatchEvent::Added(_)));
    match next_event(&mut w).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, "2");
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_after_compaction_gets_410_expired() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    for i in 0..3 {
        srv.store()
            .patch(
                "nodes",
                "",
                "node1",
                PatchType::Merge,
                &json!({"metadata": {"labels": {"i": i.to_string()}}}),
            )
            .unwrap();
    }
    srv.store().compact();
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut w = nodes
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert_eq!(s.message, "too old resource version: 1 (4)");
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), w.next())
            .await
            .unwrap()
            .is_none()
    );
    // The current resourceVersion is still watchable; an old continue token is not.
    let mut w = nodes
        .watch(&WatchParams::default(), "4")
        .await
        .unwrap()
        .boxed();
    srv.store().delete("nodes", "", "node1").unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Deleted(_)));
}

#[tokio::test]
async fn break_watches_ends_open_streams() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut w = nodes
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.store().break_watches();
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(item) = w.next().await {
            assert!(item.is_err(), "no event after the break: {item:?}");
        }
    });
    end.await.expect("the stream ends after break_watches");
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream_cleanly() {
    let srv = server(ServerConfig::default());
    let nodes: Api<Node> = Api::all(client(&srv));
    let started = std::time::Instant::now();
    let mut w = nodes
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        tokio::time::timeout(Duration::from_secs(4), w.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn strategic_merge_patch_of_node_status() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let before = srv.store().get("nodes", "", "node1").unwrap();
    srv.store().clear_requests();
    let nodes: Api<Node> = Api::all(client(&srv));
    let patch = json!({
        "metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "10.0.0.1", "flannel.alpha.coreos.com/backend-type": "vxlan"}},
        "spec": {"podCIDR": "192.0.2.0/24"},
        "status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "PodnetIsUp", "message": "podnet is running on this node",
             "lastTransitionTime": "2025-01-01T00:00:00Z", "lastHeartbeatTime": "2025-01-01T00:00:00Z"},
            {"type": "PodnetReady", "status": "True"}]}});
    let node = nodes
        .patch_status("node1", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let got = serde_json::to_value(&node).unwrap();
    assert_eq!(
        got["spec"], before["spec"],
        "status subresource leaves spec alone"
    );
    assert_eq!(
        got["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"],
        "10.0.0.1"
    );
    assert_eq!(
        got["metadata"]["annotations"]["kubeadm.alpha.kubernetes.io/cri-socket"],
        before["metadata"]["annotations"]["kubeadm.alpha.kubernetes.io/cri-socket"]
    );
    let mut want = before["status"]["conditions"].clone();
    want[0] = json!({"type": "NetworkUnavailable", "status": "False", "reason": "PodnetIsUp", "message": "podnet is running on this node",
        "lastTransitionTime": "2025-01-01T00:00:00Z", "lastHeartbeatTime": "2025-01-01T00:00:00Z"});
    want.as_array_mut()
        .unwrap()
        .push(json!({"type": "PodnetReady", "status": "True"}));
    assert_eq!(got["status"]["conditions"], want);
    assert_eq!(got["status"]["addresses"], before["status"]["addresses"]);
    assert_eq!(got["metadata"]["resourceVersion"], "2");
    let log = srv.store().requests();
    let patches: Vec<_> = log.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].path, "/api/v1/nodes/node1/status");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(patches[0].status, 200);
    // Through the main resource, status does not change but spec does.
    let main = json!({"spec": {"unschedulable": true}, "status": {"conditions": []}});
    let node = nodes
        .patch("node1", &PatchParams::default(), &Patch::Strategic(main))
        .await
        .unwrap();
    let got2 = serde_json::to_value(&node).unwrap();
    assert_eq!(got2["spec"]["unschedulable"], true);
    assert_eq!(got2["status"], got["status"]);
}

#[tokio::test]
async fn merge_patch_of_metadata_and_no_op_writes() {
    let srv = server(ServerConfig::default());
    let c = client(&srv);
    let nss: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "team-a", "labels": {"a": "1", "b": "2"}}}),
    )
    .unwrap();
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    let v = serde_json::to_value(&created).unwrap();
    assert_eq!(
        v["metadata"]["labels"],
        json!({"a": "1", "b": "2", "kubernetes.io/metadata.name": "team-a"})
    );
    assert_eq!(v["spec"], json!({"finalizers": ["kubernetes"]}));
    assert_eq!(v["status"], json!({"phase": "Active"}));
    let patch = json!({"metadata": {"labels": {"a": null, "c": "3", "kubernetes.io/metadata.name": "other"}}});
    let patched = nss
        .patch("team-a", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let v = serde_json::to_value(&patched).unwrap();
    assert_eq!(
        v["metadata"]["labels"],
        json!({"b": "2", "c": "3", "kubernetes.io/metadata.name": "team-a"})
    );
    assert_eq!(v["metadata"]["resourceVersion"], "2");
    // Writing the same content again commits nothing.
    let again = nss
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"c": "3"}}})),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(srv.store().resource_version(), 2);
}

#[tokio::test]
async fn put_with_a_stale_resource_version_conflicts() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut n = nodes.get("node1").await.unwrap();
    srv.store()
        .patch(
            "nodes",
            "",
            "node1",
            PatchType::Merge,
            &json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .unwrap();
    n.metadata
        .labels
        .get_or_insert_default()
        .insert("mine".into(), "1".into());
    let s = api_status(
        nodes
            .replace("node1", &PostParams::default(), &n)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        "Operation cannot be fulfilled on nodes \"node1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let fresh = nodes.get("node1").await.unwrap();
    let mut fixed = fresh.clone();
    fixed
        .metadata
        .labels
        .get_or_insert_default()
        .insert("mine".into(), "1".into());
    let ok = nodes
        .replace("node1", &PostParams::default(), &fixed)
        .await
        .unwrap();
    assert_eq!(ok.metadata.resource_version.as_deref(), Some("3"));
    let mut again = fresh.clone();
    again.metadata.resource_version = None;
    let created = nodes.create(&PostParams::default(), &again).await;
    let s = api_status(created.unwrap_err());
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (409, "AlreadyExists", "nodes \"node1\" already exists")
    );
}

#[tokio::test]
async fn bad_requests_get_real_status_bodies() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let c = client(&srv);
    let (code, body) = raw(
        &c,
        "PATCH",
        "/api/v1/nodes/node1",
        Some("application/apply-patch+yaml"),
        "{}",
    )
    .await;
    assert_eq!(code, 415);
    assert_eq!(body["reason"], "UnsupportedMediaType");
    assert_eq!(
        body["message"],
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
    );
    let (code, body) = raw(
        &c,
        "PATCH",
        "/api/v1/nodes/node1",
        Some("application/merge-patch+json"),
        "{not json",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = raw(
        &c,
        "POST",
        "/api/v1/nodes",
        Some("application/json"),
        "[1,2",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = raw(
        &c,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nope%3Dx",
        None,
        "",
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("field label not supported: spec.nope"))
    );
    let (code, _) = raw(&c, "GET", "/api/v1/widgets", None, "").await;
    assert_eq!(code, 404);
    let (code, _) = raw(&c, "GET", "/api/v1/nodes/node1/proxy", None, "").await;
    assert_eq!(code, 404);
    let (code, body) = raw(
        &c,
        "POST",
        "/api/v1/nodes",
        Some("application/json"),
        r#"{"kind":"Node","apiVersion":"v1","metadata":{}}"#,
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        body["message"],
        "Node \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
    // The server is still fine.
    assert_eq!(raw(&c, "GET", "/api/v1/nodes/node1", None, "").await.0, 200);
}

#[tokio::test]
async fn pods_by_node_with_a_field_selector() {
    let srv = server(ServerConfig::default());
    let store = srv.store();
    store
        .create(fixtures::fixture(fixtures::NAMESPACE).unwrap())
        .unwrap();
    let t = fixtures::fixture(fixtures::POD).unwrap();
    for (name, node, ip) in [
        ("a", "node1", "10.244.1.5"),
        ("b", "node2", "10.244.2.5"),
        ("c", "node1", "10.244.1.6"),
    ] {
        store
            .create(fixtures::pod(
                &t,
                "kube-system",
                name,
                node,
                &[ip.parse().unwrap()],
            ))
            .unwrap();
    }
    let pods: Api<Pod> = Api::all(client(&srv));
    let lp = ListParams::default().fields("spec.nodeName=node1");
    let list = pods.list(&lp).await.unwrap();
    assert_eq!(
        list.items.iter().map(name_of).collect::<Vec<_>>(),
        ["a", "c"]
    );
    let ips = list.items[0]
        .status
        .as_ref()
        .unwrap()
        .pod_ips
        .clone()
        .unwrap();
    assert_eq!(ips[0].ip, "10.244.1.5");
    let ports = list.items[0].spec.as_ref().unwrap().containers[0]
        .ports
        .clone()
        .unwrap();
    assert_eq!(
        ports
            .iter()
            .filter_map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        ["dns", "dns-tcp", "metrics"]
    );
    let rv = list.metadata.resource_version.unwrap();
    let wp = WatchParams::default().fields("spec.nodeName=node1");
    let mut w = pods.watch(&wp, &rv).await.unwrap().boxed();
    store
        .create(fixtures::pod(&t, "kube-system", "d", "node2", &[]))
        .unwrap();
    store
        .create(fixtures::pod(&t, "kube-system", "e", "node1", &[]))
        .unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Added(p) if name_of(&p) == "e"));
    // A label change moves a pod in and out of a label-selected watch.
    let sel: Api<Pod> = Api::namespaced(client(&srv), "kube-system");
    let mut lw = sel
        .watch(
            &WatchParams::default().labels("tier=web"),
            &store.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    let label = |v: Option<&str>| json!({"metadata": {"labels": {"tier": v}}});
    store
        .patch(
            "pods",
            "kube-system",
            "a",
            PatchType::Merge,
            &label(Some("web")),
        )
        .unwrap();
    store
        .patch("pods", "kube-system", "a", PatchType::Merge, &label(None))
        .unwrap();
    assert!(matches!(next_event(&mut lw).await, WatchEvent::Added(p) if name_of(&p) == "a"));
    match next_event(&mut lw).await {
        WatchEvent::Deleted(p) => {
            assert_eq!(
                p.metadata.labels.unwrap().get("tier").map(String::as_str),
                Some("web"),
                "DELETED carries the previous content"
            );
            assert_eq!(
                p.metadata.resource_version,
                Some(store.resource_version().to_string())
            );
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
}

#[tokio::test]
async fn creating_through_the_api_applies_server_defaults() {
    let srv = server(ServerConfig::default());
    let c = client(&srv);
    let mut pod = fixtures::renamed(&fixtures::fixture(fixtures::POD).unwrap(), "dns");
    pod["metadata"]["namespace"] = "kube-system".into();
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let created = Api::<Pod>::namespaced(c.clone(), "kube-system")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let v = serde_json::to_value(&created).unwrap();
    assert_eq!(
        v["status"],
        json!({"phase": "Pending", "qosClass": "Burstable"})
    );
    assert_eq!(v["metadata"]["generation"], 1);
    let np: NetworkPolicy = serde_json::from_value(fixtures::renamed(
        &fixtures::fixture(fixtures::NETWORK_POLICY).unwrap(),
        "p",
    ))
    .unwrap();
    let nps: Api<NetworkPolicy> = Api::namespaced(c.clone(), "default");
    let created = nps.create(&PostParams::default(), &np).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let bumped = nps
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policyTypes": ["Ingress"]}})),
        )
        .await
        .unwrap();
    assert_eq!(bumped.metadata.generation, Some(2));
    let labelled = nps
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));
    let gone = nps.delete("p", &Default::default()).await.unwrap();
    let status = gone
        .right()
        .expect("networkpolicies answer DELETE with a Status");
    assert_eq!(status.details.unwrap().name, "p");
    let node = post_node(&c, "n9", 9).await;
    assert_eq!(node.metadata.resource_version.as_deref(), Some("6"));
}

#[tokio::test]
async fn restart_keeps_objects_and_the_resource_version() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 3);
    let nodes: Api<Node> = Api::all(client(&srv));
    let mut w = nodes
        .watch(&WatchParams::default(), "3")
        .await
        .unwrap()
        .boxed();
    let store = srv.stop();
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        while w.try_next().await.ok().flatten().is_some() {}
    });
    end.await.expect("stopping the server ends its watches");
    assert_eq!(store.resource_version(), 3);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = ApiServer::start_with_store(listener, ServerConfig::default(), store).unwrap();
    let nodes: Api<Node> = Api::all(client(&srv));
    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    assert_eq!(list.metadata.resource_version.as_deref(), Some("3"));
    let mut w = nodes
        .watch(&WatchParams::default(), "3")
        .await
        .unwrap()
        .boxed();
    srv.store().delete("nodes", "", "node2").unwrap();
    match next_event(&mut w).await {
        WatchEvent::Deleted(n) => assert_eq!(n.metadata.resource_version.as_deref(), Some("4")),
        other => panic!("expected DELETED, got {other:?}"),
    }
}
